"""The cycle in virtual time: limits, sharing, setpoint tracking, commands, Safe State."""
import math

import numpy as np
import pytest

from helpers import S, assert_within_limits, ev, make_site, node_sums, plug_all
from v2g_rt import Control, Controller, Upstream
from v2g_rt.controller import BINDINGS
from v2g_rt.site import port_source

BASE_LOAD = 50_000.0


def depot(ports=50, **kw):
    c = Controller(make_site(ports, **kw), clock="virtual")
    c.step(S)
    plug_all(c, S)
    c.measure("node/grid/power_w", BASE_LOAD, S)
    return c


def setpoint(c, w, id, t_s=60, **kw):
    v = c.submit({"kind": "setpoint", "id": id, "value_w": w, "expires_in_s": t_s, **kw})
    assert v, v


def settle(c, t):
    """Cycles at t and shortly after (inputs stamped up to t have been taken)."""
    if c.now_ns() < t:
        c.step(t)
    c.step(t + 1000)
    c.step(t + 2000)


def test_default_profile_charges_to_the_tightest_limit_and_no_further():
    c = depot()
    settle(c, 2 * S)
    snap = c.snapshot()
    assert_within_limits(c, BASE_LOAD)
    assert (snap.ports["setpoint_w"] >= 0).all()               # the default profile never discharges
    grid = c.site.node("grid")
    expected = min(grid.import_limit_w - BASE_LOAD, c.site.node("tx1").import_limit_w)
    assert snap.site["fleet_w"] == pytest.approx(expected)
    assert snap.site["binding"] == "base_load"
    assert BINDINGS[snap.node("grid")["binding"]] == "base_load"


def test_group_limit_binds_below_the_grid():
    c = depot(ports=12, grid_import_w=1e6, transformer_w=1e6)     # only the group (60 %) binds
    settle(c, 2 * S)
    sums = node_sums(c)
    assert sums["group1"] == pytest.approx(c.site.node("group1").import_limit_w)
    assert BINDINGS[c.snapshot().node("group1")["binding"]] == "rating"
    bound = c.snapshot().ports
    assert {BINDINGS[b] for b in bound["binding"]} <= {"parent", "rating", "ev_limit"}


@pytest.mark.parametrize("target", [120_000.0, 33_333.0, -40_000.0, -121_000.0, 0.0])
def test_fleet_follows_a_feasible_setpoint_exactly(target):
    c = depot()
    setpoint(c, target, "sp")
    settle(c, 2 * S)
    snap = c.snapshot()
    assert snap.site["fleet_w"] == pytest.approx(target, abs=1e-6)
    assert snap.site["setpoint_w"] == target
    assert_within_limits(c, BASE_LOAD)
    if target > 0:
        assert (snap.ports["setpoint_w"] >= 0).all()
    if target < 0:
        assert (snap.ports["setpoint_w"] <= 0).all()          # no energy shuffled between EVs


def test_infeasible_setpoint_is_capped_by_the_binding_limit():
    c = depot()
    setpoint(c, -1e6, "sp")
    settle(c, 2 * S)
    snap = c.snapshot()
    export_room = c.site.node("grid").export_limit_w + BASE_LOAD
    assert snap.site["fleet_w"] >= -export_room - 1e-6
    assert_within_limits(c, BASE_LOAD)
    assert snap.site["fleet_w"] < -100_000


def test_expired_setpoint_falls_back_to_the_default_profile():
    c = depot()
    setpoint(c, -60_000.0, "sp", t_s=5)
    settle(c, 2 * S)
    assert c.snapshot().site["fleet_w"] == pytest.approx(-60_000.0)
    c.step(7 * S)
    c.measure("node/grid/power_w", BASE_LOAD - 60_000.0, 7 * S)
    plug_all(c, 7 * S)
    settle(c, 7 * S)
    snap = c.snapshot()
    assert math.isnan(snap.site["setpoint_w"])
    assert snap.site["commands_expired"] == 1
    assert (snap.ports["setpoint_w"] >= 0).all() and snap.site["fleet_w"] > 0


def test_cancel_ends_the_active_command():
    c = depot()
    setpoint(c, -60_000.0, "sp")
    settle(c, 2 * S)
    assert c.submit({"kind": "cancel", "id": "c1", "of": "setpoint", "expires_in_s": 5})
    settle(c, 3 * S)
    assert math.isnan(c.snapshot().site["setpoint_w"])
    assert c.snapshot().site["fleet_w"] > 0


def test_load_shed_caps_fleet_import():
    c = depot()
    assert c.submit({"kind": "load_shed", "id": "ls", "value_w": 30_000.0, "expires_in_s": 60})
    setpoint(c, 150_000.0, "sp")
    settle(c, 2 * S)
    snap = c.snapshot()
    assert snap.site["fleet_w"] == pytest.approx(30_000.0)
    assert snap.site["binding"] == "load_shed"
    assert snap.site["load_shed_w"] == 30_000.0


def test_grid_export_limit_command_binds_at_the_connection():
    c = depot()
    assert c.submit({"kind": "export_limit", "id": "el", "value_w": 20_000.0, "expires_in_s": 60})
    setpoint(c, -200_000.0, "sp")
    settle(c, 2 * S)
    snap = c.snapshot()
    assert snap.site["export_limit_w"] == 20_000.0
    # total export = fleet + non-EV load never beyond the commanded limit
    assert snap.site["fleet_w"] + BASE_LOAD == pytest.approx(-20_000.0)
    assert snap.site["binding"] == "grid_command"


def test_import_limit_command_binds_at_the_connection():
    c = depot()
    assert c.submit({"kind": "import_limit", "id": "il", "value_w": 90_000.0, "expires_in_s": 60})
    settle(c, 2 * S)
    snap = c.snapshot()
    assert snap.site["fleet_w"] + BASE_LOAD == pytest.approx(90_000.0)
    assert snap.site["binding"] == "grid_command"


def test_stale_meter_assumes_the_worst_base_load():
    c = depot()
    settle(c, 7 * S)                          # meter stamped at 1 s, max age 5 s
    snap = c.snapshot()
    lo, hi = c.site.node("grid").base_load_w
    assert math.isnan(snap.node("grid")["measured_w"])
    assert snap.site["fleet_w"] <= c.site.node("grid").import_limit_w - hi + 1e-6
    assert snap.site["binding"] == "stale_meter"


def test_measured_non_ev_load_is_meter_minus_fleet():
    c = depot()
    settle(c, 2 * S)
    fleet = c.snapshot().site["fleet_w"]
    c.step(3 * S)
    for pid, w in zip(c.port_ids, c.snapshot().ports["setpoint_w"]):
        assert c.measure(port_source(pid, "power_w"), w, 3 * S)
    assert c.measure("node/grid/power_w", BASE_LOAD + fleet, 3 * S)
    settle(c, 3 * S)
    assert c.snapshot().node("grid")["non_ev_w"] == pytest.approx(BASE_LOAD)


def test_scarce_power_is_spread_by_reachable_energy_urgent_or_not():
    c = Controller(make_site(4, ports_per_evse=1, grid_import_w=1e6, transformer_w=1e6, group_w=1e6), clock="virtual")
    c.step(S)
    # 20 kWh at 11 kW takes 6545 s: a departure in 6700 s leaves 155 s of laxity (urgent)
    for pid, dep in zip(c.port_ids, (8 * 3600, 6700, 4 * 3600, 1800)):
        ev(departure_in_s=dep, energy_request_wh=20_000).publish(c, pid, S)
    setpoint(c, 16_500.0, "sp")
    settle(c, 2 * S)
    w = c.snapshot().ports["setpoint_w"]
    # shares as reach^-1.5, reach = min(60 kWh, 30 kWh + 11 kW x time left): the urgent one
    # (50.5 kWh) is not served first, the one leaving in 30 min (35.5 kWh) gets the most
    reach = np.minimum(60.0, 30.0 + 11.0 * np.array([8 * 3600, 6700, 4 * 3600, 1800]) / 3600)
    assert list(w) == pytest.approx(list(16_500.0 * reach ** -1.5 / (reach ** -1.5).sum()), rel=1e-4)


def test_discharge_respects_v2g_min_soc_and_departure_energy():
    c = Controller(make_site(4, ports_per_evse=1, grid_export_w=1e6, transformer_w=1e6, group_w=1e6), clock="virtual")
    c.step(S)
    a, b, d, e = c.port_ids
    ev(v2g=False).publish(c, a, S)                                   # no V2G
    ev(soc=0.2, min_soc=0.2, energy_request_wh=0).publish(c, b, S)     # at its minimum SoC
    ev(departure_in_s=2 * 3600, energy_request_wh=20_000).publish(c, d, S)  # needs its time
    ev(departure_in_s=10 * 3600, energy_request_wh=10_000).publish(c, e, S)
    setpoint(c, -40_000.0, "sp")
    settle(c, 2 * S)
    snap = c.snapshot()
    names = [BINDINGS[x] for x in snap.ports["binding"]]
    assert list(snap.ports["setpoint_w"][:3]) == [0.0, 0.0, 0.0]
    assert names[:3] == ["no_v2g", "soc", "soc"]
    assert snap.ports["setpoint_w"][3] == -11_000.0


def test_ramp_limits_increases_and_reductions_are_immediate():
    ctl = Control(port_ramp_w_per_s=2_000.0)
    c = Controller(make_site(2, ports_per_evse=1, grid_import_w=1e6, transformer_w=1e6, group_w=1e6,
                             control=ctl, period_s=0.1), clock="virtual")
    c.step(S)
    plug_all(c, S)
    setpoint(c, 22_000.0, "up")
    c.run_steps(10)                               # 1 s at 2 kW/s
    w = c.snapshot().ports["setpoint_w"]
    assert w == pytest.approx([2_000.0, 2_000.0])
    assert {BINDINGS[b] for b in c.snapshot().ports["binding"]} == {"ramp"}
    setpoint(c, 1_000.0, "down")
    c.run_steps(1)
    assert c.snapshot().site["fleet_w"] == pytest.approx(1_000.0)  # at once


def test_reversal_passes_through_zero_then_ramps():
    ctl = Control(port_ramp_w_per_s=10_000.0)
    c = Controller(make_site(1, ports_per_evse=1, control=ctl, period_s=0.1,
                             grid_import_w=1e6, grid_export_w=1e6, transformer_w=1e6, group_w=1e6), clock="virtual")
    c.step(S)
    ev(departure_in_s=10 * 3600, energy_request_wh=5_000).publish(c, c.port_ids[0], S)
    setpoint(c, 11_000.0, "up")
    c.run_steps(20)
    assert c.snapshot().site["fleet_w"] == 11_000.0
    setpoint(c, -11_000.0, "down")
    c.run_steps(1)
    assert c.snapshot().site["fleet_w"] == pytest.approx(-1_000.0)


def test_stale_session_stops_the_port_and_flags_it():
    c = depot(ports=4, grid_import_w=1e6, transformer_w=1e6, group_w=1e6)
    settle(c, 2 * S)
    assert (c.snapshot().ports["setpoint_w"] > 0).all()
    c.step(12 * S)
    c.measure("node/grid/power_w", BASE_LOAD, 12 * S)
    for pid in c.port_ids[1:]:
        ev().publish(c, pid, 12 * S)
    settle(c, 12 * S)                         # port 0's session is 11 s old (max age 10 s)
    snap = c.snapshot()
    assert snap.ports["setpoint_w"][0] == 0.0
    assert snap.ports["faults"][0] != 0 and (snap.ports["faults"][1:] == 0).all()
    assert BINDINGS[snap.ports["binding"][0]] == "fault"


def test_unplugged_port_gets_nothing():
    c = depot(ports=4, grid_import_w=1e6, transformer_w=1e6, group_w=1e6)
    settle(c, 2 * S)
    c.measure(port_source(c.port_ids[2], "connected"), 0.0, 2 * S + 2000)
    settle(c, 3 * S)
    snap = c.snapshot()
    assert snap.ports["setpoint_w"][2] == 0.0 and not snap.ports["connected"][2]


def test_safe_state_without_upstream_then_hysteresis():
    c = Controller(make_site(8, meter=False, grid_export_w=1e6, transformer_w=1e6, group_w=1e6,
                             upstreams=(Upstream("dms", 3.0),), control=Control(safe_exit_s=10.0,
                   port_ramp_w_per_s=math.inf)), clock="virtual")
    c.step(S)
    plug_all(c, S)
    setpoint(c, -30_000.0, "sp", t_s=3600)
    settle(c, 2 * S)
    snap = c.snapshot()
    assert snap.site["safe_state"] == ["upstream"]              # no heartbeat yet
    assert (snap.ports["setpoint_w"] >= 0).all() and snap.site["binding"] == "safe_state"
    for t in range(3, 14):                                 # healthy from 3 s on
        c.step(t * S)
        c.measure("upstream/dms/heartbeat", 1.0, t * S)
        plug_all(c, t * S)
        settle(c, t * S)
        in_safe = c.snapshot().site["safe_state"] == ["upstream"]
        assert in_safe == (t - 3 < 10), t                  # leaves only after 10 s healthy
    assert c.snapshot().site["fleet_w"] == pytest.approx(-30_000.0)
    c.step(17 * S)
    plug_all(c, 17 * S)
    settle(c, 17 * S)                                       # heartbeat 4 s old > 3 s timeout
    assert c.snapshot().site["safe_state"] == ["upstream"]
    assert (c.snapshot().ports["setpoint_w"] >= 0).all()


def test_run_steps_is_the_same_as_stepping_one_by_one():
    a, b = depot(), depot()
    setpoint(a, -35_000.0, "sp")
    setpoint(b, -35_000.0, "sp")
    a.run_steps(500)
    for k in range(1, 501):
        b.step(S + k * a.site.period_ns)
    sa, sb = a.snapshot(), b.snapshot()
    assert sa.cycle == sb.cycle and sa.t_ns == sb.t_ns
    for rows in ("ports", "nodes"):
        x, y = getattr(sa, rows), getattr(sb, rows)
        for f in x.dtype.names:
            assert np.array_equal(x[f], y[f], equal_nan=x[f].dtype.kind == "f"), (rows, f)


def test_allocation_is_steady_with_some_ports_empty():
    """Constant inputs give constant outputs: no flip-flop between equally able ports
    (empty ports once made the ordering NaN and the allocation alternate every cycle)."""
    ctl = Control(port_ramp_w_per_s=50_000.0)
    c = Controller(make_site(20, control=ctl, period_s=0.01, grid_export_w=1e6, transformer_w=1e6, group_w=1e6),
                   clock="virtual")
    c.step(S)
    for i, pid in enumerate(c.port_ids):
        if i % 3:
            ev(departure_in_s=3600 * (2 + i), soc=0.4 + i / 50, energy_request_wh=5_000).publish(c, pid, S)
    setpoint(c, -45_000.0, "sp")
    c.run_steps(200)
    history = []
    for _ in range(10):
        c.run_steps(1)
        history.append(c.snapshot().ports["setpoint_w"].copy())
    assert all(np.array_equal(history[0], h) for h in history)
    assert history[-1].sum() == pytest.approx(-45_000.0)
