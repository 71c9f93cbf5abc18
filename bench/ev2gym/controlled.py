"""The controller itself inside EV2Gym: a v2g_rt.Controller (virtual clock) over a site built from
the EV2Gym scenario, its native cycle stepped in virtual time, optionally with the horizon planner.

The site: a grid node over one node per transformer (its rating: import max_power, export
-min_power), one EVSE per charger with its ports (the charger's rating in W). What the controller
is fed each step is what a real site has, through Controller.measure like any link:
* what each EV reports: connected, SoC, capacity, energy request (desired - current), departure,
  its maximum charge and discharge power as announced (the EV's maximum at this charger's
  current: no taper, no look into ev2gym's battery model), min SoC, V2G;
* each port's power over the previous step (port/ID/power_w): ev2gym's own accounting of it,
  also for an EV that left since (a charger's closing meter reading of the session);
* the operator's setpoints as setpoint commands, each with its step as its window: submitted at
  its step (ahead=False: the schedule is not known ahead), or the whole day's as scheduled
  commands (starts_ns) before the first step, as an aggregator sends a day-ahead plan (the loop's
  queue holds 192 per kind: 48 h of 15-minute windows), the planner reading them through
  Controller.scheduled() (ahead=True: known ahead).
The outputs (Controller.outputs: the write stage's per-port setpoint, 0 W while a contactor is
open) become ev2gym's actions as in adapter.py.

Cadence: an ev2gym step is a link that takes a new setpoint once per step (output_hold_s = the
step). Each step runs one cycle at the step's start (it takes the data: the closed loop then
compares the power each port drew over the last step with what it was given for it), the planner
when asked, and one cycle a second later (it takes the planner's guidance); the outputs of that
cycle hold for the step. A cap of the closed loop probes back up by probe_w_per_s over the
virtual seconds between cycles, so it is set to rise about 2 kW per 15-minute step.

The site is configured with setpoint_draws_reserve: the operator's export setpoint, where the fleet
cannot meet it within the EVs' departure reserves, draws on them (never below min SoC). Without
it the controller keeps the reserves and leaves an export window's setpoint unmet (README: before
the water-fill, 30-236 kWh of tracking error in V2GProfitMax).
"""
import math
import time

import numpy as np

import adapter

S = 1_000_000_000
PROBE_W_PER_S = 2.0


def build_site(env, battery_frame):
    from v2g_rt import Control, Node, Port, RealTime, Site

    nodes = [Node("grid", "grid", None, sum(float(np.max(tr.max_power)) for tr in env.transformers) * 1000,
                  sum(float(-np.min(tr.min_power)) for tr in env.transformers) * 1000)]
    for tr in env.transformers:
        # a real site knows its transformer's rating: the smallest over the day if ev2gym varies it
        nodes.append(Node(f"tr{tr.id}", "transformer", "grid", float(np.min(tr.max_power)) * 1000,
                          float(-np.max(tr.min_power)) * 1000))
    ports = []
    for cs in env.charging_stations:
        v = cs.voltage * math.sqrt(cs.phases) / 1000        # kW per A, ev2gym's power law
        ch, dis = cs.max_charge_current * v * 1000, abs(cs.max_discharge_current) * v * 1000
        nodes.append(Node(f"cs{cs.id}", "evse", f"tr{cs.connected_transformer}", ch * cs.n_ports,
                          dis * cs.n_ports, link="sim"))
        ports += [Port(f"cs{cs.id}.{j}", f"cs{cs.id}", ch, dis) for j in range(cs.n_ports)]
    dt = env.timescale * 60
    control = Control(output_hold_s=dt, session_max_age_s=min(3600.0, 2 * dt), port_ramp_w_per_s=math.inf,
                      probe_w_per_s=PROBE_W_PER_S, setpoint_draws_reserve=True)
    rt = RealTime(priority=0, cpu=None, lock_memory=False, cpu_dma_latency_us=None)
    return Site("ev2gym", 1.0, tuple(nodes), tuple(ports), rt=rt, control=control)


class ControllerPolicy:
    """ev2gym policy (get_action(env)) that runs the controller; planner=True adds the horizon
    planner (its solves in its worker process, as in the service)."""

    def __init__(self, env, planner=False, battery_frame=False, use_setpoint=True, ahead=False):
        from v2g_rt import Controller
        self.site = build_site(env, battery_frame)
        self.ctrl = Controller(self.site, clock="virtual")
        self.battery_frame, self.use_setpoint, self.ahead = battery_frame, use_setpoint, ahead
        self.submitted = 0                      # setpoints sent so far (steps 0 .. submitted - 1)
        self.dt_s = env.timescale * 60
        self.t0_ns = S                          # the controller's clock: step k starts at t0 + k * dt
        self.ctrl.step(self.t0_ns - S // 2)
        self.planner = None
        if planner:
            from v2g_rt.services.planner import Planner, PlannerConfig
            self.planner = Planner(self.ctrl, PlannerConfig(plan_interval_s=self.dt_s, horizon_s=86400.0,
                                                            step_s=self.dt_s, time_budget_s=30.0,
                                                            guidance_ttl_s=self.dt_s))
        self.cycles, self.cycle_s = 0, 0.0
        self.parked = {}                        # port index -> the EV parked there at the last step
        self.slot = [j for cs in env.charging_stations for j in range(len(cs.evs_connected))]
        self.solve_s = []

    def close(self):
        if self.planner:
            self.planner.worker.kill()

    def get_action(self, env):
        k = env.current_step
        now = self.t0_ns + int(k * self.dt_s * S)
        plist = adapter.port_list(env)
        self.publish(env, plist, self.ctrl.now_ns())      # they arrive before this step's first cycle
        if self.use_setpoint:
            self.submit_setpoints(env, k)
        self.cycle(now)
        if self.planner:
            if self.planner.plan_if_due(now) and self.planner.last is not None:
                self.solve_s.append(self.planner.last.solve_s)
        self.cycle(now + S)
        out = self.ctrl.outputs()
        w = np.where(out["contactor_closed"] == 1, out["setpoint_w"], 0.0) / 1000
        if self.battery_frame:
            w = [adapter.pilot_kw(cs, ev, p) if ev is not None and p != 0 else 0.0 for (cs, ev), p in zip(plist, w)]
        return np.array([adapter.kw_to_action(cs, ev, p) for (cs, ev), p in zip(plist, w)])

    def submit_setpoints(self, env, k):
        """Step k's setpoint now; ahead, every later one of the day too, each with its start."""
        last = env.simulation_length if self.ahead else min(env.simulation_length, k + 1)
        while self.submitted < last:
            j = self.submitted
            start = self.t0_ns + int(j * self.dt_s * S)
            cmd = {"id": f"sp{j}", "kind": "setpoint", "value_w": float(env.power_setpoints[j]) * 1000,
                   "expires_ns": start + int(self.dt_s * S)}
            if j > k:
                cmd["starts_ns"] = start
            ok = self.ctrl.submit(cmd)
            assert ok, ok.reason
            self.submitted += 1

    def cycle(self, t_ns):
        t = time.perf_counter()
        self.ctrl.step(t_ns)
        self.cycle_s += time.perf_counter() - t
        self.cycles += 1

    def publish(self, env, plist, stamp):
        dt_h = self.dt_s / 3600
        idx, val = [], []

        def put(pid, kind, v):
            idx.append(self.ctrl.source_index(f"port/{pid}/{kind}"))
            val.append(float(v))

        for i, (pid, (cs, ev)) in enumerate(zip(self.ctrl.port_ids, plist)):
            if ev is None:
                put(pid, "connected", 0)
                left = self.parked.pop(i, None)
                put(pid, "power_w", adapter.drew_kw(cs, left, self.slot[i], dt_h, self.battery_frame) * 1000
                    if left else 0.0)     # an EV that left: its charger's closing meter reading
                continue
            self.parked[i] = ev
            # as announced: no taper, no oracle
            ch, dis = (adapter.battery_limits_kw if self.battery_frame else adapter.port_limits_kw)(cs, ev)
            drew = adapter.drew_kw(cs, ev, self.slot[i], dt_h, self.battery_frame)
            for kind, v in (("connected", 1), ("soc", min(1.0, ev.current_capacity / ev.battery_capacity)),
                            ("capacity_wh", ev.battery_capacity * 1000),
                            ("energy_request_wh", max(0.0, ev.desired_capacity - ev.current_capacity) * 1000),
                            ("departure_in_s", (ev.time_of_departure + 1) * self.dt_s - (stamp - self.t0_ns) / S),
                            ("max_charge_w", ch * 1000), ("max_discharge_w", dis * 1000),
                            ("min_soc", ev.min_battery_capacity / ev.battery_capacity), ("v2g", dis > 0),
                            ("power_w", drew * 1000)):
                put(pid, kind, v)
        n = self.ctrl.measure_many(np.array(idx, np.int32), np.array(val), stamp)
        assert n == len(idx), f"{len(idx) - n} measurements refused"
