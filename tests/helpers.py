"""Helpers for tests: sites at normal priority and the EV side of sessions."""
from __future__ import annotations

from v2g_rt import Control, Controller, RealTime, depot
from v2g_rt.sim.session import Session

S = 1_000_000_000
NORMAL_PRIORITY = RealTime(priority=0, cpu=None, lock_memory=False)


def make_site(ports=50, **kw):
    kw.setdefault("rt", NORMAL_PRIORITY)
    kw.setdefault("control", Control(port_ramp_w_per_s=float("inf")))
    return depot(ports, **kw)


def ev(**kw) -> Session:
    base = dict(soc=0.5, capacity_wh=60_000, energy_request_wh=20_000, departure_in_s=8 * 3600,
                max_charge_w=11_000, max_discharge_w=11_000, min_soc=0.2, v2g=True)
    base.update(kw)
    return Session(**base)


def plug_all(ctrl: Controller, t_ns: int | None = 0, **kw) -> None:
    """Every port gets an EV; departures spread over 1..8 h."""
    for i, pid in enumerate(ctrl.port_ids):
        ev(**{"departure_in_s": 3600 * (1 + i % 8), **kw}).publish(ctrl, pid, t_ns)
