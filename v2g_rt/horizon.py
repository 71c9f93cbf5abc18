"""The horizon problem the planner solves: how the connected EVs should share the known schedule
(setpoints and limits, step by step) so that the fleet tracks it and each EV gets as much of its
energy request by its departure as the schedule allows. A linear programme solved with HiGHS
(highspy), warm-started from the previous basis when the model's shape is unchanged, within a
time budget. It runs in the planner's worker process (services/planner.py), never in the loop's.

Units inside the model are kW and kWh (numbers of order 1 keep HiGHS well-conditioned).
Per EV i and step t (length h_t hours; the first step runs from now to the next multiple of
step_s): charge c_it in [0, P_i a_it], discharge d_it in [0, D_i a_it] with a_it the share of the
step before its departure (charge only in steps whose setpoint is >= 0 or unknown, discharge only
in those where it is < 0: the loop moves the fleet one way at a time), energy
E_it = E_i,t-1 + h_t (c_it - d_it) in [Emin_i, capacity_i], and shortfall
s_i >= E_i0 + request_i - E_i,k_i at its last step k_i. Per step the fleet's power stays
within the site's import and export headroom; where a setpoint is known, |setpoint - fleet| costs
TRACK_WEIGHT per kWh, else the fleet follows the default profile (no discharge, at most its
import). Each EV's shortfall costs 100 / (the energy it could reach charging at full power until
it leaves) per kWh: a point of its own satisfaction as ev2gym's energy satisfaction counts it, so
a kWh goes where it raises an EV's share most; a small
cost on throughput forbids cycling, and a smaller one on lateness charges earlier among ties
(energy in the battery early keeps options open for export windows later). Where the planner
has seen an EV take less than planned, the EV's own taper bounds it: its power at most taper_i x
the room left in its battery (per hour; a first-order CC-CV, so a step of h hours fills at most
1 - exp(-taper_i h) of the room at its start), taper_i learned from what it took
(services/planner.py): the plan then asks of the others what a full EV will not take. EVs not
yet connected take up to arrivals_w of each step from arrivals_from_s on (never the first, none
in export steps), each kWh worth arrivals_worth points: a known future is then not kept for the
EVs present when later arrivals would take it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

TRACK_WEIGHT = 1000.0        # per kWh of tracking error
THROUGHPUT_WEIGHT = 1e-3     # per kWh charged or discharged
LATENESS_WEIGHT = 1e-5       # per kWh and step of delay


@dataclass
class Fleet:
    """What the connected EVs announce (one entry per planned port; W, Wh, s)."""
    port: np.ndarray                 # port index in the controller
    energy_wh: np.ndarray            # SoC x capacity
    capacity_wh: np.ndarray
    min_energy_wh: np.ndarray        # min SoC x capacity
    request_wh: np.ndarray           # energy still wanted by departure
    departure_in_s: np.ndarray       # NaN: unknown (stays past the horizon)
    max_charge_w: np.ndarray
    max_discharge_w: np.ndarray      # 0: no V2G
    taper: np.ndarray | None = None  # power / room left seen in its taper (1/h; NaN: not seen)


@dataclass
class Schedule:
    """The known schedule per step: step lengths (s) and, per step, setpoint (W, NaN: none),
    the fleet's import and export headroom (W magnitudes) and the default profile (W).
    arrivals_w: the power EVs not yet connected are expected to take in the steps that start
    arrivals_from_s or later, never in the first (what arrived lately, services/planner.py), each
    kWh of it worth arrivals_worth points."""
    step_s: np.ndarray
    setpoint_w: np.ndarray
    import_w: np.ndarray
    export_w: np.ndarray
    default_w: float = 0.0
    arrivals_w: float = 0.0
    arrivals_worth: float = 0.0
    arrivals_from_s: float = 0.0


@dataclass
class Plan:
    status: str                      # HiGHS model status ("Optimal", "Time limit reached", ...)
    plan_w: np.ndarray               # per fleet entry: planned power in the first step (W)
    objective: float
    solve_s: float
    warm: bool                       # started from the previous basis
    tracking_kwh: float = math.nan
    shortfall_kwh: float = math.nan
    extra: dict = field(default_factory=dict)


def worth(energy_kwh, capacity_kwh, charge_kw, departure_in_s):
    """Points of an EV's satisfaction per kWh it is short: 100 / the energy it could reach charging
    at full power until it leaves (ev2gym's energy satisfaction counts it so)."""
    reach = np.minimum(capacity_kwh, energy_kwh + charge_kw * np.minimum(departure_in_s, 7 * 86400.0) / 3600.0)
    return 100.0 / np.maximum(reach, 1e-3)


def steps(now_s: float, step_s: float, horizon_s: float) -> np.ndarray:
    """Step lengths: the first to the next multiple of step_s, then whole steps to the horizon."""
    first = step_s - math.fmod(now_s, step_s)
    if first < 1e-6 * step_s:
        first = step_s
    n = max(1, int(math.ceil((horizon_s - first) / step_s - 1e-9)) + 1)
    out = np.full(n, step_s, dtype=float)
    out[0] = first
    return out


class Solver:
    """Solves one model after another; the next model of the same shape starts from the last
    basis. Each solve gets a new HiGHS instance: HiGHS counts time_limit from an instance's
    first run, so a kept instance would give later solves less and less of their budget."""

    def __init__(self):
        import highspy
        self.highspy = highspy
        self.shape = None
        self.basis = None

    def solve(self, fleet: Fleet, sched: Schedule, time_budget_s: float) -> Plan:
        hs = self.highspy
        t0 = time.perf_counter()
        lp, layout = build(fleet, sched, hs)
        shape = (lp.num_col_, lp.num_row_, layout["n"], layout["T"])
        self.h = hs.Highs()
        self.h.setOptionValue("output_flag", False)
        self.h.setOptionValue("time_limit", max(1e-3, float(time_budget_s)))
        self.h.passModel(lp)
        warm = shape == self.shape and self.basis is not None
        if warm:
            self.h.setBasis(self.basis)
        self.h.run()
        status = self.h.modelStatusToString(self.h.getModelStatus())
        n, T = layout["n"], layout["T"]
        sol = self.h.getSolution()
        ok = sol.value_valid
        if ok:
            x = np.asarray(sol.col_value)
            c = x[:n * T].reshape(n, T)
            d = x[n * T:2 * n * T].reshape(n, T)
            plan_w = (c[:, 0] - d[:, 0]) * 1000.0 if T else np.zeros(n)
            h = sched.step_s / 3600.0
            track = x[layout["track"]:layout["track"] + 2 * T].reshape(2, T) if layout["tracked"] else np.zeros((2, T))
            tracking = float(((track[0] + track[1]) * h).sum())
            shortfall = float(x[layout["short"]:layout["short"] + n].sum())
            basis = self.h.getBasis()
            self.basis, self.shape = (basis, shape) if basis.valid else (None, None)
        else:
            plan_w = np.full(n, np.nan)
            tracking = shortfall = math.nan
            self.basis, self.shape = None, None
        info = self.h.getInfo()
        return Plan(status, plan_w, float(info.objective_function_value) if ok else math.nan,
                    time.perf_counter() - t0, warm, tracking, shortfall,
                    {"iterations": int(info.simplex_iteration_count), "columns": lp.num_col_, "rows": lp.num_row_})


def build(fleet: Fleet, sched: Schedule, hs):
    """The LP (HighsLp, column-wise) and where its variable blocks start."""
    n, T = len(fleet.port), len(sched.step_s)
    h = sched.step_s / 3600.0                                   # hours per step
    start = np.concatenate([[0.0], np.cumsum(sched.step_s)[:-1]])
    dep = np.where(np.isnan(fleet.departure_in_s), np.inf, fleet.departure_in_s)
    avail = np.clip((dep[:, None] - start[None, :]) / sched.step_s[None, :], 0.0, 1.0)      # n x T
    last = np.clip(np.searchsorted(np.cumsum(sched.step_s), np.minimum(dep, start[-1] + sched.step_s[-1]) - 1e-6), 0, T - 1)
    e0 = fleet.energy_wh / 1000.0
    cap = np.maximum(fleet.capacity_wh / 1000.0, e0)
    emin = np.minimum(fleet.min_energy_wh / 1000.0, e0)
    goal = np.minimum(e0 + fleet.request_wh / 1000.0, cap)
    tracked = ~np.isnan(sched.setpoint_w)

    # columns: c (n*T), d (n*T), E (n*T), s (n), u/v tracking (2T), a: arrivals (T)
    nc = 3 * n * T + n + 3 * T
    ic, idd, ie, isht, itr, iar = 0, n * T, 2 * n * T, 3 * n * T, 3 * n * T + n, 3 * n * T + n + 2 * T
    lower = np.zeros(nc)
    upper = np.empty(nc)
    # the loop moves the whole fleet one way per cycle (the sign of its target): EVs charge in
    # steps whose setpoint is >= 0 or unknown and discharge only where it is < 0. Without this
    # the LP trades energy between EVs (one discharging into another) that the loop never does
    export = tracked & (np.nan_to_num(sched.setpoint_w) < 0.0)
    upper[ic:idd] = (fleet.max_charge_w[:, None] / 1000.0 * avail * ~export[None, :]).ravel()
    upper[idd:ie] = (fleet.max_discharge_w[:, None] / 1000.0 * avail * export[None, :]).ravel()
    lower[ie:isht] = np.repeat(emin, T)
    upper[ie:isht] = np.repeat(cap, T)
    upper[isht:itr] = np.inf
    upper[itr:iar] = np.where(np.concatenate([tracked, tracked]), np.inf, 0.0)
    # EVs that arrive take part of a known future (none in the first step, nothing in export steps):
    # without them the plan keeps room in the present EVs for energy that arrivals will take
    later = (start >= sched.arrivals_from_s) & (np.arange(T) > 0)
    upper[iar:] = np.where(later & ~export, max(sched.arrivals_w, 0.0) / 1000.0, 0.0)
    cost = np.zeros(nc)
    late = LATENESS_WEIGHT * np.arange(T)
    cost[ic:idd] = (THROUGHPUT_WEIGHT * h + late)[None, :].repeat(n, 0).ravel()
    cost[idd:ie] = (THROUGHPUT_WEIGHT * h)[None, :].repeat(n, 0).ravel()
    cost[isht:itr] = worth(e0, cap, fleet.max_charge_w / 1000.0, dep)
    cost[itr:iar] = TRACK_WEIGHT * np.concatenate([h, h])
    cost[iar:] = -max(sched.arrivals_worth, 0.0) * h

    rows, cols, vals, rlo, rhi = [], [], [], [], []
    r = 0
    # energy: E_it - E_i,t-1 - h_t c_it + h_t d_it = 0 (E_i,-1 = e0)
    ii, tt = np.meshgrid(np.arange(n), np.arange(T), indexing="ij")
    k = (ii * T + tt).ravel()
    rid = r + k
    rows += [rid, rid, rid]
    cols += [ie + k, ic + k, idd + k]
    vals += [np.ones(n * T), -np.repeat(h[None, :], n, 0).ravel(), np.repeat(h[None, :], n, 0).ravel()]
    prev = (tt > 0).ravel()
    rows.append(rid[prev])
    cols.append(ie + k[prev] - 1)
    vals.append(-np.ones(prev.sum()))
    b = np.where(tt.ravel() == 0, np.repeat(e0, T), 0.0)
    rlo.append(b)
    rhi.append(b)
    r += n * T
    # shortfall: E_i,last_i + s_i >= goal_i
    rid = r + np.arange(n)
    rows += [rid, rid]
    cols += [ie + np.arange(n) * T + last, isht + np.arange(n)]
    vals += [np.ones(n), np.ones(n)]
    rlo.append(goal)
    rhi.append(np.full(n, np.inf))
    r += n
    # fleet power per step: sum c - sum d (- u + v where tracked) within the headroom, = setpoint
    # where tracked; the default profile where not
    rid = r + tt.ravel()
    rows += [rid, rid]
    cols += [ic + k, idd + k]
    vals += [np.ones(n * T), -np.ones(n * T)]
    rows += [r + np.arange(T), r + np.arange(T), r + np.arange(T)]
    cols += [itr + np.arange(T), itr + T + np.arange(T), iar + np.arange(T)]
    vals += [-np.ones(T), np.ones(T), np.ones(T)]
    sp = np.nan_to_num(sched.setpoint_w / 1000.0)
    imp, exp_ = sched.import_w / 1000.0, sched.export_w / 1000.0
    default = max(sched.default_w / 1000.0, 0.0)
    rlo.append(np.where(tracked, np.clip(sp, -exp_, imp), 0.0))
    rhi.append(np.where(tracked, np.clip(sp, -exp_, imp), np.minimum(default, imp)))
    r += T
    # limits on the physical fleet power (the setpoint rows above carry u, v)
    rid = r + tt.ravel()
    rows += [rid, rid, r + np.arange(T)]
    cols += [ic + k, idd + k, iar + np.arange(T)]
    vals += [np.ones(n * T), -np.ones(n * T), np.ones(T)]
    rlo.append(-exp_)
    rhi.append(imp)
    r += T
    # learned taper: h_t c_it <= tau_it (cap_i - E_i,t-1), tau_it = 1 - exp(-taper_i h_t)
    taper = np.full(n, np.nan) if fleet.taper is None else np.asarray(fleet.taper, float)
    seen = np.flatnonzero(np.isfinite(taper) & (taper > 0.0))
    if seen.size:
        tau = 1.0 - np.exp(-taper[seen, None] * h[None, :])                              # m x T
        m = seen.size
        kk = (seen[:, None] * T + np.arange(T)[None, :]).ravel()
        rid = r + np.arange(m * T)
        rows.append(rid)
        cols.append(ic + kk)
        vals.append(np.repeat(h[None, :], m, 0).ravel())
        later = (np.arange(T)[None, :] > 0).repeat(m, 0).ravel()
        rows.append(rid[later])
        cols.append(ie + kk[later] - 1)
        vals.append(tau.ravel()[later])
        rlo.append(np.full(m * T, -np.inf))
        rhi.append((tau * np.where(np.arange(T)[None, :] > 0, cap[seen, None], (cap - e0)[seen, None])).ravel())
        r += m * T

    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    order = np.lexsort((rows, cols))
    indptr = np.searchsorted(cols[order], np.arange(nc + 1))
    lp = hs.HighsLp()
    lp.num_col_, lp.num_row_ = nc, r
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, lower, upper
    lp.row_lower_, lp.row_upper_ = np.concatenate(rlo), np.concatenate(rhi)
    lp.a_matrix_.format_ = hs.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = indptr, rows[order], vals[order]
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = nc, r
    return lp, {"n": n, "T": T, "track": itr, "short": isht, "tracked": bool(tracked.any())}
