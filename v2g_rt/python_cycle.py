"""A pure-Python twin of the cycle's work, kept only as the baseline of `v2g-rt bench`.

It does what native/cycle.pxi does for a site with EVs plugged in: per-port
envelope, least-laxity ordering, greedy allocation under every node's headroom,
ramp shaping, and a published copy of the outputs. It is not the product: the
controller never runs it, and it is written for clarity, not to match the native
code bit for bit.
"""
from __future__ import annotations

import math

NEVER_S = 1e12


class PythonCycle:
    def __init__(self, site, sessions: dict, setpoint_w: float, ramp_w_per_s: float = 50_000.0):
        index = {n.id: i for i, n in enumerate(site.nodes)}
        self.import_w = [n.import_limit_w for n in site.nodes]
        self.export_w = [n.export_limit_w for n in site.nodes]
        self.paths = []
        for p in site.ports:
            path, node = [], p.evse
            while node is not None:
                path.append(index[node])
                node = site.node(node).parent
            self.paths.append(path)
        self.rating = [(p.rating_charge_w, p.rating_discharge_w) for p in site.ports]
        self.sessions = [sessions.get(p.id) for p in site.ports]
        self.setpoint_w = setpoint_w
        self.ramp = ramp_w_per_s
        self.out = [0.0] * len(site.ports)
        self.published: list = []

    def run(self, now_s: float, dt_s: float) -> None:
        n = len(self.out)
        hi, lo, key = [0.0] * n, [0.0] * n, [4 * NEVER_S] * n
        charging = self.setpoint_w >= 0
        for i, s in enumerate(self.sessions):                     # interlock: the envelope
            if s is None or not s.connected:
                continue
            hi[i] = 0.0 if s.soc >= 1.0 else min(self.rating[i][0], s.max_charge_w)
            lax = s.departure_in_s - now_s - (s.energy_request_wh * 3600 / hi[i] if hi[i] > 0 else 0)
            if s.v2g and s.soc > s.min_soc and lax > 1800:
                e_avail = (s.soc - s.min_soc) * s.capacity_wh * 3600 / dt_s
                lo[i] = -min(self.rating[i][1], s.max_discharge_w, e_avail)
            if charging and hi[i] > 0:
                key[i] = lax - (60 if self.out[i] > 0 else 0)
            elif not charging and lo[i] < 0:
                key[i] = -lax - s.soc - (60 if self.out[i] < 0 else 0)
        order = sorted(range(n), key=key.__getitem__)            # arbitrate
        room = list(self.import_w if charging else self.export_w)
        remaining = abs(self.setpoint_w)
        target = [0.0] * n
        for i in order:
            give = min(hi[i] if charging else -lo[i], remaining)
            for a in self.paths[i]:
                give = min(give, room[a])
            give = max(give, 0.0)
            for a in self.paths[i]:
                room[a] -= give
            remaining -= give
            target[i] = give if charging else -give
        step = self.ramp * dt_s                                   # write: ramp increases only
        for i in range(n):
            prev, tgt = self.out[i], target[i]
            base = prev if prev * tgt > 0 else 0.0
            if abs(tgt) - abs(base) > step:
                tgt = base + math.copysign(step, tgt)
            self.out[i] = tgt
        self.published = list(self.out)                           # publish
