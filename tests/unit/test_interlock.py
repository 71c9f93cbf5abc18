"""Local Safety First: each condition injected at the far side (a sensor value, an upstream
heartbeat, an EV session) through the exchange, and the reaction checked within 2 cycles."""
import math
from dataclasses import replace

import pytest

from helpers import MS, S, ev, make_site
from v2g_rt import Control, Controller
from v2g_rt.controller import BINDINGS
from v2g_rt import _core
from v2g_rt.site import Frequency, Thermal, node_source, port_source

BIG = dict(grid_import_w=1e6, grid_export_w=1e6, transformer_w=1e6, group_w=1e6, meter=False)


def site_with(nodes_edit=None, ports=4, control=None, **kw):
    site = make_site(ports, ports_per_evse=2, control=control or Control(port_ramp_w_per_s=math.inf), **{**BIG, **kw})
    if nodes_edit:
        site = replace(site, nodes=tuple(nodes_edit(n) for n in site.nodes))
    return site


def started(site, t=S):
    c = Controller(site, clock="virtual")
    c.step(t)
    for pid in c.port_ids:
        ev(departure_in_s=10 * 3600, energy_request_wh=10_000).publish(c, pid, t)
    return c


def two_cycles(c):
    c.run_steps(2)
    return c.snapshot()


# ---------------------------------------------------------------- contactor

def evse_with(**fields):
    return lambda n: replace(n, **fields) if n.kind == "evse" else n


def feed_contactors(c, t, closed=True, skip=()):
    for pid in c.port_ids:
        if pid not in skip:
            assert c.measure(port_source(pid, "contactor"), 1.0 if closed else 0.0, t)


def test_contactor_mismatch_latches_within_two_cycles_after_settle():
    c = started(site_with(evse_with(contactor_feedback=True)))
    feed_contactors(c, S)
    c.run_steps(2)
    assert c.snapshot().ports["contactor_closed"].all()
    for k in range(1, 4):                              # feedback follows for 300 ms: no fault
        c.step(S + k * 100 * MS)
        feed_contactors(c, S + k * 100 * MS)
    snap = two_cycles(c)
    assert snap.ports["faults"].sum() == 0 and (snap.ports["setpoint_w"] > 0).all()
    t = c.now_ns()
    feed_contactors(c, t, skip=("evse001.1",))
    assert c.measure("port/evse001.1/contactor", 0.0, t)   # EV side: feedback says open
    snap = two_cycles(c)
    port = snap.port("evse001.1")
    assert port["faults"] & _core.FAULTS["contactor"]
    assert port["setpoint_w"] == 0.0 and not port["contactor_closed"]
    assert BINDINGS[port["binding"]] == "fault"
    # latched: the feedback agreeing again does not clear it
    c.step(t + 500 * MS)
    feed_contactors(c, t + 500 * MS)
    plug = ev(departure_in_s=10 * 3600, energy_request_wh=10_000)
    plug.publish(c, "evse001.1", t + 500 * MS)
    assert two_cycles(c).port("evse001.1")["faults"] & _core.FAULTS["contactor"]
    # only an explicit reset clears it
    assert c.submit({"kind": "reset_fault", "id": "r1", "port": "evse001.1", "expires_in_s": 5})
    assert two_cycles(c).port("evse001.1")["faults"] == 0


def test_contactor_feedback_waits_for_the_settle_time():
    site = site_with(evse_with(contactor_feedback=True), control=Control(contactor_settle_s=0.5,
                                                                       port_ramp_w_per_s=math.inf))
    c = started(site)
    feed_contactors(c, S, closed=False)                # relay still moving after the close command
    c.run_steps(2)
    for k in range(1, 5):
        c.step(S + k * 100 * MS)
        feed_contactors(c, S + k * 100 * MS, closed=False)
    assert c.snapshot().ports["faults"].sum() == 0     # 400 ms < settle 500 ms
    c.step(S + 501 * MS)
    assert (c.snapshot().ports["faults"] & _core.FAULTS["contactor"]).all()


def test_latched_faults_survive_a_restart():
    site = site_with(evse_with(contactor_feedback=True))
    c = started(site)
    c.run_steps(300)
    feed_contactors(c, c.now_ns(), closed=False)
    c.run_steps(2)
    saved = c.latched_faults()
    assert set(saved) == set(c.port_ids)
    again = started(site)
    assert again.restore_faults(saved) == list(saved)
    again.run_steps(1)
    snap = again.snapshot()
    assert (snap.ports["faults"] & _core.FAULTS["contactor"]).all() and (snap.ports["setpoint_w"] == 0).all()


# ---------------------------------------------------------------- PLC

def test_plc_packet_loss_above_limit_stops_the_port_for_the_session():
    c = started(site_with(evse_with(iso15118=True)))
    for pid in c.port_ids:
        c.measure(port_source(pid, "plc_loss"), 0.01, S)
    assert (two_cycles(c).ports["setpoint_w"] > 0).all()
    t = c.now_ns()
    c.measure("port/evse002.1/plc_loss", 0.06, t)       # above 5 %
    snap = two_cycles(c)
    port = snap.port("evse002.1")
    assert port["faults"] & _core.FAULTS["iso_timeout"] and port["setpoint_w"] == 0
    c.measure("port/evse002.1/plc_loss", 0.0, t + 1)    # recovered link: still stopped this session
    assert two_cycles(c).port("evse002.1")["setpoint_w"] == 0
    c.measure("port/evse002.1/connected", 0.0, c.now_ns())
    c.run_steps(1)
    t = c.now_ns()
    ev(departure_in_s=3600).publish(c, "evse002.1", t)  # a new session starts clean
    c.measure("port/evse002.1/plc_loss", 0.0, t)
    assert two_cycles(c).port("evse002.1")["faults"] == 0


# ---------------------------------------------------------------- EVSE heat sink

@pytest.mark.parametrize("temp,expected_factor", [(60.0, 1.0), (70.0, 1.0), (75.0, 0.75), (85.0, 0.25), (90.0, 0.0),
                                                  (120.0, 0.0)])
def test_heatsink_derate_is_linear_between_start_and_trip(temp, expected_factor):
    c = started(site_with(evse_with(heatsink_c=(70.0, 90.0))))
    for e in ("evse001", "evse002"):
        c.measure(node_source(e, "heatsink_c"), 50.0, S)
    c.measure("node/evse001/heatsink_c", temp, S)
    snap = two_cycles(c)
    evse = snap.node("evse001")
    assert evse["derate"] == pytest.approx(expected_factor)
    assert snap.port("evse001.1")["setpoint_w"] + snap.port("evse001.2")["setpoint_w"] == \
        pytest.approx(22_000 * expected_factor)
    assert snap.node("evse002")["derate"] == 1.0
    tripped = bool(snap.port("evse001.1")["faults"] & _core.FAULTS["overtemp"])
    assert tripped == (temp >= 90.0)
    if expected_factor < 1:
        assert BINDINGS[evse["binding"]] == "thermal"


def test_stale_heatsink_temperature_stops_that_evse():
    c = started(site_with(evse_with(heatsink_c=(70.0, 90.0), heatsink_max_age_s=2.0)))
    c.measure("node/evse001/heatsink_c", 40.0, S)
    c.measure("node/evse002/heatsink_c", 40.0, S)
    c.step(S + 1500 * MS)
    c.measure("node/evse002/heatsink_c", 40.0, S + 1500 * MS)
    c.step(S + 3 * S)                                  # evse001's reading is 3 s old
    snap = c.snapshot()
    assert snap.node("evse001")["derate"] == 0.0
    assert snap.port("evse001.1")["faults"] & _core.FAULTS["temp_stale"]


# ---------------------------------------------------------------- transformer

def thermal_site(**thermal):
    t = Thermal(rated_w=40_000.0, ambient_max_age_s=120.0, **thermal)
    # sessions stay valid across the minute-long virtual steps of these tests
    ctl = Control(port_ramp_w_per_s=math.inf, session_max_age_s=86400.0)
    return site_with(lambda n: replace(n, thermal=t, import_limit_w=40_000.0, export_limit_w=40_000.0)
                     if n.kind == "transformer" else n, control=ctl)


def test_transformer_hot_spot_derates_the_site():
    c = started(thermal_site(tau_oil_s=600.0, tau_winding_s=60.0))
    c.measure("node/tx1/ambient_c", 20.0, S)
    c.run_steps(2)
    cool = c.snapshot()
    assert cool.node("tx1")["derate"] == 1.0 and cool.site["fleet_w"] == pytest.approx(40_000.0)
    assert 20.0 < cool.node("tx1")["temperature_c"] < 98.0
    # a heat wave: 45 C ambient, the hot spot climbs past the derate start
    t = c.now_ns()
    for k in range(1, 121):                            # 2 h in 1 min steps
        c.measure("node/tx1/ambient_c", 45.0, c.now_ns())
        c.step(t + k * 60 * S)
    hot = two_cycles(c)
    tx = hot.node("tx1")
    assert tx["temperature_c"] > 98.0 and tx["derate"] < 1.0
    assert hot.site["fleet_w"] < 40_000.0 * tx["derate"] + 1e-6
    assert BINDINGS[tx["binding"]] == "thermal"


def test_stale_transformer_ambient_assumes_the_worst():
    c = started(thermal_site())
    c.run_steps(2)
    assert c.snapshot().node("tx1")["faults"] & _core.FAULTS["temp_stale"]


# ---------------------------------------------------------------- phase currents

def test_per_phase_current_limit_binds():
    # group on 32 A per phase; two single-phase EVSEs on L1, one port each at 7.4 kW (32 A)
    def edit(n):
        if n.kind == "group":
            return replace(n, phase_limit_a=32.0)
        if n.kind == "evse":
            return replace(n, phases="L1")
        return n
    site = site_with(edit, ports=2)
    site = replace(site, ports=tuple(replace(p, rating_charge_w=7360.0) for p in site.ports))
    c = started(site)
    snap = two_cycles(c)
    amps = snap.ports["setpoint_w"].sum() / 230.0
    assert amps == pytest.approx(32.0)
    assert BINDINGS[snap.node("group1")["binding"]] == "phase_current"


# ---------------------------------------------------------------- frequency

def droop_site(**f):
    fr = Frequency(mode="droop", rated_w=100_000.0, response_time_s=0.0, **f)
    return replace(site_with(ports=20), frequency=fr)


@pytest.mark.parametrize("hz", [50.0, 49.98, 49.9, 49.7, 50.02, 50.1, 50.4])
def test_droop_matches_its_definition(hz):
    c = Controller(droop_site(), clock="virtual")
    c.step(S)
    for pid in c.port_ids:
        ev(departure_in_s=10 * 3600, energy_request_wh=10_000).publish(c, pid, S)
    assert c.submit({"kind": "setpoint", "id": 1, "value_w": 50_000.0, "expires_in_s": 60})
    c.measure("grid/frequency_hz", hz, S)
    snap = two_cycles(c)
    f0, db, k, p = 50.0, 0.036, 0.05, 100_000.0
    if hz < f0 - db:
        expected = -p * ((f0 - db) - hz) / (f0 * k)
    elif hz > f0 + db:
        expected = p * (hz - (f0 + db)) / (f0 * k)
    else:
        expected = 0.0
    assert snap.site["frequency_response_w"] == pytest.approx(expected, abs=1e-6)
    assert snap.site["fleet_w"] == pytest.approx(min(max(50_000.0 + expected, snap.site["fleet_min_w"]),
                                                     snap.site["fleet_max_w"]), abs=1e-6)


def test_droop_lag_reaches_90_percent_after_the_response_time():
    c = Controller(replace(droop_site(), frequency=Frequency(mode="droop", rated_w=100_000.0, response_time_s=2.0)),
                   clock="virtual")
    c.step(S)
    for _ in range(20):                                # 2 s at 1 ms, a reading every 100 ms
        c.measure("grid/frequency_hz", 49.8, c.now_ns())
        c.run_steps(100)
    raw = -100_000.0 * ((50 - 0.036) - 49.8) / (50 * 0.05)
    assert c.snapshot().site["frequency_response_w"] == pytest.approx(0.9 * raw, rel=2e-3)


def test_curve_interpolates_unevenly_spaced_points():
    curve = ((49.5, -40_000.0), (49.9, 0.0), (50.0, 0.0), (50.5, 30_000.0))
    site = replace(site_with(ports=20), frequency=Frequency(mode="curve", response_time_s=0.0, curve=curve))
    c = Controller(site, clock="virtual")
    c.step(S)
    for hz, expected in ((49.0, -40_000.0), (49.7, -20_000.0), (49.95, 0.0), (50.25, 15_000.0), (51.0, 30_000.0)):
        c.measure("grid/frequency_hz", hz, c.now_ns())
        c.run_steps(1)
        assert c.snapshot().site["frequency_response_w"] == pytest.approx(expected), hz


# ---------------------------------------------------------------- site ramp

def test_site_ramp_limits_the_fleet_increase():
    ctl = Control(port_ramp_w_per_s=math.inf, site_ramp_w_per_s=10_000.0)
    c = Controller(site_with(ports=8, control=ctl, period_s=0.1), clock="virtual")
    c.step(S)
    for pid in c.port_ids:
        ev().publish(c, pid, S)
    c.run_steps(10)                                    # 1 s at 10 kW/s
    assert c.snapshot().site["fleet_w"] == pytest.approx(10_000.0)
    assert "site_ramp" in {BINDINGS[b] for b in c.snapshot().ports["binding"]}


# ---------------------------------------------------------------- port envelope: discharge limits
# Each checks the envelope a port publishes (min_w, max_w, binding), not only the output: the fleet
# clamp and the node limits hide a wrong port envelope from the setpoints.

RATING_W = 11_000.0


def envelope_site(control=None):
    return site_with(ports=2, control=control or Control(port_ramp_w_per_s=math.inf))


def discharging(c):
    assert c.submit({"kind": "setpoint", "id": "out", "value_w": -1e6, "expires_in_s": 3600})
    return two_cycles(c)


@pytest.mark.parametrize("ev_w,binding", [(22_000.0, "rating"), (7_000.0, "ev_limit")])
def test_the_smaller_of_rating_and_ev_limit_binds_in_both_directions(ev_w, binding):
    c = Controller(envelope_site(), clock="virtual")
    c.step(S)
    for pid in c.port_ids:
        ev(departure_in_s=10 * 3600, energy_request_wh=10_000, max_charge_w=ev_w, max_discharge_w=ev_w).publish(c, pid, S)
    snap = two_cycles(c)
    expected = min(ev_w, RATING_W)
    assert (snap.ports["max_w"] == expected).all() and (snap.ports["setpoint_w"] == expected).all()
    assert {BINDINGS[b] for b in snap.ports["binding"]} == {binding}
    snap = discharging(c)
    assert (snap.ports["min_w"] == -expected).all() and (snap.ports["setpoint_w"] == -expected).all()
    assert {BINDINGS[b] for b in snap.ports["binding"]} == {binding}


def test_a_v2g_vehicle_without_a_soc_is_never_discharged():
    c = Controller(envelope_site(), clock="virtual")
    c.step(S)
    known, unknown = c.port_ids
    session = ev(departure_in_s=10 * 3600, energy_request_wh=10_000)
    session.publish(c, known, S)
    for name in ("connected", "capacity_wh", "energy_request_wh", "departure_in_s", "max_charge_w",
                 "max_discharge_w", "min_soc", "v2g"):                # everything but the SoC
        assert c.measure(port_source(unknown, name), float(getattr(session, name)), S)
    snap = discharging(c)
    assert snap.port(known)["setpoint_w"] == -RATING_W
    row = snap.port(unknown)
    assert row["min_w"] == 0.0 and row["setpoint_w"] == 0.0 and BINDINGS[row["binding"]] == "soc"


def test_discharge_is_cut_to_the_energy_above_min_soc_while_an_output_holds():
    c = Controller(envelope_site(), clock="virtual")
    c.step(S)
    near, below = c.port_ids
    margin = 1e-4                                       # of a 60 kWh battery: 4.3 kW for output_hold_s (5 s)
    ev(soc=0.2 + margin, min_soc=0.2, energy_request_wh=0, departure_in_s=10 * 3600).publish(c, near, S)
    ev(soc=0.1, min_soc=0.2, energy_request_wh=0, departure_in_s=10 * 3600).publish(c, below, S)
    snap = discharging(c)
    soc = snap.port(near)["soc"]
    allowed = (soc - 0.2) * 60_000 * 3600 / c.site.control.output_hold_s
    assert 1_000.0 < allowed < RATING_W
    assert snap.port(near)["min_w"] == pytest.approx(-allowed, rel=1e-9)
    assert snap.port(near)["setpoint_w"] == pytest.approx(-allowed, rel=1e-9)
    assert BINDINGS[snap.port(near)["binding"]] == "soc"
    assert snap.port(below)["min_w"] == 0.0 and snap.port(below)["setpoint_w"] == 0.0


@pytest.mark.parametrize("laxity_s,fraction", [(1_700.0, 0.0), (1_800.0, 0.0), (2_250.0, 0.5), (3_000.0, None)])
def test_discharge_tapers_to_zero_as_the_departure_reserve_nears(laxity_s, fraction):
    # Default reserve 1800 s, taper 900 s. With nothing left to charge, laxity = time to departure.
    c = Controller(envelope_site(), clock="virtual")
    c.step(S)
    for pid in c.port_ids:
        ev(energy_request_wh=0, departure_in_s=laxity_s).publish(c, pid, S)
    snap = discharging(c)
    row = snap.port(c.port_ids[0])
    if fraction is None:                                # beyond the taper: the full rating
        assert row["min_w"] == -RATING_W and BINDINGS[row["binding"]] == "rating"
        return
    lax = row["laxity_s"]
    assert lax == pytest.approx(laxity_s - 2 * 0.001, abs=1e-6)     # two cycles after the session was stamped
    expected = -RATING_W * max(0.0, (lax - 1800.0) / 900.0)
    assert row["min_w"] == pytest.approx(expected, abs=1e-6) and row["setpoint_w"] == pytest.approx(expected, abs=1e-6)
    if fraction == 0.0:                                 # at or inside the reserve: exactly nothing
        assert row["min_w"] == 0.0 and row["setpoint_w"] == 0.0
    else:
        assert row["min_w"] == pytest.approx(-RATING_W * fraction, rel=1e-5)
        assert BINDINGS[row["binding"]] == "soc"


def test_a_vacant_port_publishes_no_vehicle():
    c = Controller(envelope_site(), clock="virtual")
    c.step(S)
    pid = c.port_ids[0]
    ev(departure_in_s=3600).publish(c, pid, S)
    assert two_cycles(c).port(pid)["v2g"]
    assert c.measure(port_source(pid, "connected"), 0.0, c.now_ns())
    row = two_cycles(c).port(pid)
    assert not row["connected"] and not row["v2g"] and not row["contactor_closed"]
    assert math.isnan(row["soc"]) and row["laxity_s"] == 1e12
    assert row["min_w"] == row["max_w"] == row["setpoint_w"] == 0.0 and BINDINGS[row["binding"]] == "not_connected"


def test_session_data_that_stops_arriving_stops_the_port():
    c = Controller(envelope_site(control=Control(port_ramp_w_per_s=math.inf, session_max_age_s=1.0)),
                   clock="virtual")
    c.step(S)
    for pid in c.port_ids:
        ev(departure_in_s=3600).publish(c, pid, S)
    c.run_steps(1000)                                   # 1 s: the session is exactly max age old
    assert (c.snapshot().ports["setpoint_w"] == RATING_W).all()
    fresh = c.port_ids[1]
    ev(departure_in_s=3600).publish(c, fresh, c.now_ns())
    snap = two_cycles(c)
    row = snap.port(c.port_ids[0])
    assert row["faults"] & _core.FAULTS["session_stale"] and row["setpoint_w"] == 0.0 and not row["connected"]
    assert snap.port(fresh)["faults"] == 0 and snap.port(fresh)["setpoint_w"] == RATING_W


# ---------------------------------------------------------------- transformer model against its definition

def iec_rises(t: Thermal, load_w: float) -> tuple[float, float]:
    """Ultimate top-oil and hot-spot rises at a load (IEC 60076-7 first-order model), computed here."""
    k = abs(load_w) / t.rated_w
    return (t.top_oil_rise_k * ((1 + t.loss_ratio * k * k) / (1 + t.loss_ratio)) ** t.oil_exponent,
            t.hot_spot_gradient_k * k ** t.winding_exponent)


@pytest.mark.parametrize("measured_top_oil", [False, True])
def test_transformer_hot_spot_follows_the_iec_first_order_model(measured_top_oil):
    t = Thermal(rated_w=40_000.0, tau_oil_s=600.0, tau_winding_s=60.0, ambient_max_age_s=600.0,
                top_oil_max_age_s=600.0 if measured_top_oil else None)
    site = site_with(lambda n: replace(n, thermal=t, meter_max_age_s=600.0) if n.kind == "transformer" else n)
    c = Controller(site, clock="virtual")
    c.measure("node/tx1/ambient_c", 25.0, 0)
    c.measure("node/tx1/top_oil_c", 70.0, 0) if measured_top_oil else None
    c.measure("node/tx1/power_w", -48_000.0, 0)         # K = 1.2, exporting: the model sees |load|
    c.step(S)                                           # first cycle: starts at the ultimate rises
    oil1, hot1 = iec_rises(t, 48_000.0)
    first = c.snapshot().node("tx1")["temperature_c"]
    assert first == pytest.approx((70.0 if measured_top_oil else 25.0 + oil1) + hot1, rel=1e-12)
    c.measure("node/tx1/power_w", 20_000.0, S)          # K = 0.5 for the next 30 s
    c.step(31 * S)
    oil2, hot2 = iec_rises(t, 20_000.0)
    oil = oil1 + (oil2 - oil1) * (1 - math.exp(-30.0 / t.tau_oil_s))
    hot = hot1 + (hot2 - hot1) * (1 - math.exp(-30.0 / t.tau_winding_s))
    second = c.snapshot().node("tx1")["temperature_c"]
    assert second == pytest.approx((70.0 if measured_top_oil else 25.0 + oil) + hot, rel=1e-12)
    assert not c.snapshot().node("tx1")["faults"]


def test_stale_transformer_ambient_is_taken_as_40_c():
    t = Thermal(rated_w=40_000.0, ambient_max_age_s=60.0)
    site = site_with(lambda n: replace(n, thermal=t, meter_max_age_s=600.0) if n.kind == "transformer" else n)
    c = Controller(site, clock="virtual")
    c.measure("node/tx1/power_w", 40_000.0, 0)
    c.step(S)
    oil, hot = iec_rises(t, 40_000.0)
    tx = c.snapshot().node("tx1")
    assert tx["faults"] & _core.FAULTS["temp_stale"] and tx["temperature_c"] == pytest.approx(40.0 + oil + hot)


# ---------------------------------------------------------------- thresholds and ties

def test_flags_are_true_only_above_one_half():
    """connected and v2g are 0/1 flags; 0.5 (in range, so the gate lets it in) is not true."""
    c = started(site_with())
    c.measure("port/evse001.1/connected", 0.5, S)
    c.measure("port/evse001.2/v2g", 0.5, S)
    snap = two_cycles(c)
    assert not snap.port("evse001.1")["connected"] and snap.port("evse001.1")["max_w"] == 0.0
    assert BINDINGS[snap.port("evse001.1")["binding"]] == "not_connected"
    assert not snap.port("evse001.2")["v2g"] and snap.port("evse001.2")["min_w"] == 0.0


@pytest.mark.parametrize("kind", ["import_limit", "export_limit"])
def test_a_grid_command_equal_to_the_rating_leaves_the_rating_binding(kind):
    """The binding names the limit that is tighter; at a tie the node's own rating stays."""
    c = started(site_with(grid_import_w=40_000.0, grid_export_w=40_000.0))
    assert c.submit({"kind": kind, "id": 1, "value_w": 40_000.0, "expires_in_s": 60})
    c.submit({"kind": "setpoint", "id": 2, "value_w": 1e6 if kind == "import_limit" else -1e6, "expires_in_s": 60})
    snap = two_cycles(c)
    assert snap.site[kind + "_w"] == 40_000.0
    assert c.submit({"kind": kind, "id": 3, "value_w": 39_999.0, "expires_in_s": 60})
    tighter = two_cycles(c)
    assert tighter.site[kind + "_w"] == 39_999.0
    node = snap.node("grid")
    assert BINDINGS[node["binding"]] != "grid_command"
    assert BINDINGS[tighter.node("grid")["binding"]] == "grid_command"
