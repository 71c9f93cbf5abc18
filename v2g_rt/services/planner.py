"""The horizon planner: a service that solves the schedule ahead (v2g_rt.horizon, an LP with
HiGHS) over the connected EVs and the known schedule, and hands the loop per-port guidance with an
expiry (Controller.guide). The loop orders its arbitration by fresh guidance inside every limit and
arbitrates plainly once it expires, so a late, slow or dead planner costs optimality, never safety.

The solve runs in a worker process: no solve, however long, can hold the GIL the watchdog and the
other services need, and one that outlives its budget (plus a grace) is killed and the worker
started again. The service replans when the fleet or the schedule changes, when a plan step
begins, and at least every plan_interval_s.
"""
from __future__ import annotations

import collections
import logging
import math
import multiprocessing
import time
from dataclasses import dataclass

import numpy as np

from .. import horizon
from . import Service

SECTION = "planner"
TICK_S = 1.0                  # how often the service looks at the snapshot
KILL_GRACE_S = 2.0            # past its budget a solve gets this long before its worker is killed
START_TIMEOUT_S = 30.0        # a new worker's first answer (imports numpy and highspy)
DEPARTURE_QUANTUM_S = 300.0   # departures that move less than this are the same fleet
TAPER_SEEN = 0.985            # an EV taking less than this share of what it is given is in its taper ...
TAPER_GONE = 0.995            # ... and one taking this share of it is not (its estimate was too low)
TAPER_HISTORY = 256           # tapers seen at this site, kept for EVs not yet seen tapering ...
TAPER_PRIOR_MIN = 1           # ... once one was seen
TAPER_PRIOR_PCT = 25.0        # the prior: this percentile of them (the slower tapers)
ARRIVALS_WINDOW_S = 4 * 3600.0  # arrivals over this long past say what EVs not yet here will take ...
ARRIVALS_FROM_S = 2 * 3600.0    # ... from this far ahead: the EVs present keep room for what comes sooner

log = logging.getLogger("v2g_rt")


@dataclass(frozen=True)
class PlannerConfig:
    enabled: bool = True
    plan_interval_s: float = 60.0
    horizon_s: float = 86400.0
    step_s: float = 900.0
    time_budget_s: float = 10.0
    guidance_ttl_s: float = 180.0


def check_config(cf, site) -> PlannerConfig:
    sec = cf.section(SECTION)
    interval = sec.get_float("plan_interval_s", 60.0, minval=1.0, maxval=86400.0, unit="s")
    step = sec.get_float("step_s", 900.0, minval=60.0, maxval=86400.0, unit="s")
    horizon_s = sec.get_float("horizon_s", 86400.0, minval=step, maxval=7 * 86400.0, unit="s")
    if horizon_s / step > 2000:
        sec.problem("horizon_s", f"expected at most 2000 steps of step_s = {step:g} s, found {horizon_s / step:.0f}")
    return PlannerConfig(sec.get_bool("enabled", True), interval, horizon_s, step,
                         sec.get_float("time_budget_s", 10.0, above=0, maxval=600.0, unit="s"),
                         sec.get_float("guidance_ttl_s", 3 * interval, minval=1.0, maxval=86400.0, unit="s"))


def _worker_main(conn) -> None:
    """The worker process: solve each (fleet, schedule, budget) it is sent, warm-starting from the last."""
    solver = horizon.Solver()
    conn.send("ready")
    while True:
        try:
            fleet, sched, budget = conn.recv()
        except EOFError:
            return
        conn.send(solver.solve(fleet, sched, budget))


class Worker:
    """The solver's process, started on first use and killed when it overstays."""

    def __init__(self):
        self.proc = None
        self.conn = None
        self.starts = 0

    def solve(self, fleet, sched, budget_s: float) -> horizon.Plan | str:
        """The plan, or why there is none: "timeout" (the worker was killed) or "died"."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
            if not self._wait(START_TIMEOUT_S):
                self.kill()
                return "timeout"
            if self.conn.recv() != "ready":
                self.kill()
                return "died"
        try:
            self.conn.send((fleet, sched, budget_s))
            if not self._wait(budget_s + KILL_GRACE_S):
                self.kill()
                return "timeout"
            return self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            return "died"

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")      # a fresh interpreter: no fork of our threads
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), name="v2g-planner-worker", daemon=True)
        self.proc.start()
        child.close()
        self.starts += 1

    def _wait(self, timeout_s: float) -> bool:
        try:
            return self.conn.poll(timeout_s)           # waits without the GIL
        except (EOFError, OSError):
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(5.0)
            self.conn.close()
        self.proc = self.conn = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.is_alive() else None


def fleet_of(snap, rating_charge_w, rating_discharge_w, taper=None) -> horizon.Fleet:
    """The connected EVs as the snapshot shows them: what they announce, within their port's
    rating (the loop's envelope now says what they may do this minute, not over the day), and
    per port the taper learned from what it took (learn_taper; NaN: none seen); a port whose SoC
    or capacity is unknown, or that is faulted, is not planned."""
    p = snap.ports
    ok = (p["connected"] & (p["faults"] == 0) & np.isfinite(p["soc"]) & np.isfinite(p["capacity_wh"])
          & (p["capacity_wh"] > 0))
    idx = np.flatnonzero(ok)
    cap = p["capacity_wh"][idx]
    request = np.nan_to_num(p["energy_request_wh"][idx], nan=0.0)
    charge = np.fmin(np.asarray(rating_charge_w)[idx], p["ev_max_charge_w"][idx])
    discharge = np.where(p["v2g"][idx], np.fmin(np.asarray(rating_discharge_w)[idx], p["ev_max_discharge_w"][idx]), 0.0)
    return horizon.Fleet(idx, p["soc"][idx] * cap, cap, np.nan_to_num(p["min_soc"][idx]) * cap,
                         np.maximum(request, 0.0), p["departure_in_s"][idx].astype(float),
                         np.maximum(charge, 0.0), np.maximum(discharge, 0.0),
                         None if taper is None else np.asarray(taper, float)[idx])


def learn_taper(taper, snap, hours: float, before=None) -> np.ndarray:
    """Update each port's taper estimate (1/h, in place) from what it took over the last `hours`
    of what the loop gave it (given_w: the setpoint its measured power answers). An EV that took
    clearly less than given is in its taper: power = taper x room left, so over h hours
    the room fell from room + taken to room, taper = ln((room + taken) / room) / h. One that took
    about its plan is not bounded that low: its estimate goes. A port that is not connected has none.
    Returns the tapers just seen in the EVs' own scale (taper x capacity / announced power: the
    inverse of the room, in hours of full power, below which an EV tapers).
    before: the ports' soc, capacity_wh and ev_max_charge_w `hours` ago (snapshot fields): an EV
    that left since then and whose charger reported the power of its last interval (a session's
    closing meter reading) shows its taper too, where EVs taper the most: in the last step
    before leaving, near full. It adds to the site's tapers only."""
    p = snap.ports
    gone = ~p["connected"].astype(bool)
    taper[gone] = np.nan
    took = np.nan_to_num(p["measured_w"], nan=-1.0)
    with np.errstate(invalid="ignore"):
        given = p["given_w"]
        short = (took > 0) & (took < TAPER_SEEN * given)
        taper[(took >= TAPER_GONE * given) & (given > 0) & ~gone] = np.nan
    if hours <= 0 or not short.any():
        return np.zeros(0)
    soc, cap, most = p["soc"].copy(), p["capacity_wh"].copy(), p["ev_max_charge_w"].copy()
    left = short & gone
    if before is not None and left.any():
        b_soc, b_cap, b_most = before
        # its room at the end of the interval: the room it had less what it took
        soc[left] = b_soc[left] + took[left] * hours / b_cap[left]
        cap[left], most[left] = b_cap[left], b_most[left]
    with np.errstate(invalid="ignore", divide="ignore"):
        room = (1.0 - soc) * cap
        ok = short & (room > 1e-3)
        rate = np.log1p(took * hours / room) / hours
        scale = rate * cap / most
    # a CC-CV taper starts at some SoC below full, so at its start the EV takes its full power
    # with room / capacity left: scale >= 1. Below that the EV took less for another reason
    # (a limit of its own): no taper is learned from it
    ok &= np.isfinite(scale) & (scale >= 1.0)
    taper[ok & ~gone] = rate[ok & ~gone]
    return scale[ok]


def site_taper(taper, seen, snap, span: float) -> np.ndarray:
    """Each port's own taper, or for an EV not yet seen tapering the TAPER_PRIOR_PCT percentile of
    those seen at this site (in the EV's scale: its announced power and capacity), once
    TAPER_PRIOR_MIN were seen: a site learns from its own measurements how EVs near full take less
    than they announce. Before that, the loop's configured one ([control] taper_span, the SoC span
    of the taper below full: at full power at its knee, taper x capacity / power = 1 / span;
    0: none)."""
    p = snap.ports
    if len(seen) >= TAPER_PRIOR_MIN:
        scale = float(np.percentile(seen, TAPER_PRIOR_PCT))
    else:
        scale = 1.0 / span if span > 0.0 else math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        prior = scale * p["ev_max_charge_w"] / p["capacity_wh"]
    return np.where(np.isfinite(taper), taper, np.where(np.isfinite(prior) & (prior > 0), prior, np.nan))


def schedule_of(snap, now_ns: int, cfg: PlannerConfig, default_w: float, commands=()) -> horizon.Schedule:
    """The schedule known now. Setpoints: the active one until its expiry, and each of `commands`
    (the grid commands the loop holds, Controller.scheduled(): kind, value_w, starts_ns,
    expires_ns; active, queued, or sent and not yet taken) in the steps it covers for the most part; after the last known one the fleet is assumed to get
    nothing (a future nobody announced is not spent: the plan then shares what is known as the
    loop's own order would, and looks further only as far as the operator does), or the default
    profile when no setpoint is known. Limits: the fleet's headroom at the root as it is now, cut
    in their windows by known import and export limits and load sheds."""
    step_s = horizon.steps(now_ns / 1e9, cfg.step_s, cfg.horizon_s)
    start = now_ns + np.concatenate([[0.0], np.cumsum(step_s)[:-1]]) * 1e9
    end = start + step_s * 1e9
    site = snap.site
    root = snap.nodes[0]
    imp = np.full(len(step_s), max(float(root["import_headroom_w"]), 0.0))
    exp_ = np.full(len(step_s), 0.0 if site["safe_state"] else max(float(root["export_headroom_w"]), 0.0))
    if math.isfinite(site["load_shed_w"]):
        imp = np.minimum(imp, site["load_shed_w"])
    known = list(commands)
    if math.isfinite(site["setpoint_w"]):
        known.insert(0, {"kind": "setpoint", "value_w": site["setpoint_w"], "starts_ns": now_ns,
                         "expires_ns": site["setpoint_expires_ns"]})
    sp = np.full(len(step_s), np.nan)
    last = None
    for c in known:
        cover = (np.minimum(end, c["expires_ns"]) - np.maximum(start, c["starts_ns"])) / (end - start)
        inside = cover > 0.5
        if c["kind"] == "setpoint":
            sp[inside] = c["value_w"]
            if inside.any() and (last is None or c["expires_ns"] > last[1]):
                last = (c["value_w"], c["expires_ns"])
        elif c["kind"] in ("import_limit", "load_shed"):
            imp[cover > 0] = np.minimum(imp[cover > 0], c["value_w"])
        elif c["kind"] == "export_limit":
            exp_[cover > 0] = np.minimum(exp_[cover > 0], c["value_w"])
    if last is not None:
        imp[start >= last[1]] = 0.0
    return horizon.Schedule(step_s, sp, imp, exp_, default_w)


class Arrivals:
    """What EVs arriving lately asked for: the power and the worth per kWh (horizon.worth) the
    plan expects of the EVs not yet connected, from ARRIVALS_FROM_S ahead. A known future
    setpoint is then not kept for the EVs present: over a public site's day, later arrivals take
    it, and an EV that could have charged now would wait for energy that goes to them (EV2Gym
    PublicPST, schedule known ahead, seed 3: a 12 kWh EV got nothing in 11 hours). The next hours
    are still the present EVs' to track: at the end of a day nobody arrives to take them."""

    def __init__(self, window_s: float = ARRIVALS_WINDOW_S):
        self.window_ns = int(window_s * 1e9)
        self.seen = collections.deque(maxlen=4096)  # (t_ns, kWh asked, worth per kWh)
        self.connected = None

    def see(self, snap, now_ns: int, rating_charge_w) -> None:
        """Note the EVs connected since the last look, with what they asked for on arrival."""
        p = snap.ports
        now = p["connected"].astype(bool)
        if self.connected is not None:
            new = np.flatnonzero(now & ~self.connected & np.isfinite(p["soc"]) & np.isfinite(p["capacity_wh"]))
            if new.size:
                cap = p["capacity_wh"][new] / 1000.0
                asked = np.maximum(np.nan_to_num(p["energy_request_wh"][new]), 0.0) / 1000.0
                charge = np.fmin(np.asarray(rating_charge_w)[new], p["ev_max_charge_w"][new]) / 1000.0
                dep = np.nan_to_num(p["departure_in_s"][new].astype(float), nan=np.inf)
                w = horizon.worth(p["soc"][new] * cap, cap, np.nan_to_num(charge), dep)
                self.seen.extend(zip([now_ns] * new.size, asked, w))
        self.connected = now
        while self.seen and self.seen[0][0] < now_ns - self.window_ns:
            self.seen.popleft()

    def expected(self) -> tuple[float, float]:
        """(W, points per kWh) the EVs not yet here will take; (0, 0) before any was seen. Over the
        whole window even before it has passed: one EV a minute after a start is not 60 an hour."""
        kwh = sum(a for _, a, _ in self.seen)
        if kwh <= 0.0:
            return 0.0, 0.0
        return kwh * 1000.0 / (self.window_ns / 3.6e12), sum(a * w for _, a, w in self.seen) / kwh


def _signature(fleet: horizon.Fleet, sched: horizon.Schedule, now_s: float) -> tuple:
    dep = np.round((now_s + np.nan_to_num(fleet.departure_in_s, nan=1e12)) / DEPARTURE_QUANTUM_S)
    return (tuple(fleet.port), tuple(dep), tuple(np.round(np.nan_to_num(sched.setpoint_w, nan=-1e18))),
            round(float(sched.import_w[0])), round(float(sched.export_w[0])))


class Planner(Service):
    """Replans on change and every plan_interval_s; hands each optimal plan to the loop."""

    name = "planner"

    def __init__(self, ctrl, cfg: PlannerConfig):
        super().__init__()
        self.ctrl, self.cfg = ctrl, cfg
        self.worker = Worker()
        self.default_w = ctrl.site.control.default_fleet_import_w
        self.rating_charge_w = [p.rating_charge_w for p in ctrl.site.ports]
        self.rating_discharge_w = [p.rating_discharge_w for p in ctrl.site.ports]
        self.solves = self.failures = self.over_budget = self.killed = 0
        self.last: horizon.Plan | None = None
        self.last_ns: int | None = None          # controller time of the last attempt
        self.step_end_ns: int | None = None      # the end of the last plan's first step
        self.signature = None
        self.solve_s: list[float] = []           # recent solve times (bounded)
        self.plan_id = 0
        n = len(ctrl.port_ids)
        self.taper = np.full(n, np.nan)          # learned per port (learn_taper)
        self.tapers_seen = collections.deque(maxlen=TAPER_HISTORY)
        self.before = None                       # the ports as the last plan saw them (learn_taper)
        self.arrivals = Arrivals()

    def run(self) -> None:
        try:
            while not self.stopping.wait(TICK_S):
                self.plan_if_due(self.ctrl.now_ns())
        finally:
            self.worker.kill()

    def plan_if_due(self, now_ns: int) -> bool:
        """Plan if the fleet or the schedule changed, a plan step began, or plan_interval_s passed."""
        snap = self.ctrl.snapshot()
        fleet = self.fleet(snap)
        self.arrivals.see(snap, now_ns, self.rating_charge_w)
        sched = schedule_of(snap, now_ns, self.cfg, self.default_w, self.ctrl.scheduled())
        sched.arrivals_w, sched.arrivals_worth = self.arrivals.expected()
        sched.arrivals_from_s = ARRIVALS_FROM_S
        sig = _signature(fleet, sched, now_ns / 1e9)
        due = (self.last_ns is None or sig != self.signature or now_ns >= self.step_end_ns
               or now_ns - self.last_ns >= self.cfg.plan_interval_s * 1e9)
        if not due:
            return False
        self.signature = sig
        if self.last_ns is not None:
            hours = min(now_ns - self.last_ns, self.cfg.step_s * 1e9) / 3.6e12
            self.tapers_seen.extend(learn_taper(self.taper, snap, hours, self.before))
            fleet = self.fleet(snap)
        p = snap.ports
        self.before = (p["soc"].copy(), p["capacity_wh"].copy(), p["ev_max_charge_w"].copy())
        self.plan(fleet, sched, now_ns)
        return True

    def fleet(self, snap) -> horizon.Fleet:
        taper = site_taper(self.taper, self.tapers_seen, snap, self.ctrl.site.control.taper_span)
        return fleet_of(snap, self.rating_charge_w, self.rating_discharge_w, taper)

    def plan(self, fleet: horizon.Fleet, sched: horizon.Schedule, now_ns: int) -> horizon.Plan | None:
        self.last_ns = now_ns
        self.step_end_ns = now_ns + int(sched.step_s[0] * 1e9)
        if len(fleet.port) == 0:
            return None
        result = self.worker.solve(fleet, sched, self.cfg.time_budget_s)
        if isinstance(result, str):
            self.failures += 1
            self.killed += result == "timeout"
            log.error("ERR_PLANNER_FAILED: the planner's solve %s (budget %g s); the loop arbitrates without "
                      "guidance until a plan arrives", "overran and was killed" if result == "timeout" else "died",
                      self.cfg.time_budget_s)
            return None
        self.solves += 1
        self.last = result
        self.solve_s = (self.solve_s + [result.solve_s])[-1000:]
        if result.status != "Optimal":
            self.over_budget += result.status == "Time limit reached"
            log.warning("ERR_PLANNER_NO_PLAN: the planner's LP ended %r after %.2f s; no guidance this time",
                        result.status, result.solve_s)
            return None
        plan = np.full(len(self.ctrl.port_ids), np.nan)
        plan[fleet.port] = result.plan_w
        ttl_ns = int(min(self.cfg.guidance_ttl_s, sched.step_s[0]) * 1e9)
        self.plan_id += 1
        self.ctrl.guide(plan, now_ns + ttl_ns, self.plan_id)
        return result

    def stop(self) -> None:
        super().stop()
        self.worker.kill()

    def stats(self) -> dict:
        snap_site = self.ctrl.snapshot().site
        now = self.ctrl.now_ns()
        taken = snap_site["guidance_taken_ns"]
        last = self.last
        return {"solves": self.solves, "failures": self.failures, "over_budget": self.over_budget,
                "killed": self.killed, "worker_pid": self.worker.pid, "worker_starts": self.worker.starts,
                "last_status": last.status if last else None,
                "last_solve_s": round(last.solve_s, 3) if last else None,
                "objective": round(last.objective, 3) if last and math.isfinite(last.objective) else None,
                "guidance_fresh": bool(snap_site["guidance_fresh"]),
                "guidance_age_s": round((now - taken) / 1e9, 1) if taken else None,
                "arrivals_expected_w": round(self.arrivals.expected()[0])}
