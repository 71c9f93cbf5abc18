"""EV2Gym <-> ``arbitrate()`` adapter.

Every step the policy turns ev2gym's state into the ``ports`` structured array
(one row per charger port, in ev2gym's action order), calls
``arbitrate(ports, now_s, import_limit_w=, export_limit_w=, setpoint_w=)`` once
per transformer, and turns the returned W back into ev2gym's [-1, 1] actions.

Conventions (all checked against ev2gym 2.0.0 source):
* time: ``now_s = step * timescale * 60``. An EV with ``time_of_departure = d``
  is still charged *during* step d (``EV_Charger.step`` charges, then checks
  ``is_departing``), so ``departure_s = (d + 1) * timescale * 60``.
* power: ev2gym turns an action into a current (action * max_charge_current,
  or action * |max_discharge_current| for action < 0) and the EV turns current
  into power as ``I * V * sqrt(min(cs.phases, ev.ev_phases))`` (V = line-line
  voltage). The W returned by ``arbitrate`` are charger-side (grid-side)
  commands; ev2gym applies the charge/discharge efficiency and the CC-CV taper
  on top, and measures everything (tracking, transformer load) battery-side.
* ``battery_frame=True`` (run.py --battery-frame) instead presents battery-side
  port limits (x efficiency) and treats the returned W as battery-side, turning
  them into pilots with ev2gym's own efficiency table (what the LP replay
  does), so the allocator is judged in the frame ev2gym measures.
* limits per transformer, per ev2gym's own transformer accounting
  (``Transformer.reset``: power = inflexible_load + solar_power + EVs, with
  ``solar_power <= 0``): import = max_power - load + PV, export = -min_power +
  load - PV, both clipped at 0.
* several transformers: one ``arbitrate`` call per transformer with its own
  ports and limits; the fleet setpoint is split in proportion to each group's
  deliverable power in the setpoint's direction (min of the ports' summed
  charge (or discharge) capability and the transformer's import (export)
  limit). With one transformer (both stock scenarios) this is a single call.
* multi-port chargers: the port rows carry the charger's full rating; ev2gym
  itself rescales a charger's actions when they sum past 1 (shared current).
"""
import math
import time

import numpy as np

PORT_DTYPE = np.dtype([
    ("connected", "?"), ("soc", "f8"), ("capacity_wh", "f8"),
    ("energy_request_wh", "f8"), ("departure_s", "f8"), ("max_charge_w", "f8"),
    ("max_discharge_w", "f8"), ("min_soc", "f8"), ("v2g", "?"),
])


def new_ports(n):
    """Stand-in for ``v2g_rt.new_ports`` (same field names)."""
    return np.zeros(n, dtype=PORT_DTYPE)


def w_per_amp(cs, ev):
    return cs.voltage * math.sqrt(min(cs.phases, ev.ev_phases))


def efficiency(ev, amps):
    """The efficiency ev2gym's EV applies at this pilot current (EV._charge/_discharge)."""
    eff = ev.charge_efficiency if amps >= 0 else ev.discharge_efficiency
    if isinstance(ev.charge_efficiency, dict):  # % table keyed by rounded |A|
        return eff.get(abs(round(amps)), 1) / 100
    return eff


def port_limits_kw(cs, ev):
    """(max charge kW, max discharge kW), charger-side, for this EV at this charger."""
    v = w_per_amp(cs, ev) / 1000
    ch = min(cs.max_charge_current * v, ev.max_ac_charge_power)
    dis = min(abs(cs.max_discharge_current) * v, abs(ev.max_discharge_power))
    return ch, dis


def battery_limits_kw(cs, ev):
    """port_limits_kw battery-side: each times ev2gym's efficiency at the current of that limit
    (an EV that announces less than the charger's rating runs at its own current, not the
    charger's, and the efficiency table is keyed by that current)."""
    v = w_per_amp(cs, ev) / 1000
    ch, dis = port_limits_kw(cs, ev)
    return (ch * efficiency(ev, ch / v) if ch > 0 else 0.0,
            dis * efficiency(ev, -dis / v) if dis > 0 else 0.0)


def pilot_kw(cs, ev, battery_kw):
    """Charger-side kW whose battery-side effect (after ev2gym's efficiency) is closest to
    battery_kw. The efficiency depends on the rounded pilot current itself, so the battery side
    jumps where the table steps (9.49 A at 90 % and 9.5 A at 93 %): a target in such a gap has
    no exact pilot, and the nearest side of the step is taken."""
    v = w_per_amp(cs, ev)

    def battery(a):
        return a * v * efficiency(ev, a) / 1000

    found = set()
    amps = battery_kw * 1000 / v
    for _ in range(4):
        amps = battery_kw * 1000 / v / efficiency(ev, amps)
        found.add(amps)
        step = math.floor(abs(amps) + 0.5) - 0.5          # the table steps at half amps
        found.update(math.copysign(x, amps) for x in (step - 1e-6, step + 1e-6, step + 1 - 1e-6, step + 1 + 1e-6)
                     if x > 0)
    amps = min(found, key=lambda a: abs(battery(a) - battery_kw))
    return amps * v / 1000


def drew_kw(cs, ev, j, dt_h, battery_frame):
    """What the EV at charger slot j drew over the last step of dt_h hours: battery-side kW in
    the battery frame, else charger-side (ev2gym's efficiency at that slot's pilot undone)."""
    drew = ev.current_energy / dt_h if ev.current_energy else 0.0
    if drew and not battery_frame:
        drew /= efficiency(ev, cs.current_signal[j])
    return drew


def transformer_limits_kw(tr, k):
    base = tr.inflexible_load[k] + tr.solar_power[k]
    return max(0.0, tr.max_power[k] - base), max(0.0, base - tr.min_power[k])


def kw_to_action(cs, ev, kw):
    """Charger-side kW -> ev2gym action, honouring the charger's current range."""
    if ev is None or kw == 0:
        return 0.0
    amps = kw * 1000 / w_per_amp(cs, ev)
    if amps > 0:
        # ev2gym zeroes pilots below min_charge_current; do the same explicitly
        return 0.0 if amps < cs.min_charge_current else min(1.0, amps / cs.max_charge_current)
    if cs.max_discharge_current == 0:
        return 0.0
    return max(-1.0, amps / abs(cs.max_discharge_current))


def port_list(env):
    """[(charger, ev or None)] in ev2gym's action order."""
    return [(cs, ev) for cs in env.charging_stations for ev in cs.evs_connected]


def fill_ports(env, new_ports_fn=new_ports, battery_frame=False):
    plist = port_list(env)
    ports = new_ports_fn(len(plist))
    dt = env.timescale * 60
    for i, (cs, ev) in enumerate(plist):
        if ev is None:
            ports["connected"][i] = False
            continue
        # as the EV announces them: no taper, no look inside
        ch, dis = battery_limits_kw(cs, ev) if battery_frame else port_limits_kw(cs, ev)
        drew = drew_kw(cs, ev, cs.evs_connected.index(ev), dt / 3600, battery_frame)
        if "measured_w" in ports.dtype.names:
            ports["measured_w"][i] = drew * 1000
        ports["connected"][i] = True
        ports["soc"][i] = ev.current_capacity / ev.battery_capacity
        ports["capacity_wh"][i] = ev.battery_capacity * 1000
        ports["energy_request_wh"][i] = max(0.0, ev.desired_capacity - ev.current_capacity) * 1000
        ports["departure_s"][i] = (ev.time_of_departure + 1) * dt
        ports["max_charge_w"][i] = ch * 1000
        ports["max_discharge_w"][i] = dis * 1000
        ports["min_soc"][i] = ev.min_battery_capacity / ev.battery_capacity
        ports["v2g"][i] = dis > 0
    return plist, ports


class ArbitratePolicy:
    """ev2gym policy (``get_action(env)``) driving an ``arbitrate``-style allocator.

    use_setpoint=False passes ``setpoint_w=None`` (charge freely within limits),
    used when the scenario has no power setpoints. battery_frame: see module doc.
    """

    def __init__(self, arbitrate, new_ports_fn=new_ports, use_setpoint=True, battery_frame=False):
        self.arbitrate, self.new_ports, self.use_setpoint = arbitrate, new_ports_fn, use_setpoint
        self.battery_frame = battery_frame
        self.calls, self.call_s = 0, 0.0

    def get_action(self, env):
        k = env.current_step
        plist, ports = fill_ports(env, self.new_ports, self.battery_frame)
        tr_of_port = np.array([cs.connected_transformer for cs, _ in plist])
        groups = [(tr, np.flatnonzero(tr_of_port == tr.id)) for tr in env.transformers]
        limits = [transformer_limits_kw(tr, k) for tr, _ in groups]
        sp = env.power_setpoints[k] if self.use_setpoint else None
        shares = split_setpoint(sp, ports, [g for _, g in groups], limits)
        kw = np.zeros(len(plist))
        for (tr, idx), (imp, exp), sp_kw in zip(groups, limits, shares):
            if len(idx) == 0:
                continue
            t0 = time.perf_counter()
            w = self.arbitrate(ports[idx], k * env.timescale * 60,
                               import_limit_w=imp * 1000, export_limit_w=exp * 1000,
                               setpoint_w=None if sp_kw is None else sp_kw * 1000)
            self.call_s += time.perf_counter() - t0
            self.calls += 1
            kw[idx] = np.asarray(w, dtype=np.float64) / 1000
        if self.battery_frame:
            kw = [pilot_kw(cs, ev, p) if ev is not None and p != 0 else 0.0 for (cs, ev), p in zip(plist, kw)]
        return np.array([kw_to_action(cs, ev, p) for (cs, ev), p in zip(plist, kw)])


def split_setpoint(sp, ports, groups, limits):
    """Fleet setpoint (kW) -> one share per transformer group (see module doc)."""
    if sp is None or len(groups) == 1:
        return [sp] * len(groups)
    field, lim = ("max_charge_w", 0) if sp >= 0 else ("max_discharge_w", 1)
    cap = np.array([min(ports[field][g][ports["connected"][g]].sum() / 1000, l[lim])
                    for g, l in zip(groups, limits)])
    w = cap / cap.sum() if cap.sum() > 0 else np.full(len(groups), 1 / len(groups))
    return list(sp * w)
