"""Load shaving by export, in virtual time: non-EV load above a node's import limit is relieved by
V2G discharge within every EV's guard and every export limit, never in Safe State; and
fleet_capability honours per-phase current limits (native/arbitrate.pxi)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import S, ev, make_site
from v2g_rt import Control, Controller, Upstream
from v2g_rt.controller import BINDINGS

GRID_IMPORT = 40_000.0
GRID_EXPORT = 30_000.0


def site(ports=8, upstreams=(), **kw):
    kw.setdefault("control", Control(port_ramp_w_per_s=math.inf))
    return make_site(ports, grid_import_w=GRID_IMPORT, grid_export_w=GRID_EXPORT, transformer_w=1e6,
                     group_w=1e6, upstreams=upstreams, **kw)


def run(c, base_w, cycles, t, sessions=None, heartbeat=False):
    """cycles of the loop, the grid meter reading base load + what the fleet was given (the far
    side: a meter sees the EVs' flows); returns the time reached."""
    period = c.site.period_ns
    for _ in range(cycles):
        fleet = float(c.snapshot().site["fleet_w"])
        c.measure("node/grid/power_w", base_w + fleet, t)
        if sessions:
            for pid, s in sessions.items():
                s.publish(c, pid, t)
        if heartbeat:
            c.measure("upstream/dms/heartbeat", 1.0, t)
        t += period
        c.step(t)
    return t


def plug(c, t, **kw):
    sessions = {pid: ev(**{"departure_in_s": 3600 * (4 + i % 4), **kw}) for i, pid in enumerate(c.port_ids)}
    for pid, s in sessions.items():
        s.publish(c, pid, t)
    return sessions


def assert_guarded(c, base_w):
    snap = c.snapshot()
    p = snap.ports
    assert (p["setpoint_w"] >= p["min_w"] - 1e-6).all() and (p["setpoint_w"] <= p["max_w"] + 1e-6).all()
    assert base_w + snap.site["fleet_w"] >= -GRID_EXPORT - 1e-6               # never beyond the export limit
    if snap.site["safe_state"]:
        assert (p["setpoint_w"] >= 0).all()


def test_an_overload_is_relieved_by_discharge_instead_of_clamped_at_zero():
    c = Controller(site(), clock="virtual")
    t = S
    c.step(t)
    plug(c, t)
    t = run(c, 60_000.0, 5, t)                              # 20 kW over the 40 kW import limit
    snap = c.snapshot()
    assert snap.site["fleet_w"] == pytest.approx(-20_000.0)     # exactly back to the limit
    assert snap.node("grid")["overload_w"] == pytest.approx(20_000.0)
    relieving = [BINDINGS[b] for b, w in zip(snap.ports["binding"], snap.ports["setpoint_w"]) if w < 0]
    assert relieving and set(relieving) <= {"relief", "ev_limit", "rating", "soc"}
    assert_guarded(c, 60_000.0)
    run(c, 30_000.0, 3, t)                                  # the load falls: charging again
    assert c.snapshot().site["fleet_w"] == pytest.approx(10_000.0)


def test_a_setpoint_counts_the_relief_and_others_make_up_for_it():
    c = Controller(site(), clock="virtual")
    t = S
    c.step(t)
    plug(c, t)
    assert c.submit({"kind": "setpoint", "id": "sp", "value_w": -5_000.0, "expires_in_s": 600})
    t = run(c, 60_000.0, 5, t)                              # relief (20 kW) is more than the setpoint asks
    assert c.snapshot().site["fleet_w"] == pytest.approx(-20_000.0)


def test_no_relief_in_safe_state():
    c = Controller(site(upstreams=(Upstream("dms", 3.0),)), clock="virtual")
    t = S
    c.step(t)
    plug(c, t)
    run(c, 60_000.0, 5, t)
    snap = c.snapshot()
    assert snap.site["safe_state"] == ["upstream"]
    assert (snap.ports["setpoint_w"] == 0).all() and snap.node("grid")["overload_w"] == 0


def test_relief_stops_at_each_evs_guard():
    c = Controller(site(), clock="virtual")
    t = S
    c.step(t)
    plug(c, t, soc=0.2, min_soc=0.2)                       # at their minimum SoC: nothing to give
    run(c, 60_000.0, 5, t)
    assert (c.snapshot().ports["setpoint_w"] == 0).all()


@settings(max_examples=30)
@given(base=st.floats(0.0, 150_000.0), socs=st.lists(st.floats(0.1, 1.0), min_size=8, max_size=8),
       v2g=st.lists(st.booleans(), min_size=8, max_size=8), safe=st.booleans(),
       setpoint=st.one_of(st.none(), st.floats(-60_000.0, 60_000.0)))
def test_property_relief_within_guards_and_limits_and_in_bounded_cycles(base, socs, v2g, safe, setpoint):
    ramp = 500_000.0                                         # W/s per port: relief is ramped like any rise
    c = Controller(site(upstreams=(Upstream("dms", 3.0),), control=Control(port_ramp_w_per_s=ramp, safe_exit_s=0.0)),
                   clock="virtual")
    t = S
    c.step(t)
    sessions = {pid: ev(soc=socs[i], v2g=v2g[i], min_soc=0.2, departure_in_s=3600 * (2 + i))
                for i, pid in enumerate(c.port_ids)}
    if setpoint is not None:
        assert c.submit({"kind": "setpoint", "id": "sp", "value_w": setpoint, "expires_in_s": 600})
    bound = 2 + math.ceil(11_000.0 / (ramp * c.site.period_s))      # a port's full discharge, ramped
    for _ in range(bound):
        t = run(c, base, 1, t, sessions, heartbeat=not safe)
        assert_guarded(c, base)
    snap = c.snapshot()
    assert bool(snap.site["safe_state"]) == safe
    give = float(np.sum(-snap.ports["min_w"]))              # what the EVs' guards allow them to give
    over = base - GRID_IMPORT
    if not safe and 0.0 < over <= min(give, GRID_EXPORT + GRID_IMPORT):
        assert base + snap.site["fleet_w"] <= GRID_IMPORT + 1e-3           # a feasible overload: relieved
    if safe:
        assert (snap.ports["setpoint_w"] >= 0).all()


def test_fleet_capability_honours_per_phase_current_limits():
    from v2g_rt.site import Node, Port, Site

    # three single-phase 7.4 kW ports all on L1 under a 40 A phase limit: 40 A x 230 V = 9.2 kW
    nodes = (Node("grid", "grid", None, 1e6, 1e6), Node("g", "group", "grid", 1e6, 1e6, phase_limit_a=40.0),
             Node("e", "evse", "g", 1e6, 1e6, link="sim", phases="L1", voltage_v=230.0))
    ports = tuple(Port(f"e.{k}", "e", 7_400.0, 7_400.0) for k in (1, 2, 3))
    s = Site("phases", 1e-3, nodes, ports, rt=make_site(1).rt, control=Control(port_ramp_w_per_s=math.inf))
    c = Controller(s, clock="virtual")
    c.step(S)
    for pid in c.port_ids:
        ev(max_charge_w=7_400.0, max_discharge_w=7_400.0).publish(c, pid, S)
    c.step(S + 1000)
    c.step(S + 2000)
    snap = c.snapshot()
    assert snap.site["fleet_max_w"] == pytest.approx(9_200.0)
    assert snap.site["fleet_min_w"] == pytest.approx(-9_200.0)
    assert snap.site["fleet_w"] == pytest.approx(9_200.0)            # and the allocation agrees
