"""Perfect-foresight optimum for one ev2gym episode (scipy HiGHS) + replay policy.

Read from the env right after ``reset`` (and after any setpoint override): the
EV profiles (arrival, departure, energy at arrival, battery/min/desired
capacity, power limits, efficiency, CC-CV parameters), setpoints, chargers and
transformer limits. All powers are battery-side kW, the quantity ev2gym
measures (``EV_Charger.current_power_output`` = battery energy / dt feeds both
``current_power_usage`` (tracking) and the transformer load).

Per EV i, step t in [arrival, departure] (the steps ev2gym charges it):
  c_it in [0, eta_c * Pch_i], d_it in [0, eta_d * Pdis_i] (0 unless the EV and
  the charger do V2G), E_it in [min(min_cap, E0), capacity],
  E_it = E_i,t-1 + dt (c_it - d_it),
  CC-CV taper (exact above ev2gym's transition SoC, see EV._charge):
  dt c_it <= alpha_i (capacity - E_i,t-1),
  alpha_i = 1 - exp(-k_i * eta * Pev_i * dt / cap_i / (1 - transition_soc_i)).
Per transformer and step: -export_t <= sum (c - d) <= import_t (adapter.py).
Direction rule (default, see solve(transfers=)): c = 0 in steps whose setpoint
is < 0 and d = 0 in steps whose setpoint is >= 0 (or when there are none).
Stage 1: min sum_t dt |setpoint_t - sum_i (c_it - d_it)|  (= ev2gym
energy_tracking_error). Stage 2: keep stage 1 within tolerance and maximise
sum_i min(E_i,dep, desired_i) / E_AFAP_i (ev2gym's energy_user_satisfaction),
with a tiny penalty on throughput to avoid pointless cycling.
Without setpoints (power_setpoint_enabled False) only stage 2 runs.
One port per charger is assumed (true for both stock scenarios).
"""
from copy import deepcopy
import math

import numpy as np
import scipy.sparse as sps
from scipy.optimize import linprog

from adapter import efficiency, kw_to_action, pilot_kw, port_limits_kw, transformer_limits_kw, w_per_amp


class _Model:
    def __init__(self):
        self.n, self.lb, self.ub = 0, [], []
        self.rows = {"ub": [[], [], [], []], "eq": [[], [], [], []]}   # r, c, v, rhs

    def var(self, n, lo, hi):
        idx = np.arange(self.n, self.n + n)
        self.n += n
        self.lb.append(np.broadcast_to(np.asarray(lo, float), n))
        self.ub.append(np.broadcast_to(np.asarray(hi, float), n))
        return idx

    def add(self, kind, row, col, val, rhs):
        """Rows numbered 0..len(rhs)-1 locally; entries (row, col, val)."""
        r, c, v, b = self.rows[kind]
        base = sum(len(x) for x in b)
        r.append(np.asarray(row) + base); c.append(np.asarray(col)); v.append(np.asarray(val, float))
        b.append(np.asarray(rhs, float))

    def matrices(self, kind):
        r, c, v, b = self.rows[kind]
        if not b:
            return None, None
        b = np.concatenate(b)
        A = sps.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=(len(b), self.n))
        return A, b

    def solve(self, cost):
        A_ub, b_ub = self.matrices("ub")
        A_eq, b_eq = self.matrices("eq")
        bounds = np.column_stack([np.concatenate(self.lb), np.concatenate(self.ub)])
        res = linprog(cost, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
        if res.status != 0:
            raise RuntimeError(f"LP failed: {res.message}")
        return res


def _max_eta(ev, cs, kw):
    return efficiency(ev, kw * 1000 / w_per_amp(cs, ev)) if kw > 0 else 1.0


def solve(env, use_setpoints=True, transfers=False, tol_kwh=1e-3, eps=1e-5):
    """Returns (schedule {(cs id, arrival step): battery-side kW per stay step}, info).

    transfers=False: EVs only charge in steps with setpoint >= 0 (or no setpoint)
    and only discharge when it is < 0. This cannot worsen stage 1, but stops
    stage 2 from moving energy EV-to-EV at zero fleet power, which raises
    ev2gym's mean-of-ratios satisfaction (big-battery EVs feed small ones).
    """
    T, dt = env.simulation_length, env.timescale / 60
    sp = np.asarray(env.power_setpoints[:T], float) if use_setpoints else np.zeros(T)
    if any(cs.n_ports > 1 for cs in env.charging_stations):
        raise NotImplementedError("LP assumes one port per charger")
    m = _Model()
    allc, alld, allt, alltr, keys, stays, s_idx, w_sat = [], [], [], [], [], [], [], []
    for ev in env.EVs_profiles:
        cs = env.charging_stations[ev.location]
        steps = np.arange(ev.time_of_arrival, min(ev.time_of_departure, T - 1) + 1)
        n = len(steps)
        if n == 0:
            continue
        ch_kw, dis_kw = port_limits_kw(cs, ev)
        eta_c = _max_eta(ev, cs, ch_kw)
        eta_d = efficiency(ev, -dis_kw * 1000 / w_per_amp(cs, ev)) if dis_kw > 0 else 0.0
        cap, e0 = ev.battery_capacity, ev.battery_capacity_at_arrival
        up = np.ones(n) if transfers else (sp[steps] >= 0).astype(float)
        c = m.var(n, 0, eta_c * ch_kw * up)
        d = m.var(n, 0, eta_d * dis_kw * (np.ones(n) if transfers else 1 - up))
        E = m.var(n, min(ev.min_battery_capacity, e0), cap)
        j = np.arange(n)
        # E_j - E_{j-1} - dt c_j + dt d_j = 0  (E_{-1} = e0)
        m.add("eq", np.r_[j, j[1:], j, j], np.r_[E, E[:-1], c, d],
              np.r_[np.ones(n), -np.ones(n - 1), -dt * np.ones(n), dt * np.ones(n)], np.r_[e0, np.zeros(n - 1)])
        if ev.transition_soc < 1:
            dmax = eta_c * ev.max_ac_charge_power * dt / cap
            a = 1 - math.exp(-ev.transition_soc_multiplier * dmax / (1 - ev.transition_soc))
            # dt c_j + a E_{j-1} <= a cap   (E_{-1} = e0 moves to the rhs)
            m.add("ub", np.r_[j, j[1:]], np.r_[c, E[:-1]], np.r_[dt * np.ones(n), a * np.ones(n - 1)],
                  np.r_[a * (cap - e0), a * cap * np.ones(n - 1)])
        s = m.var(1, 0, ev.desired_capacity)
        m.add("ub", [0, 0], [s[0], E[-1]], [1, -1], [0])      # s <= E_departure
        x = deepcopy(ev)
        x.calculate_max_energy_with_AFAP(cs.get_max_power())   # ev2gym's own E_AFAP
        w_sat.append(1 / x.max_energy_AFAP)
        s_idx.append(s[0])
        allc.append(c); alld.append(d); allt.append(steps); alltr.append(np.full(n, cs.connected_transformer))
        keys.append((ev.location, ev.time_of_arrival)); stays.append((c, d))
    C, D, Tt, TR = map(np.concatenate, (allc, alld, allt, alltr))
    ones = np.ones(len(C))
    # transformer limits: rows (tr, t)
    lim = np.array([[transformer_limits_kw(tr, t) for t in range(T)] for tr in env.transformers])  # (tr, T, 2)
    row = TR * T + Tt
    m.add("ub", np.r_[row, row], np.r_[C, D], np.r_[ones, -ones], lim[:, :, 0].ravel())
    m.add("ub", np.r_[row, row], np.r_[C, D], np.r_[-ones, ones], lim[:, :, 1].ravel())
    err = None
    if use_setpoints:
        err = m.var(T, 0, np.inf)
        t = np.arange(T)
        # err_t >= sp_t - P_t  and  err_t >= P_t - sp_t
        m.add("ub", np.r_[t, Tt, Tt], np.r_[err, C, D], np.r_[-np.ones(T), -ones, ones], -sp)
        m.add("ub", np.r_[t, Tt, Tt], np.r_[err, C, D], np.r_[-np.ones(T), ones, -ones], sp)
    info = {}
    if err is not None:
        cost = np.zeros(m.n)
        cost[err] = dt
        res = m.solve(cost)
        info["lp_tracking_kwh"] = res.fun
        m.add("ub", np.zeros(T, int), err, dt * np.ones(T), [res.fun + tol_kwh + 1e-6 * res.fun])
    cost = np.zeros(m.n)
    cost[s_idx] = -np.asarray(w_sat)
    cost[C] += eps * dt
    cost[D] += eps * dt
    res = m.solve(cost)
    x = res.x
    info["lp_energy_user_satisfaction"] = 100 * float(np.dot(w_sat, x[s_idx])) / len(s_idx)
    if err is not None:
        info["lp_tracking_kwh_stage2"] = float(dt * x[err].sum())
    sched = {k: x[c] - x[d] for k, (c, d) in zip(keys, stays)}
    return sched, info


class ReplayPolicy:
    """Plays an LP schedule back through ev2gym (open loop in battery-side power)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def get_action(self, env):
        k = env.current_step
        out = []
        for cs in env.charging_stations:
            for ev in cs.evs_connected:
                kw = 0.0
                if ev is not None:
                    plan = self.schedule.get((ev.location, ev.time_of_arrival))
                    j = k - ev.time_of_arrival
                    if plan is not None and 0 <= j < len(plan) and abs(plan[j]) > 1e-6:
                        kw = pilot_kw(cs, ev, plan[j])
                out.append(kw_to_action(cs, ev, kw))
        return np.array(out)
