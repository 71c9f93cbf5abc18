"""Load shaving by export, in virtual time: non-EV load above a node's import limit is relieved by
V2G discharge within every EV's guard and every export limit, never in Safe State; and
fleet_capability honours per-phase current limits (native/arbitrate.pxi)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import S, ev, make_site, node_sums
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


def test_each_metered_node_subtracts_the_ports_below_it():
    """A meter at every level of the tree: a node's non-EV load is its reading less what the
    ports below it measured, and nothing of the ports under its siblings."""
    from dataclasses import replace

    base = make_site(12, evses_per_group=2)               # three groups under the transformer
    s = replace(base, nodes=tuple(replace(n, meter_max_age_s=5.0) for n in base.nodes))
    c = Controller(s, clock="virtual")
    t = S
    c.step(t)
    drew = {pid: (-1.0) ** k * 1_000.0 * (k + 1) + 0.25 * k for k, pid in enumerate(c.port_ids)}
    for pid, w in drew.items():
        ev().publish(c, pid, t)
        c.measure(f"port/{pid}/power_w", w, t)
    readings = {n.id: 5_000.0 * (k + 1) for k, n in enumerate(s.nodes)}
    for nid, w in readings.items():
        c.measure(f"node/{nid}/power_w", w, t)
    c.step(t + s.period_ns)
    snap = c.snapshot()
    below = node_sums(c, "measured_w")
    assert snap.ports["measured_w"] == pytest.approx([drew[pid] for pid in c.port_ids])
    for n in s.nodes:
        assert snap.node(n.id)["non_ev_w"] == pytest.approx(readings[n.id] - below[n.id], abs=1e-9), n.id
    assert snap.site["fleet_measured_w"] == pytest.approx(sum(drew.values()))


# ---------------------------------------------------------------- per-phase non-EV currents

PHASE_LIMIT = 40.0


def phase_site(meter_phases=True):
    """A grid connection of 40 A per phase with a per-phase meter, two single-phase 7.4 kW V2G
    EVSEs on L1 and one on L2."""
    from v2g_rt.site import Node, Port, Site

    nodes = (Node("grid", "grid", None, 1e6, 1e6, meter_max_age_s=5.0, phase_limit_a=PHASE_LIMIT,
                  meter_phases=meter_phases),
             Node("a", "evse", "grid", 1e6, 1e6, link="sim", phases="L1"),
             Node("b", "evse", "grid", 1e6, 1e6, link="sim", phases="L1"),
             Node("c", "evse", "grid", 1e6, 1e6, link="sim", phases="L2"))
    ports = tuple(Port(f"{e}.1", e, 7_400.0, 7_400.0) for e in "abc")
    return Site("phases", 1e-3, nodes, ports, rt=make_site(1).rt, control=Control(port_ramp_w_per_s=math.inf))


def run_phases(c, non_ev_a, cycles, t, meter=True):
    """The per-phase meter reads the non-EV currents plus what each port was given, on its phase."""
    phase_of = {"a.1": 0, "b.1": 0, "c.1": 1}
    for _ in range(cycles):
        snap = c.snapshot()
        ev_w = [0.0, 0.0, 0.0]
        for pid, w in zip(c.port_ids, snap.ports["setpoint_w"]):
            ev_w[phase_of[pid]] += float(w)
            c.measure(f"port/{pid}/power_w", float(w), t)
        phase_w = [a * 230.0 + w for a, w in zip(non_ev_a, ev_w)]
        c.measure("node/grid/power_w", sum(phase_w), t)
        if meter:
            for k, w in enumerate(phase_w):
                c.measure(f"node/grid/power_l{k + 1}_w", w, t)
        t += c.site.period_ns
        c.step(t)
    return t


def plugged_phase_controller(**kw):
    c = Controller(phase_site(**kw), clock="virtual")
    t = S
    c.step(t)
    for pid in c.port_ids:
        ev(max_charge_w=7_400.0, max_discharge_w=7_400.0, departure_in_s=8 * 3600).publish(c, pid, t)
    return c, t


def phase_currents(c):
    """The fleet's current per phase from its setpoints (L1: a and b, L2: c)."""
    w = dict(zip(c.port_ids, c.snapshot().ports["setpoint_w"]))
    return (w["a.1"] + w["b.1"]) / 230.0, w["c.1"] / 230.0


def test_a_phase_charges_only_what_its_non_ev_current_leaves():
    c, t = plugged_phase_controller()
    run_phases(c, (30.0, 5.0, 0.0), 6, t)                   # L1 carries 30 A of the building
    l1, l2 = phase_currents(c)
    assert l1 == pytest.approx(PHASE_LIMIT - 30.0)           # 10 A left on L1 for two ports
    assert l2 == pytest.approx(7_400.0 / 230.0)              # L2: its port at its rating (32 A < 35 A)
    snap = c.snapshot()
    row = snap.node("grid")
    assert (row["non_ev_l1_a"], row["non_ev_l2_a"], row["non_ev_l3_a"]) == pytest.approx((30.0, 5.0, 0.0))
    assert BINDINGS[row["binding"]] == "phase_current"
    assert snap.site["fleet_max_w"] == pytest.approx(10.0 * 230.0 + 7_400.0)


def test_a_phase_overload_is_relieved_by_the_ports_on_that_phase():
    c, t = plugged_phase_controller()
    run_phases(c, (50.0, 0.0, 0.0), 6, t)                   # L1 10 A over its limit
    l1, l2 = phase_currents(c)
    assert l1 == pytest.approx(-10.0)                        # exactly back to the limit on L1
    assert l2 >= 0.0                                         # L2 is not overloaded: it relieves nothing
    w = dict(zip(c.port_ids, c.snapshot().ports["setpoint_w"]))
    assert all(BINDINGS[b] in ("relief", "ev_limit", "rating") for b, pid in
               zip(c.snapshot().ports["binding"], c.port_ids) if w[pid] < 0)


def test_a_stale_phase_meter_assumes_all_non_ev_load_on_every_phase():
    c, t = plugged_phase_controller()
    t = run_phases(c, (20.0, 5.0, 5.0), 3, t)
    run_phases(c, (20.0, 5.0, 5.0), 6_000, t, meter=False)  # the per-phase values stop (> 5 s)
    # the total meter still reads 30 A x 230 V of non-EV load: each phase keeps 40 - 30 = 10 A
    l1, l2 = phase_currents(c)
    assert l1 == pytest.approx(10.0) and l2 == pytest.approx(10.0)
    assert math.isnan(c.snapshot().node("grid")["non_ev_l1_a"])


def test_without_phase_meters_the_limit_is_the_fleets_own():
    c, t = plugged_phase_controller(meter_phases=False)
    run_phases(c, (30.0, 5.0, 0.0), 6, t, meter=False)
    l1, _ = phase_currents(c)
    assert l1 == pytest.approx(PHASE_LIMIT)


@settings(max_examples=30)
@given(non_ev=st.tuples(*[st.floats(-20.0, 60.0)] * 3), setpoint=st.one_of(st.none(), st.floats(-20_000.0, 20_000.0)))
def test_property_phase_currents_stay_within_the_limit_where_the_fleet_can_keep_them(non_ev, setpoint):
    c, t = plugged_phase_controller()
    if setpoint is not None:
        assert c.submit({"kind": "setpoint", "id": "sp", "value_w": setpoint, "expires_in_s": 600})
    run_phases(c, non_ev, 6, t)
    l1, l2 = phase_currents(c)
    snap = c.snapshot()
    assert (snap.ports["setpoint_w"] >= snap.ports["min_w"] - 1e-6).all()
    assert (snap.ports["setpoint_w"] <= snap.ports["max_w"] + 1e-6).all()
    for fleet_a, load_a, reach_a in ((l1, non_ev[0], 2 * 7_400.0 / 230.0), (l2, non_ev[1], 7_400.0 / 230.0)):
        if load_a - reach_a <= PHASE_LIMIT:                  # discharge can bring it back: it must
            assert load_a + fleet_a <= PHASE_LIMIT + 1e-6
        else:                                                # it cannot: every port on it gives its all
            assert fleet_a == pytest.approx(-reach_a)
        assert load_a + fleet_a >= -PHASE_LIMIT - 1e-6        # the phase's export within the limit too


@pytest.mark.parametrize("meter_phases", [True, False])
def test_the_simulated_depot_keeps_every_phase_within_its_limit_only_with_phase_meters(meter_phases, tmp_path):
    """The packaged site with 200 A per phase at the grid, at noon (the building's unbalanced load
    near its peak, L1 the heaviest): the plant's own books count each phase's current."""
    from dataclasses import replace

    from v2g_rt import config
    from v2g_rt.sim.drive import plant_config, simulate

    site = config.load()
    site = replace(site, nodes=tuple(replace(n, phase_limit_a=200.0, meter_phases=meter_phases)
                                     if n.parent is None else n for n in site.nodes),
                   sections={**site.sections, "sim": replace(plant_config(site), start_hour=12.0)})
    books = simulate(site, 0.25, tmp_path, period_s=0.05, plot=False)
    if meter_phases:
        assert books["limit_violations"] == 0, books["violations_by_node"]
    else:      # the limit then binds the fleet alone, and the building's L1 load pushes past it
        assert books["violations_by_node"].get("grid/L1", 0) > 0
