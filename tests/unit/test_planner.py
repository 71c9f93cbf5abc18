"""The horizon planner and its guidance. Guidance orders the arbitration while fresh and never
moves a limit; stale, absent or torn guidance leaves the plain arbitration in charge; the planner's
solve runs in a worker process that a budget overrun or a kill cannot turn into a stalled loop or a
starved Python thread. Deadlines are in cycles of virtual time; the worker is a real process."""
import math
import os
import signal
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import MS, S, assert_within_limits, ev, make_site
from v2g_rt import Control, Controller, config, horizon
from v2g_rt._core import BINDINGS
from v2g_rt.services.planner import Arrivals, Planner, PlannerConfig, learn_taper, schedule_of, site_taper

PERIOD = 100 * MS


def controller(ports=4, taper_span=0.0, **kw):
    site = make_site(ports, period_s=0.1, grid_import_w=1e6, grid_export_w=1e6, transformer_w=1e6,
                     group_w=1e6, meter=False,
                     # taper_span 0 by default: the loop's own taper line would hide the planner's learning
                     control=Control(port_ramp_w_per_s=float("inf"), session_max_age_s=1e6, taper_span=taper_span),
                     **kw)
    ctrl = Controller(site, clock="virtual")
    ctrl.step(PERIOD)
    return ctrl


def plug(ctrl, **kw):
    for pid in ctrl.port_ids:
        ev(**kw).publish(ctrl, pid, ctrl.now_ns())


def charging(ports, setpoint_w=11_000):
    """ports EVs plugged in (without guidance each gets a share, the smallest battery the largest),
    a setpoint one of them can take, a second of cycles."""
    ctrl = controller(ports)
    for i, pid in enumerate(ctrl.port_ids):
        ev(capacity_wh=40_000 + 10_000 * i).publish(ctrl, pid, ctrl.now_ns())
    ctrl.submit({"id": "sp", "kind": "setpoint", "value_w": setpoint_w, "expires_in_s": 3600})
    run(ctrl, 1)
    return ctrl


def serving(ctrl):
    return [pid for pid, w in zip(ctrl.port_ids, ctrl.snapshot().ports["setpoint_w"]) if w > 1.0]


def run(ctrl, seconds):
    ctrl.run_steps(int(seconds * S / PERIOD), PERIOD)


def test_fresh_guidance_orders_the_ports_and_expired_guidance_is_ignored():
    ctrl = charging(4)
    plain = serving(ctrl)
    assert plain == list(ctrl.port_ids)                  # spread over all (water-filled)
    chosen = ctrl.port_ids[-1]                           # the largest battery: the smallest share
    ctrl.guide({chosen: 11_000.0}, ctrl.now_ns() + 10 * S, plan_id=7)
    ctrl.step(ctrl.now_ns() + PERIOD)                   # taken by the next cycle's read stage
    assert serving(ctrl) == [chosen]
    site = ctrl.snapshot().site
    assert site["guidance_fresh"] == 1 and site["guidance_id"] == 7
    assert ctrl.snapshot().port(chosen)["plan_w"] == 11_000.0
    run(ctrl, 10)                                        # past its expiry: the plain order again
    assert serving(ctrl) == plain
    assert ctrl.snapshot().site["guidance_fresh"] == 0
    assert np.isnan(ctrl.snapshot().port(chosen)["plan_w"])


def test_guidance_already_stale_when_written_changes_nothing():
    ctrl = charging(4)
    plain = ctrl.snapshot().ports["setpoint_w"]
    ctrl.guide({ctrl.port_ids[-1]: 11_000.0}, ctrl.now_ns(), plan_id=1)
    run(ctrl, 1)
    assert list(ctrl.snapshot().ports["setpoint_w"]) == list(plain)


def test_guidance_cannot_make_a_port_discharge_that_may_not():
    ctrl = controller(4)
    plug(ctrl, v2g=False)
    ctrl.submit({"id": "sp", "kind": "setpoint", "value_w": -20_000, "expires_in_s": 3600})
    ctrl.guide(np.full(4, -11_000.0), ctrl.now_ns() + 100 * S)
    run(ctrl, 1)
    assert (ctrl.snapshot().ports["setpoint_w"] >= 0).all()


def urgent_and_patient():
    """Port a urgent (laxity 155 s), port b patient, a setpoint one of them can take."""
    ctrl = controller(2)
    a, b = ctrl.port_ids
    ev(departure_in_s=6700, energy_request_wh=20_000).publish(ctrl, a, ctrl.now_ns())
    ev(departure_in_s=8 * 3600).publish(ctrl, b, ctrl.now_ns())
    ctrl.submit({"id": "sp", "kind": "setpoint", "value_w": 11_000, "expires_in_s": 3600})
    return ctrl, a, b


def test_guidance_does_not_outrank_an_urgent_ev_it_does_not_cover():
    ctrl, a, b = urgent_and_patient()
    ctrl.guide({b: 11_000.0}, ctrl.now_ns() + 100 * S)
    run(ctrl, 1)
    assert serving(ctrl) == [a]


def test_a_planned_port_gets_its_plan_and_the_rest_goes_to_the_others():
    ctrl = charging(4, setpoint_w=20_000)
    a, b = ctrl.port_ids[2:]
    ctrl.guide({a: 4_000.0, b: 6_000.0}, ctrl.now_ns() + 100 * S)
    run(ctrl, 1)
    w = dict(zip(ctrl.port_ids, ctrl.snapshot().ports["setpoint_w"]))
    assert w[a] == pytest.approx(4_000) and w[b] == pytest.approx(6_000)     # not their full 11 kW
    assert sum(w.values()) == pytest.approx(20_000)                          # the others take the rest
    assert BINDINGS[ctrl.snapshot().port(a)["binding"]] == "guidance"


def test_a_plan_short_of_the_setpoint_is_topped_up_on_the_planned_ports():
    ctrl = charging(2, setpoint_w=20_000)
    a, b = ctrl.port_ids
    ctrl.guide({a: 2_000.0, b: 2_000.0}, ctrl.now_ns() + 100 * S)
    run(ctrl, 1)
    w = ctrl.snapshot().ports["setpoint_w"]
    assert w.sum() == pytest.approx(20_000)                   # the plan was for less: both topped up
    assert (w <= 11_000 + 1e-6).all()


def test_an_urgent_ev_the_plan_covers_gets_what_the_plan_gives_it():
    # near its departure an EV is urgent; the planner weighed its departure energy against the
    # others' (and in a real battery the last percent comes slowly)
    ctrl, a, b = urgent_and_patient()
    ctrl.guide({a: 0.0, b: 11_000.0}, ctrl.now_ns() + 100 * S)
    run(ctrl, 1)
    assert serving(ctrl) == [b]
    run(ctrl, 100)                                       # the plan expired: the plain fill serves both
    assert serving(ctrl) == [a, b]


def behind_schedule(draws_reserve):
    """Two V2G EVs both short of their departure energy (their guard forbids any export), an
    export setpoint of 5 kW; setpoint_draws_reserve as given."""
    site = make_site(2, period_s=0.1, grid_import_w=1e6, grid_export_w=1e6, transformer_w=1e6, group_w=1e6,
                     meter=False, control=Control(port_ramp_w_per_s=float("inf"), session_max_age_s=1e6,
                                                  setpoint_draws_reserve=draws_reserve))
    ctrl = Controller(site, clock="virtual")
    ctrl.step(PERIOD)
    plug(ctrl, soc=0.5, departure_in_s=3600, energy_request_wh=30_000)
    ctrl.submit({"id": "sp", "kind": "setpoint", "value_w": -5_000, "expires_in_s": 3600})
    run(ctrl, 1)
    return ctrl


def test_a_planned_export_draws_on_that_ports_reserve_only_where_the_operator_allows_it():
    ctrl = behind_schedule(True)
    assert ctrl.snapshot().ports["setpoint_w"] == pytest.approx([-2_500, -2_500])   # unguided: alike
    a, b = ctrl.port_ids
    ctrl.guide({a: -5_000.0, b: 0.0}, ctrl.now_ns() + 100 * S)
    run(ctrl, 1)
    snap = ctrl.snapshot()
    assert snap.ports["setpoint_w"] == pytest.approx([-5_000, 0])        # the plan chose who gives it
    assert (snap.ports["min_w"] == 0).all()                              # from its reserve
    ctrl.guide({a: -20_000.0, b: 0.0}, ctrl.now_ns() + 100 * S)        # more than the setpoint: no more
    run(ctrl, 1)
    assert ctrl.snapshot().ports["setpoint_w"].sum() == pytest.approx(-5_000)
    kept = behind_schedule(False)
    kept.guide({a: -5_000.0, b: 0.0}, kept.now_ns() + 100 * S)
    run(kept, 1)
    assert (kept.snapshot().ports["setpoint_w"] == 0).all()               # the guard holds: no export


@settings(max_examples=40)
@given(plan=st.lists(st.one_of(st.floats(-2e4, 2e4), st.just(math.nan)), min_size=12, max_size=12),
       setpoint=st.floats(-150_000, 150_000), import_w=st.floats(0, 100_000))
def test_any_guidance_keeps_every_limit(plan, setpoint, import_w):
    site = make_site(12, period_s=0.1, grid_import_w=import_w, meter=False,
                     control=Control(port_ramp_w_per_s=float("inf"), session_max_age_s=1e6))
    ctrl = Controller(site, clock="virtual")
    ctrl.step(PERIOD)
    for i, pid in enumerate(ctrl.port_ids):
        ev(departure_in_s=3600 * (1 + i), soc=0.3 + 0.05 * i, v2g=i % 3 != 0).publish(ctrl, pid, PERIOD)
    ctrl.submit({"id": "sp", "kind": "setpoint", "value_w": setpoint, "expires_in_s": 3600})
    ctrl.guide(np.array(plan), ctrl.now_ns() + 100 * S)
    run(ctrl, 1)
    assert_within_limits(ctrl)
    snap = ctrl.snapshot()
    assert snap.site["guidance_fresh"] == 1
    assert abs(snap.site["fleet_target_w"] - max(min(setpoint, snap.site["fleet_max_w"]), snap.site["fleet_min_w"])) < 1.0


# ------------------------------------------------------------------ the horizon LP

def small_fleet():
    cap = np.array([60e3, 40e3, 80e3])
    return horizon.Fleet(np.arange(3), cap * 0.5, cap, cap * 0.2, np.array([20e3, 10e3, 30e3]),
                         np.array([4 * 3600.0, 2 * 3600.0, np.nan]), np.full(3, 11e3), np.array([11e3, 0, 11e3]))


def test_the_lp_tracks_a_feasible_schedule_and_keeps_each_ev_in_its_bounds():
    step = horizon.steps(0.0, 900.0, 6 * 3600.0)
    sp = np.full(len(step), np.nan)
    sp[:4] = 15_000.0
    sp[8:10] = -5_000.0
    sched = horizon.Schedule(step, sp, np.full(len(step), 1e6), np.full(len(step), 1e6), 0.0)
    solver = horizon.Solver()
    plan = solver.solve(small_fleet(), sched, 10.0)
    assert plan.status == "Optimal" and not plan.warm
    assert plan.tracking_kwh < 1e-6
    assert abs(plan.plan_w.sum() - 15_000.0) < 1e-3
    assert plan.plan_w[1] >= 0                           # no V2G: never planned to discharge
    again = solver.solve(small_fleet(), sched, 10.0)     # same shape: from the last basis
    assert again.warm and again.extra["iterations"] <= plan.extra["iterations"]


def random_fleet(n, seed=0):
    rng = np.random.default_rng(seed)
    cap = rng.uniform(40e3, 80e3, n)
    return horizon.Fleet(np.arange(n), cap * 0.3, cap, cap * 0.1, cap * 0.4, rng.uniform(1, 20, n) * 3600,
                         np.full(n, 11e3), np.full(n, 11e3))


def test_every_solve_gets_its_own_budget():
    # HiGHS counts time_limit from an instance's first run: on one kept instance a small model
    # given half the time a big one took before would end at once, out of time
    step = horizon.steps(0.0, 900.0, 86400.0)
    sched = horizon.Schedule(step, np.full(len(step), 60e3), np.full(len(step), 1e6), np.full(len(step), 1e6))
    solver = horizon.Solver()
    took = solver.solve(random_fleet(80), sched, 60.0).solve_s
    small = horizon.Schedule(step[:8], np.full(8, 15e3), np.full(8, 1e6), np.full(8, 1e6))
    assert solver.solve(small_fleet(), small, took / 2).status == "Optimal"


def test_steps_end_on_multiples_of_the_step():
    assert list(horizon.steps(100.0, 900.0, 3600.0)) == [800.0, 900.0, 900.0, 900.0, 900.0]
    assert list(horizon.steps(1800.0, 900.0, 1800.0)) == [900.0, 900.0]


def test_an_export_window_known_ahead_charges_the_ev_that_can_give_it_first():
    ctrl = controller(2)
    a, b = ctrl.port_ids
    ev(soc=0.2, min_soc=0.2, v2g=True, departure_in_s=12 * 3600, energy_request_wh=20_000).publish(ctrl, a, ctrl.now_ns())
    ev(soc=0.2, min_soc=0.2, v2g=False, departure_in_s=12 * 3600, energy_request_wh=20_000).publish(ctrl, b, ctrl.now_ns())
    now = ctrl.now_ns()
    ctrl.submit({"id": "now", "kind": "setpoint", "value_w": 11_000, "expires_ns": now + 3600 * S})
    run(ctrl, 1)
    now = ctrl.now_ns()
    cfg = PlannerConfig(horizon_s=12 * 3600.0)
    window = [{"kind": "setpoint", "value_w": -11_000.0, "starts_ns": now + 3600 * S, "expires_ns": now + 7200 * S},
              {"kind": "setpoint", "value_w": 5_500.0, "starts_ns": now + 7200 * S, "expires_ns": now + 6 * 3600 * S}]
    sched = schedule_of(ctrl.snapshot(), now, cfg, 0.0, window)
    start_s = np.concatenate([[0.0], np.cumsum(sched.step_s)[:-1]])
    assert (sched.setpoint_w[(start_s >= 3600) & (start_s < 7200 - 900)] == -11_000).all()
    plan = horizon.Solver().solve(planner_for(ctrl).fleet(ctrl.snapshot()), sched, 10.0)
    assert plan.status == "Optimal" and plan.tracking_kwh < 0.01     # the window's first second is past
    assert plan.plan_w[0] == pytest.approx(11_000) and plan.plan_w[1] == pytest.approx(0, abs=1e-6)
    blind = horizon.Solver().solve(planner_for(ctrl).fleet(ctrl.snapshot()), schedule_of(ctrl.snapshot(), now, cfg, 0.0), 10.0)
    assert blind.plan_w[0] < 11_000 - 1                # not knowing the window, it would not



def test_with_arrivals_expected_an_ev_present_charges_now_instead_of_waiting_for_the_future():
    # A (64 kWh, leaving in an hour) is short whatever it gets; B (12 kWh, staying 10 h) wants 2 kWh.
    # A known 1 kW for 9 h after the first hour is more than B can take. Without arrivals the plan
    # keeps B's room for it and gives A everything now; with EVs expected to arrive and take it
    # from 2 h on (at more points per kWh than A's), B keeps room only for the hour before that
    fleet = horizon.Fleet(np.arange(2), np.array([40e3, 10e3]), np.array([64e3, 12e3]), np.zeros(2),
                          np.array([24e3, 2e3]), np.array([3600.0, 10 * 3600.0]), np.array([11e3, 3.6e3]), np.zeros(2))
    step = horizon.steps(0.0, 900.0, 10 * 3600.0)
    sp = np.where(np.arange(len(step)) < 4, 8_000.0, 1_000.0)
    sched = horizon.Schedule(step, sp, np.full(len(step), 1e6), np.full(len(step), 1e6))
    alone = horizon.Solver().solve(fleet, sched, 10.0)
    assert alone.status == "Optimal" and alone.plan_w == pytest.approx([8_000.0, 0.0], abs=1e-6)
    sched.arrivals_w, sched.arrivals_worth, sched.arrivals_from_s = 3_000.0, 5.0, 2 * 3600.0
    shared = horizon.Solver().solve(fleet, sched, 10.0)
    assert shared.status == "Optimal"
    # B takes a kWh of A's first hour (A short by 16 kWh alone, 17 so), the other in the second
    assert (alone.shortfall_kwh, shared.shortfall_kwh) == pytest.approx((16.0, 17.0))
    assert shared.plan_w.sum() == pytest.approx(8_000.0)      # arrivals never take the present step ...
    assert shared.tracking_kwh < 1e-6                          # ... and B keeps room for the second hour
    sched.arrivals_from_s = 10 * 3600.0                        # none within the horizon
    assert horizon.Solver().solve(fleet, sched, 10.0).plan_w == pytest.approx([8_000.0, 0.0], abs=1e-6)


def test_arrivals_are_what_evs_connected_lately_asked_for_and_are_forgotten_after_the_window():
    ctrl = controller(4)
    arrivals = Arrivals(window_s=4 * 3600.0)
    ratings = [p.rating_charge_w for p in ctrl.site.ports]
    arrivals.see(ctrl.snapshot(), ctrl.now_ns(), ratings)
    assert arrivals.expected() == (0.0, 0.0)                                 # none seen yet
    a, b = ctrl.port_ids[:2]
    ev(soc=0.5, capacity_wh=60_000, energy_request_wh=20_000).publish(ctrl, a, ctrl.now_ns())
    ev(soc=0.5, capacity_wh=20_000, energy_request_wh=10_000).publish(ctrl, b, ctrl.now_ns())
    run(ctrl, 1)
    t = ctrl.now_ns() + 3600 * S - PERIOD * 10                               # an hour after the first look
    arrivals.see(ctrl.snapshot(), t, ratings)
    w, worth = arrivals.expected()
    assert w == pytest.approx(30_000.0 / 4)                                  # 30 kWh asked, over the 4 h window
    assert worth == pytest.approx((20 * 100 / 60 + 10 * 100 / 20) / 30)     # both can fill up: 100 / capacity
    arrivals.see(ctrl.snapshot(), t + 2 * 3600 * S, ratings)                 # nobody new: the same EVs
    assert arrivals.expected()[0] == pytest.approx(30_000.0 / 4)
    arrivals.see(ctrl.snapshot(), t + 5 * 3600 * S, ratings)
    assert arrivals.expected() == (0.0, 0.0)


def test_the_lp_never_discharges_one_ev_into_another():
    # the loop moves the fleet one way at a time: a plan trading energy between EVs is one it
    # cannot follow. EV 0 (V2G, full) could give EV 1 (leaving in an hour, short) what the
    # schedule (0 W for 2 h) does not
    cap = np.full(2, 60e3)
    fleet = horizon.Fleet(np.arange(2), cap * np.array([0.9, 0.2]), cap, cap * 0.1, np.array([0.0, 10e3]),
                          np.array([8 * 3600.0, 3600.0]), np.full(2, 11e3), np.array([11e3, 0.0]))
    step = horizon.steps(0.0, 900.0, 2 * 3600.0)
    sched = horizon.Schedule(step, np.zeros(len(step)), np.full(len(step), 1e6), np.full(len(step), 1e6))
    plan = horizon.Solver().solve(fleet, sched, 10.0)
    assert plan.status == "Optimal"
    assert plan.plan_w == pytest.approx([0.0, 0.0], abs=1e-6)
    assert plan.shortfall_kwh == pytest.approx(10.0)


def test_a_learned_taper_bounds_what_the_lp_plans_for_an_ev():
    cap = np.full(2, 60e3)
    fleet = horizon.Fleet(np.arange(2), cap * 0.9, cap, cap * 0.1, cap * 0.1, np.full(2, 8 * 3600.0),
                          np.full(2, 11e3), np.zeros(2), taper=np.array([0.5, np.nan]))
    step = horizon.steps(0.0, 900.0, 8 * 3600.0)
    sp = np.full(len(step), np.nan)
    sp[0] = 6_000.0
    plan = horizon.Solver().solve(fleet, horizon.Schedule(step, sp, np.full(len(step), 1e6), np.full(len(step), 1e6)), 10.0)
    assert plan.status == "Optimal" and plan.tracking_kwh < 1e-6
    room_wh = 6_000.0
    assert plan.plan_w[0] <= room_wh * (1 - math.exp(-0.5 * 0.25)) / 0.25 + 1e-3    # 2.94 kW of room left
    assert plan.plan_w.sum() == pytest.approx(6_000.0)                              # the other takes the rest


def test_the_planner_learns_a_taper_from_an_ev_that_takes_less_than_given_and_forgets_it():
    ctrl = controller(2)
    a, b = ctrl.port_ids
    ctrl.submit({"id": "sp", "kind": "setpoint", "value_w": 22_000, "expires_in_s": 3600})

    def took(wa, wb=11_000.0):
        ev(soc=0.9, capacity_wh=60_000).publish(ctrl, a, ctrl.now_ns(), power_w=wa)
        ev(soc=0.5, capacity_wh=60_000).publish(ctrl, b, ctrl.now_ns(), power_w=wb)
        run(ctrl, 0.2)
        return ctrl.snapshot()

    took(11_000.0)
    snap = took(3_000.0)
    assert snap.ports["given_w"] == pytest.approx([11_000.0, 11_000.0])
    taper = np.full(2, np.nan)
    seen = learn_taper(taper, snap, 0.25)
    assert taper[0] == pytest.approx(math.log1p(750 / 6_000) / 0.25)     # 6 kWh of room left after 0.75 kWh
    assert seen == pytest.approx([taper[0] * 60_000 / 11_000])            # in the EV's own scale
    assert np.isnan(taper[1])                                              # took all it was given
    learn_taper(taper, took(10_990.0), 0.25)
    assert np.isnan(taper[0])                   # it took what it was given: the estimate goes
    snap = took(3_000.0, 500.0)
    learn_taper(taper, snap, 0.25)
    assert np.isnan(taper[1])                   # 500 W at half full is no CC-CV taper: not learned
    ctrl.measure(f"port/{a}/connected", 0.0)
    run(ctrl, 1)
    learn_taper(taper, ctrl.snapshot(), 0.25)
    assert np.isnan(taper[0])                   # gone with its EV


def test_an_ev_not_seen_tapering_gets_a_slow_taper_of_those_seen_at_the_site():
    ctrl = controller(2)
    ev(capacity_wh=60_000, max_charge_w=11_000).publish(ctrl, ctrl.port_ids[0], ctrl.now_ns())
    ev(capacity_wh=30_000, max_charge_w=7_000).publish(ctrl, ctrl.port_ids[1], ctrl.now_ns())
    run(ctrl, 1)
    own = np.array([0.7, np.nan])
    assert site_taper(own, [4.0, 6.0], ctrl.snapshot(), 0.2) == pytest.approx([0.7, 4.5 * 7_000 / 30_000])   # 25th pct
    # none seen yet: the loop's taper_span 0.2, a knee at 80 % SoC (at full power the EV fills
    # 1/5 of its capacity an hour)
    assert site_taper(own, [], ctrl.snapshot(), 0.2) == pytest.approx([0.7, 5.0 * 7_000 / 30_000])
    assert np.isnan(site_taper(own, [], ctrl.snapshot(), 0.0)[1])      # taper_span 0: none until seen


def test_an_ev_that_left_shows_its_taper_in_its_last_interval():
    # the charger's closing meter reading: port a's EV (60 kWh at 90 %, 11 kW announced) took
    # 3 kW of 11 kW over its last quarter hour and left; port b's took what it was given
    ctrl = controller(2)
    a, b = ctrl.port_ids
    ctrl.submit({"id": "sp", "kind": "setpoint", "value_w": 22_000, "expires_in_s": 3600})
    for pid in (a, b):
        ev(soc=0.9, capacity_wh=60_000).publish(ctrl, pid, ctrl.now_ns(), power_w=11_000.0)
    run(ctrl, 0.2)
    p = ctrl.snapshot().ports
    before = (p["soc"].copy(), p["capacity_wh"].copy(), p["ev_max_charge_w"].copy())
    ctrl.measure(f"port/{a}/connected", 0.0)
    ctrl.measure(f"port/{a}/power_w", 3_000.0)
    ev(soc=0.9, capacity_wh=60_000).publish(ctrl, b, ctrl.now_ns(), power_w=11_000.0)
    ctrl.step(ctrl.now_ns() + PERIOD)                   # the cycle that takes them, as the planner sees it
    snap = ctrl.snapshot()
    assert snap.ports["connected"][0] == 0 and snap.ports["given_w"][0] == pytest.approx(11_000)
    taper = np.full(2, np.nan)
    seen = learn_taper(taper, snap, 0.25, before)
    rate = math.log(6_000 / (6_000 - 750)) / 0.25                       # 6 kWh of room, 0.75 kWh taken
    assert seen == pytest.approx([rate * 60_000 / 11_000])
    assert np.isnan(taper).all()                                         # the site's, not a port's
    assert learn_taper(np.full(2, np.nan), snap, 0.25).size == 0        # without the ports before: nothing


# ------------------------------------------------------------------ the service

def planner_for(ctrl, **kw):
    return Planner(ctrl, PlannerConfig(**{"plan_interval_s": 60.0, "horizon_s": 6 * 3600.0, "step_s": 900.0,
                                          "time_budget_s": 5.0, **kw}))


def test_the_planner_hands_a_plan_the_loop_follows_and_replans_only_when_due():
    ctrl = charging(4)
    planner = planner_for(ctrl)
    try:
        assert planner.plan_if_due(ctrl.now_ns())
        ctrl.step(ctrl.now_ns() + PERIOD)
        snap = ctrl.snapshot()
        assert snap.site["guidance_fresh"] == 1
        assert np.nansum(snap.ports["plan_w"]) == pytest.approx(11_000, abs=1)
        assert planner.stats()["solves"] == 1 and planner.stats()["last_status"] == "Optimal"
        assert planner.stats()["arrivals_expected_w"] == 0              # EVs there at the first look did not arrive
        assert not planner.plan_if_due(ctrl.now_ns() + 10 * S)          # nothing changed
        assert planner.plan_if_due(ctrl.now_ns() + 61 * S)              # plan_interval_s passed
    finally:
        planner.worker.kill()


def test_a_worker_killed_mid_solve_costs_guidance_not_control():
    ctrl = charging(4)
    plain = serving(ctrl)
    planner = planner_for(ctrl, guidance_ttl_s=10.0)
    try:
        planner.plan_if_due(ctrl.now_ns())
        pid = planner.worker.pid
        os.kill(pid, signal.SIGSTOP)                    # the next solve hangs ...
        threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()    # ... and its worker dies
        assert planner.plan(planner.fleet(ctrl.snapshot()), schedule_of(ctrl.snapshot(), ctrl.now_ns(), planner.cfg, 0.0),
                            ctrl.now_ns()) is None
        assert planner.failures == 1
        run(ctrl, 11)                                   # the last guidance expires: the plain order
        assert ctrl.snapshot().site["guidance_fresh"] == 0 and serving(ctrl) == plain
        assert planner.plan_if_due(ctrl.now_ns() + 61 * S)              # a new worker takes over
        assert planner.worker.pid not in (None, pid) and planner.solves == 2
    finally:
        planner.worker.kill()


def test_a_solve_past_its_budget_is_killed_while_other_threads_keep_running():
    ctrl = controller(4)
    plug(ctrl)
    run(ctrl, 1)
    planner = planner_for(ctrl, time_budget_s=0.2)
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    try:
        planner.plan_if_due(ctrl.now_ns())
        os.kill(planner.worker.pid, signal.SIGSTOP)    # a solve that never ends
        counter = threading.Thread(target=count)
        counter.start()
        t0 = time.monotonic()
        assert planner.plan(planner.fleet(ctrl.snapshot()), schedule_of(ctrl.snapshot(), ctrl.now_ns(), planner.cfg, 0.0),
                            ctrl.now_ns()) is None
        waited = time.monotonic() - t0
        done.set()
        counter.join()
        assert planner.killed == 1 and planner.worker.pid is None
        assert len([t for t in ticks if t0 <= t <= t0 + waited]) > waited / 0.01 / 4    # not starved
    finally:
        done.set()
        planner.worker.kill()


def test_a_budget_too_short_for_the_lp_gives_no_guidance():
    ctrl = controller(4)
    plug(ctrl)
    run(ctrl, 1)
    planner = planner_for(ctrl, time_budget_s=1e-6)
    try:
        planner.plan_if_due(ctrl.now_ns())
        ctrl.step(ctrl.now_ns() + PERIOD)
        assert planner.over_budget == 1 and planner.stats()["last_status"] == "Time limit reached"
        assert ctrl.snapshot().site["guidance_fresh"] == 0
    finally:
        planner.worker.kill()


def test_planner_section_is_checked():
    base = ('[site]\nname = "p"\n[node.grid]\nkind = "grid"\nimport_limit_w = 1e5\nexport_limit_w = 1e5\n'
            '[node.e1]\nkind = "evse"\nparent = "grid"\nport_max_charge_w = 11000\n')
    site = config.parse(base + "[planner]\nplan_interval_s = 30\nstep_s = 600\n", "p.toml")
    assert site.sections["planner"] == PlannerConfig(True, 30.0, 86400.0, 600.0, 10.0, 90.0)
    with pytest.raises(config.ConfigError, match="planner.*step_s"):
        config.parse(base + "[planner]\nstep_s = 1\n", "p.toml")
    with pytest.raises(config.ConfigError, match="planner.*solver"):
        config.parse(base + "[planner]\nsolver = 1\n", "p.toml")
