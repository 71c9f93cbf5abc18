#!/usr/bin/env python3
"""Allocation-quality benchmark: charging-arbitration policies inside EV2Gym.

    python run.py --scenario PublicPST,V2GProfitMax --hard --seeds 3 \
        --ports 0,50,256 --policies equal_share,afap,alap,roundrobin,lp --json out.json

See README.md for what "hard" changes and what each metric means.
"""
import argparse
import functools
import importlib.resources
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
warnings.filterwarnings("ignore")  # pkg_resources / gymnasium deprecation noise

from ev2gym.models.ev2gym_env import EV2Gym  # noqa: E402
from ev2gym.baselines.heuristics import (  # noqa: E402
    ChargeAsFastAsPossible, ChargeAsLateAsPossible, RoundRobin)

import adapter  # noqa: E402
import controlled  # noqa: E402
import lp  # noqa: E402
from equal_share import equal_share  # noqa: E402

POLICIES = ["ctl", "ctl_plan", "ctl_plan_ahead", "v2g", "equal_share", "afap", "alap", "roundrobin", "lp"]
HARD_FLEXIBILITY = -50               # setpoints carry 50 % of the EVs' energy need
EXPORT_WINDOWS = ((11, 12), (16, 17))  # local clock hours with a negative setpoint (V2G only)
EXPORT_FRACTION = 0.5                # of the discharge power of the EVs parked then
LOADS_MULTIPLIER = 0.5               # --loads: peak inflexible load / PV as a share of the transformer


class PolicyUnavailable(Exception):
    pass


def build_config(scenario, ports, hard, transformers, tr_kw, loads):
    """Stock YAML with package-relative paths fixed and the requested changes; returns (path, cfg)."""
    pkg = importlib.resources.files("ev2gym")
    cfg = yaml.safe_load((pkg / "example_config_files" / f"{scenario}.yaml").read_text())

    def fix(node):  # './ev2gym/data/...' -> the installed package's data
        if isinstance(node, dict):
            return {k: fix(v) for k, v in node.items()}
        if isinstance(node, str) and node.startswith("./ev2gym/"):
            return str(pkg / node[len("./ev2gym/"):])
        return node
    cfg = fix(cfg)
    base = cfg["number_of_charging_stations"]
    ports = ports or base
    cfg["number_of_charging_stations"] = ports      # one port per charger in both scenarios
    cfg["number_of_transformers"] = transformers
    total_kw = tr_kw or cfg["transformer"]["max_power"] * ports / base   # scale with size
    cfg["transformer"]["max_power"] = total_kw / transformers
    if hard:
        cfg["power_setpoint_enabled"] = True
        cfg["power_setpoint_flexiblity"] = HARD_FLEXIBILITY
    if loads:
        cfg["inflexible_loads"]["include"] = cfg["solar_power"]["include"] = True
        cfg["inflexible_loads"]["inflexible_loads_capacity_multiplier_mean"] = LOADS_MULTIPLIER
        cfg["solar_power"]["solar_power_capacity_multiplier_mean"] = LOADS_MULTIPLIER
    f = tempfile.NamedTemporaryFile("w", suffix=f"_{scenario}.yaml", delete=False)
    yaml.safe_dump(cfg, f)
    f.close()
    return f.name, cfg


def add_export_windows(env):
    """Hard mode, V2G scenarios: negative setpoints in EXPORT_WINDOWS (ev2gym never generates any)."""
    ts, T = env.timescale, env.simulation_length
    start = env.sim_starting_date.hour * 60 + env.sim_starting_date.minute
    for h0, h1 in EXPORT_WINDOWS:
        for k in range(max(0, (h0 * 60 - start) // ts), min(T, (h1 * 60 - start) // ts)):
            dis = sum(adapter.port_limits_kw(env.charging_stations[ev.location], ev)[1]
                      for ev in env.EVs_profiles if ev.time_of_arrival <= k <= ev.time_of_departure)
            exp = sum(adapter.transformer_limits_kw(tr, k)[1] for tr in env.transformers)
            env.power_setpoints[k] = -EXPORT_FRACTION * min(dis, exp)


def start_episode(env, seed, hard):
    env.reset(seed=seed)
    if hard and env.config["v2g_enabled"]:
        add_export_windows(env)


def make_policy(name, env, lp_transfers=False, battery_frame=False):
    use_sp = bool(env.config["power_setpoint_enabled"])
    if name == "equal_share":
        return adapter.ArbitratePolicy(functools.partial(equal_share, dt_s=env.timescale * 60),
                                       use_setpoint=use_sp, battery_frame=battery_frame)
    if name in ("v2g", "ctl", "ctl_plan", "ctl_plan_ahead"):
        try:
            import v2g_rt
        except ImportError as e:
            raise PolicyUnavailable(f"cannot import v2g_rt ({e}); install it into this venv (see README)")
        if name != "v2g":
            if env.config["inflexible_loads"]["include"] or env.config["solar_power"]["include"]:
                raise PolicyUnavailable("the controller's site has no transformer meter here yet (--loads)")
            return controlled.ControllerPolicy(env, planner=name != "ctl", battery_frame=battery_frame,
                                               use_setpoint=use_sp, ahead=name == "ctl_plan_ahead")
        return adapter.ArbitratePolicy(functools.partial(v2g_rt.arbitrate, dt_s=env.timescale * 60),
                                       v2g_rt.new_ports, use_setpoint=use_sp, battery_frame=battery_frame)
    if name == "afap":
        return ChargeAsFastAsPossible()
    if name == "alap":
        return ChargeAsLateAsPossible()
    if name == "roundrobin":
        return RoundRobin(env)
    if name == "lp":
        t0 = time.perf_counter()
        sched, info = lp.solve(env, use_setpoints=use_sp, transfers=lp_transfers)
        pol = lp.ReplayPolicy(sched)
        pol.info = dict(info, lp_solve_s=time.perf_counter() - t0)
        return pol
    raise ValueError(f"unknown policy {name}")


def run_episode(env, policy):
    T, dt_h = env.simulation_length, env.timescale / 60
    grid_kw = np.zeros(T)   # charger-side fleet power, reconstructed from battery energy / efficiency
    pol_s, done = 0.0, False
    while not done:
        k = env.current_step
        t0 = time.perf_counter()
        action = policy.get_action(env)
        pol_s += time.perf_counter() - t0
        parked = [(cs, j, ev) for cs in env.charging_stations for j, ev in enumerate(cs.evs_connected) if ev]
        _, _, done, _, _ = env.step(action)
        grid_kw[k] = sum(ev.current_energy / adapter.efficiency(ev, cs.current_signal[j])
                         for cs, j, ev in parked if ev.current_energy != 0) / dt_h
    st, sp = env.stats, np.asarray(env.power_setpoints[:T])
    out = {
        "evs": int(st["total_ev_served"]),
        "energy_charged_kwh": st["total_energy_charged"],
        "energy_discharged_kwh": st["total_energy_discharged"],
        "tracking_kwh": st["energy_tracking_error"],
        "grid_tracking_kwh": float(np.abs(sp - grid_kw).sum() * dt_h),
        "user_sat_pct": 100 * st["average_user_satisfaction"],
        "energy_user_sat_pct": st["energy_user_satisfaction"],
        "min_energy_user_sat_pct": st["min_energy_user_satisfaction"],
        "tr_overload_kw_steps": st["total_transformer_overload"],
        "power_tracker_violation_kw_steps": st["power_tracker_violation"],
        "setpoint_import_kwh": float(np.clip(sp, 0, None).sum() * dt_h),
        "setpoint_export_kwh": float(np.clip(-sp, 0, None).sum() * dt_h),
        "policy_s": pol_s,
    }
    if isinstance(policy, controlled.ControllerPolicy):
        policy.close()
        out["cycles"] = policy.cycles
        out["cycle_mean_us"] = 1e6 * policy.cycle_s / max(1, policy.cycles)
        if policy.planner:
            out["planner_solves"] = len(policy.solve_s)
            out["planner_failures"] = policy.planner.failures
            out["planner_solve_p50_s"] = float(np.percentile(policy.solve_s, 50)) if policy.solve_s else None
            out["planner_solve_p99_s"] = float(np.percentile(policy.solve_s, 99)) if policy.solve_s else None
            out["planner_solve_max_s"] = max(policy.solve_s, default=None)
    if isinstance(policy, adapter.ArbitratePolicy):
        out["arbitrate_calls"] = policy.calls
        out["arbitrate_mean_us"] = 1e6 * policy.call_s / max(1, policy.calls)
    out.update(getattr(policy, "info", {}))
    return {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in out.items()}


COLS = [("evs", "EVs", "{:.0f}"), ("energy_charged_kwh", "chg kWh", "{:.1f}"),
        ("energy_discharged_kwh", "dis kWh", "{:.1f}"), ("tracking_kwh", "track kWh", "{:.1f}"),
        ("grid_tracking_kwh", "grid-trk", "{:.1f}"), ("user_sat_pct", "sat %", "{:.1f}"),
        ("energy_user_sat_pct", "Esat %", "{:.1f}"), ("min_energy_user_sat_pct", "minEsat", "{:.1f}"),
        ("tr_overload_kw_steps", "overload", "{:.1f}"), ("wall_s", "time s", "{:.2f}")]


def table(runs):
    lines = []
    for key in dict.fromkeys((r["scenario"], r["ports"], r["hard"], r["loads"]) for r in runs):
        sel = [r for r in runs if (r["scenario"], r["ports"], r["hard"], r["loads"]) == key and "error" not in r]
        seeds = sorted({r["seed"] for r in sel})
        lines.append(f"\n{key[0]}  ports={key[1]}  hard={key[2]}  loads={key[3]}  "
                     f"seeds={seeds}  (mean over seeds)")
        lines.append("| policy | " + " | ".join(c[1] for c in COLS) + " |")
        lines.append("|---" * (len(COLS) + 1) + "|")
        for pol in dict.fromkeys(r["policy"] for r in sel):
            rs = [r for r in sel if r["policy"] == pol]
            cells = [fmt.format(np.mean([r[k] for r in rs])) for k, _, fmt in COLS]
            lines.append(f"| {pol} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="PublicPST", help="PublicPST|V2GProfitMax, comma list allowed")
    ap.add_argument("--hard", action="store_true", help="scarce setpoints + export windows (V2G)")
    ap.add_argument("--loads", action="store_true", help="turn on inflexible loads and PV on the transformer(s)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed0", type=int, default=0)
    ap.add_argument("--ports", default="0", help="number of chargers (1 port each), comma list; 0 = scenario size")
    ap.add_argument("--transformers", type=int, default=1)
    ap.add_argument("--tr-kw", type=float, default=None,
                    help="total transformer kW (default: the YAML's 100 kW scaled by ports/scenario size)")
    ap.add_argument("--policies", default="ctl,ctl_plan,ctl_plan_ahead,v2g,equal_share,afap,alap,roundrobin,lp")
    ap.add_argument("--lp-transfers", action="store_true",
                    help="let the LP charge and discharge different EVs in the same step (see lp.py)")
    ap.add_argument("--battery-frame", action="store_true",
                    help="adapter works in ev2gym's battery-side frame (see adapter.py)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    policies = a.policies.split(",")
    if unknown := set(policies) - set(POLICIES):
        ap.error(f"unknown policies {sorted(unknown)}; choose from {POLICIES}")

    runs, failed = [], {}
    for scenario in a.scenario.split(","):
        for ports in map(int, a.ports.split(",")):
            path, cfg = build_config(scenario, ports, a.hard, a.transformers, a.tr_kw, a.loads)
            n_ports = cfg["number_of_charging_stations"]
            for seed in range(a.seed0, a.seed0 + a.seeds):
                env = EV2Gym(config_file=path, seed=seed)
                for pol in policies:
                    rec = dict(scenario=scenario, ports=n_ports, hard=a.hard, loads=a.loads, seed=seed, policy=pol,
                               battery_frame=a.battery_frame, lp_transfers=a.lp_transfers)
                    start_episode(env, seed, a.hard)
                    t0 = time.perf_counter()
                    try:
                        policy = make_policy(pol, env, a.lp_transfers, a.battery_frame)
                    except PolicyUnavailable as e:
                        if pol not in failed:
                            print(f"policy {pol}: FAILED: {e}", file=sys.stderr)
                        failed[pol] = str(e)
                        runs.append(dict(rec, error=str(e)))
                        continue
                    rec.update(run_episode(env, policy))
                    rec["wall_s"] = time.perf_counter() - t0
                    runs.append(rec)
                    print(f"{scenario:12s} ports={n_ports:3d} seed={seed} {pol:11s} "
                          f"track={rec['tracking_kwh']:7.1f} kWh  Esat={rec['energy_user_sat_pct']:5.1f}%  "
                          f"{rec['wall_s']:.2f}s", flush=True)
            os.unlink(path)
    print(table(runs))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "failed_policies": failed, "runs": runs}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
