"""Properties of the control law over random sites, fleets, commands and frequencies (virtual time)."""
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from helpers import S, node_sums
from v2g_rt import Control, Controller, Frequency, Upstream, depot
from v2g_rt.sim.session import Session
from helpers import NORMAL_PRIORITY
from v2g_rt.site import port_source

PERIOD_S = 0.01
SETTLE_CYCLES = 150          # 1.5 s: ramps of 50 kW/s settle any port of <= 50 kW
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def sites(draw, upstreams=False):
    ports = draw(st.integers(1, 40))
    charge = draw(st.sampled_from([3_700.0, 7_400.0, 11_000.0, 22_000.0]))
    total = ports * charge
    frac = lambda lo, hi: draw(st.floats(lo, hi)) * total  # noqa: E731
    base = draw(st.floats(0.0, 0.3)) * total
    site = depot(ports, ports_per_evse=draw(st.integers(1, 2)), evses_per_group=draw(st.integers(1, 6)),
                 port_charge_w=charge, port_discharge_w=draw(st.sampled_from([0.0, charge / 2, charge])),
                 grid_import_w=base + frac(0.05, 1.2), grid_export_w=frac(0.05, 1.2),
                 transformer_w=frac(0.1, 1.2), group_w=frac(0.05, 0.8) / 2,
                 base_load_w=(0.0, total), period_s=PERIOD_S, rt=NORMAL_PRIORITY,
                 upstreams=(Upstream("dms", 3600.0),) if upstreams else (),
                 control=Control(port_ramp_w_per_s=50_000.0, safe_exit_s=0.0, session_max_age_s=3600.0))
    return site, base


@st.composite
def evs(draw, n):
    out = []
    for _ in range(n):
        if not draw(st.booleans()):
            out.append(None)
            continue
        cap = draw(st.floats(20_000, 120_000))
        soc = draw(st.floats(0.0, 1.0))
        out.append(Session(soc=soc, capacity_wh=cap, energy_request_wh=draw(st.floats(0, cap * (1 - soc) + 1)),
                           departure_in_s=draw(st.floats(-600, 20 * 3600)),
                           max_charge_w=draw(st.floats(0, 22_000)), max_discharge_w=draw(st.floats(0, 22_000)),
                           min_soc=draw(st.floats(0.0, 0.5)), v2g=draw(st.booleans())))
    return out


def run(site, base, sessions, setpoint=None, frequency=None, heartbeat=True):
    c = Controller(site, clock="virtual")
    c.step(S)
    for pid, s in zip(c.port_ids, sessions):
        if s is not None:
            s.publish(c, pid, S)
        else:
            c.measure(port_source(pid, "connected"), 0.0, S)
    c.measure("node/grid/power_w", base, S)
    if frequency is not None:
        c.measure("grid/frequency_hz", frequency, S)
    if site.upstreams and heartbeat:
        c.measure("upstream/dms/heartbeat", 1.0, S)
    if setpoint is not None:
        assert c.submit({"kind": "setpoint", "id": 1, "value_w": setpoint, "expires_in_s": 600})
    c.run_steps(SETTLE_CYCLES)
    return c


def check_limits(c, site, base, tol=1e-6, envelope=True):
    snap = c.snapshot()
    sums = node_sums(c)
    for n in site.nodes:
        flow = sums[n.id] + (base if n.parent is None else 0.0)
        assert -n.export_limit_w - tol <= flow <= n.import_limit_w + tol, (n.id, flow)
    w = snap.ports["setpoint_w"]
    assert (w <= snap.ports["max_w"] + tol).all() and (not envelope or (w >= snap.ports["min_w"] - tol).all())


@PROPS
@given(data=st.data(), setpoint=st.one_of(st.none(), st.floats(-600_000, 600_000)))
def test_no_node_limit_exceeded_and_ports_inside_their_envelope(data, setpoint):
    site, base = data.draw(sites())
    sessions = data.draw(evs(len(site.ports)))
    c = run(site, base, sessions, setpoint)
    check_limits(c, site, base)
    snap = c.snapshot()
    for s, row, p in zip(sessions, snap.ports, site.ports):
        if s is None:
            assert row["setpoint_w"] == 0.0
            continue
        assert row["setpoint_w"] <= min(p.rating_charge_w, s.max_charge_w) + 1e-6
        assert row["setpoint_w"] >= -min(p.rating_discharge_w, s.max_discharge_w) - 1e-6
        if row["setpoint_w"] < 0:
            assert s.v2g and s.soc > s.min_soc
            # never below the minimum SoC, not even within one cycle
            assert -row["setpoint_w"] * PERIOD_S / 3600 <= (s.soc - s.min_soc) * s.capacity_wh + 1e-9


@PROPS
@given(data=st.data(), setpoint=st.floats(-600_000, 0))
def test_no_discharge_in_safe_state(data, setpoint):
    site, base = data.draw(sites(upstreams=True))
    c = run(site, base, data.draw(evs(len(site.ports))), setpoint, heartbeat=False)
    snap = c.snapshot()
    assert snap.site["safe_state"] == ["upstream"]
    assert (snap.ports["setpoint_w"] >= 0).all()
    check_limits(c, site, base)


def lp_can_meet(c, site, base, setpoint) -> bool:
    """An LP, independent of the arbitration: ports within their published envelope,
    every node within its configured limits (grid: minus the non-EV load)."""
    snap = c.snapshot()
    n = len(site.ports)
    lo, hi = snap.ports["min_w"], snap.ports["max_w"]
    rows, ub = [], []
    parent = {nd.id: nd.parent for nd in site.nodes}
    for nd in site.nodes:
        below = np.zeros(n)
        for j, p in enumerate(site.ports):
            x = p.evse
            while x is not None:
                if x == nd.id:
                    below[j] = 1.0
                x = parent[x]
        extra = base if nd.parent is None else 0.0
        rows += [below, -below]
        ub += [nd.import_limit_w - extra, nd.export_limit_w + extra]
    res = linprog(np.zeros(n), A_ub=np.array(rows), b_ub=np.array(ub), A_eq=np.ones((1, n)), b_eq=[setpoint],
                  bounds=list(zip(lo, hi)), method="highs")
    return res.status == 0


@PROPS
@given(data=st.data(), setpoint=st.floats(-600_000, 600_000))
def test_setpoint_met_exactly_whenever_an_lp_says_it_can_be(data, setpoint):
    site, base = data.draw(sites())
    c = run(site, base, data.draw(evs(len(site.ports))), setpoint)
    feasible = lp_can_meet(c, site, base, setpoint)
    fleet = c.snapshot().site["fleet_w"]
    event("feasible" if feasible else "infeasible")
    if feasible:
        assert fleet == pytest.approx(setpoint, abs=1e-6 * max(1.0, abs(setpoint)))
    else:   # then the fleet goes as far as it can in the setpoint's direction
        assert abs(fleet) <= abs(setpoint) + 1e-6


@settings(max_examples=200, deadline=None)
@given(t1=st.floats(-20, 150), t2=st.floats(-20, 150), start=st.floats(40, 80), span=st.floats(1, 40))
def test_heatsink_derate_is_monotone_in_temperature(t1, t2, start, span):
    site = depot(2, ports_per_evse=2, rt=NORMAL_PRIORITY, meter=False, grid_import_w=1e6, transformer_w=1e6,
                 group_w=1e6)
    site = replace(site, nodes=tuple(replace(n, heatsink_c=(start, start + span)) if n.kind == "evse" else n
                                     for n in site.nodes))
    derate = []
    for t in (t1, t2):
        c = Controller(site, clock="virtual")
        c.step(S)
        c.measure("node/evse001/heatsink_c", t, S)
        c.step(S + 1000)
        derate.append(c.snapshot().node("evse001")["derate"])
    lo, hi = sorted([(t1, derate[0]), (t2, derate[1])])
    assert hi[1] <= lo[1] + 1e-12
    for t, d in ((t1, derate[0]), (t2, derate[1])):
        assert d == pytest.approx(min(1.0, max(0.0, (start + span - t) / span)))


def response(freq: Frequency, hz: float) -> float:
    site = replace(depot(2, rt=NORMAL_PRIORITY), frequency=freq)
    c = Controller(site, clock="virtual")
    c.step(S)
    c.measure("grid/frequency_hz", hz, S)
    c.step(S + 1000)
    return c.snapshot().site["frequency_response_w"]


@settings(max_examples=150, deadline=None)
@given(hz=st.floats(45.0, 65.0), f0=st.sampled_from([50.0, 60.0]), db_u=st.floats(0, 0.5), db_o=st.floats(0, 0.5),
       k_u=st.floats(0.01, 0.2), k_o=st.floats(0.01, 0.2), p=st.floats(1e3, 1e7))
def test_droop_equals_its_definition(hz, f0, db_u, db_o, k_u, k_o, p):
    hz = f0 + (hz - 50.0) / 5       # around the nominal frequency
    freq = Frequency(mode="droop", nominal_hz=f0, deadband_under_hz=db_u, deadband_over_hz=db_o,
                     droop_under=k_u, droop_over=k_o, rated_w=p, response_time_s=0.0)
    if hz < f0 - db_u:
        expected = -p * ((f0 - db_u) - hz) / (f0 * k_u)
    elif hz > f0 + db_o:
        expected = p * (hz - (f0 + db_o)) / (f0 * k_o)
    else:
        expected = 0.0
    assert response(freq, hz) == pytest.approx(expected, rel=1e-9, abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(points=st.lists(st.tuples(st.floats(47.0, 53.0), st.floats(-1e6, 1e6)), min_size=2, max_size=16,
                       unique_by=lambda p: round(p[0], 3)),
       hz=st.floats(46.0, 54.0))
def test_curve_equals_linear_interpolation_of_unevenly_spaced_points(points, hz):
    points = sorted(points)
    assume(all(b[0] - a[0] > 1e-3 for a, b in zip(points, points[1:])))
    freq = Frequency(mode="curve", response_time_s=0.0, curve=tuple(points))
    xs, ys = zip(*points)
    assert response(freq, hz) == pytest.approx(float(np.interp(hz, xs, ys)), rel=1e-9, abs=1e-6)


# The arbitration's water-filled tier spreads a setpoint instead of concentrating it, and an export
# setpoint draws on the departure reserves only when told to (setpoint_draws_reserve), never below
# a port's minimum SoC.

def alike(n, setpoint, **control):
    """n identical EVs on a site whose nodes never bind: only the setpoint does."""
    site = depot(n, ports_per_evse=1, port_charge_w=11_000.0, port_discharge_w=11_000.0, grid_import_w=1e7,
                 grid_export_w=1e7, transformer_w=1e7, group_w=1e7, meter=False, rt=NORMAL_PRIORITY)
    site = replace(site, control=replace(site.control, session_max_age_s=3600.0, port_ramp_w_per_s=math.inf,
                                        **control))
    c = Controller(site, clock="virtual")
    c.step(S)
    for pid in c.port_ids:
        Session(soc=0.5, capacity_wh=60_000, energy_request_wh=20_000, departure_in_s=6 * 3600,
                max_charge_w=11_000, max_discharge_w=11_000, min_soc=0.2, v2g=True).publish(c, pid, S)
    assert c.submit({"kind": "setpoint", "id": 1, "value_w": setpoint, "expires_in_s": 600})
    c.run_steps(200)
    return c.snapshot().ports["setpoint_w"]


@given(n=st.integers(2, 40), frac=st.floats(0.01, 1.0), sign=st.sampled_from([1.0, -1.0]))
@PROPS
def test_alike_evs_share_a_setpoint_equally(n, frac, sign):
    w = alike(n, sign * frac * n * 11_000.0)
    assert w.sum() == pytest.approx(sign * frac * n * 11_000.0, rel=1e-9, abs=1e-6)
    assert w.max() - w.min() <= 1e-6 * n * 11_000.0        # spread over all, none concentrated


@PROPS
@given(data=st.data(), setpoint=st.floats(-600_000, 0))
def test_export_setpoint_draws_on_reserves_only_when_told_within_every_limit(data, setpoint):
    site, base = data.draw(sites())
    sessions = data.draw(evs(len(site.ports)))
    kept = run(site, base, sessions, setpoint)
    drawn_site = replace(site, control=replace(site.control, setpoint_draws_reserve=True))
    drawn = run(drawn_site, base, sessions, setpoint)
    reserve = site.control.discharge_reserve_s
    check_limits(kept, site, base)
    check_limits(drawn, drawn_site, base, envelope=False)      # min_w is the guarded envelope
    k, d = kept.snapshot(), drawn.snapshot()
    for sess, rk, rd in zip(sessions, k.ports, d.ports):
        if sess is None:
            continue
        if rk["laxity_s"] <= reserve:                     # the guard holds by default
            assert rk["setpoint_w"] >= 0.0
        if rd["setpoint_w"] < 0.0:                        # never below min SoC, not even for a cycle
            assert sess.v2g and sess.soc > sess.min_soc
            assert -rd["setpoint_w"] * 0.01 / 3600 <= (sess.soc - sess.min_soc) * sess.capacity_wh + 1e-9
    event("drew on the reserves" if d.site["fleet_w"] < k.site["fleet_w"] - 1.0 else "no draw")
    # drawing on the reserves only ever exports more, never past the setpoint
    assert setpoint - 1e-6 <= d.site["fleet_w"] <= k.site["fleet_w"] + 1e-6 * max(1.0, abs(setpoint))
    if lp_can_meet(kept, site, base, setpoint):
        assert d.site["fleet_w"] == pytest.approx(setpoint, abs=1e-6 * max(1.0, abs(setpoint)))


def test_an_export_setpoint_draws_on_reserves_only_when_told():
    # 40 kWh wanted within the hour at 11 kW: every EV would miss its departure energy (laxity < 0)
    site = depot(4, ports_per_evse=1, port_charge_w=11_000.0, port_discharge_w=11_000.0, grid_import_w=1e7,
                 grid_export_w=1e7, transformer_w=1e7, group_w=1e7, meter=False, rt=NORMAL_PRIORITY)
    fleet = []
    for draw in (False, True):
        s = replace(site, control=replace(site.control, session_max_age_s=3600.0, port_ramp_w_per_s=math.inf,
                                          setpoint_draws_reserve=draw))
        c = Controller(s, clock="virtual")
        c.step(S)
        for pid in c.port_ids:
            Session(soc=0.5, capacity_wh=100_000, energy_request_wh=40_000, departure_in_s=3600,
                    max_charge_w=11_000, max_discharge_w=11_000, min_soc=0.2, v2g=True).publish(c, pid, S)
        assert c.submit({"kind": "setpoint", "id": 1, "value_w": -20_000.0, "expires_in_s": 600})
        c.run_steps(200)
        fleet.append(c.snapshot().ports["setpoint_w"])
    assert (fleet[0] == 0.0).all()                          # the guard keeps every departure reserve
    assert fleet[1] == pytest.approx([-5_000.0] * 4)        # told: the setpoint, an equal share each
