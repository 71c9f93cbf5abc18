"""Where two policies' tracking errors differ, step by step.

    python steps.py --scenario V2GProfitMax --ports 50 --seed 1 [--policies ctl,equal_share] [--top 15]

Runs both policies over the same episode (run.py's scenario, hard mode, battery frame) and prints
the steps where the first's |setpoint - usage| exceeds the second's the most, with each one's
fleet power, and the sums of the differences both ways.
"""
import argparse
import os

import numpy as np
from ev2gym.models.ev2gym_env import EV2Gym

import run


def trace(scenario, ports, seed, policy):
    path, _ = run.build_config(scenario, ports, True, 1, None, False)
    try:
        env = EV2Gym(config_file=path, seed=seed)
        run.start_episode(env, seed, True)
        rec = run.run_episode(env, run.make_policy(policy, env, False, True))
    finally:
        os.unlink(path)
    T = env.simulation_length
    return rec, np.asarray(env.power_setpoints[:T]), np.asarray(env.current_power_usage[:T]), env.timescale / 60


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="PublicPST")
    ap.add_argument("--ports", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", default="ctl,equal_share")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args(argv)
    first, second = a.policies.split(",")
    (ra, sp, ua, dt_h), (rb, _, ub, _) = (trace(a.scenario, a.ports, a.seed, p) for p in (first, second))
    for name, rec in ((first, ra), (second, rb)):
        print(f"{name:14s} tracking {rec['tracking_kwh']:.4f} kWh  Esat {rec['energy_user_sat_pct']:.3f} %")
    diff = (np.abs(sp - ua) - np.abs(sp - ub)) * dt_h
    for k in sorted(np.argsort(-diff)[:a.top]):
        print(f"step {k:3d}  setpoint {sp[k]:9.2f} kW  {first} {ua[k]:9.2f}  {second} {ub[k]:9.2f}  "
              f"error difference {diff[k]:+.4f} kWh")
    print(f"{first} worse by {diff[diff > 0].sum():.4f} kWh, better by {-diff[diff < 0].sum():.4f} kWh")
    return {"first": ra["tracking_kwh"], "second": rb["tracking_kwh"], "worse": float(diff[diff > 0].sum()),
            "better": float(-diff[diff < 0].sum())}


if __name__ == "__main__":
    main()
