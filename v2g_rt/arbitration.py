"""arbitrate(): one cycle's interlock and arbitration for a list of ports, by the native cycle's code.

For callers outside the loop: planners, benchmarks (bench/ev2gym), what-if tools.
One call is one cycle without ramps or ordering hysteresis. Calls in sequence (as many ports as
the last call, a later now_s) keep the loop's closed loop: each port's previous answer is what it
was given, its measured_w (NaN: unknown) what it took, and a port that took less for settle_s is
capped near that, the rest going to the others (see the README's control law).

Bad rows get defined behaviour and are counted in `rejected` (by reason):
  capacity not finite or <= 0, SoC not finite  -> the port gets 0 W
  SoC outside 0..1                             -> clamped
  power limits not finite or < 0               -> 0 W in that direction
  min_soc not finite                           -> no discharge; outside 0..1 -> clamped
  energy_request not finite or < 0             -> unknown (no energy cap, ranked without it)
  departure not finite                         -> no deadline; in the past -> served first among the
                                                  EVs that still want energy, never discharges
Limits or a setpoint that are not finite, or negative limits, raise ValueError.
"""
from __future__ import annotations

import math
import threading
from collections import Counter

import numpy as np

from . import _core
from .site import Control

PORT_FIELDS = [("connected", "?"), ("soc", "f8"), ("capacity_wh", "f8"), ("energy_request_wh", "f8"),
               ("departure_s", "f8"), ("max_charge_w", "f8"), ("max_discharge_w", "f8"), ("min_soc", "f8"),
               ("v2g", "?")]
OPTIONAL_FIELDS = [("measured_w", "f8")]       # arrays without them keep working
PORT_DTYPE = np.dtype(PORT_FIELDS + OPTIONAL_FIELDS)
NO_DEADLINE_S = 1e9

rejected: Counter[str] = Counter()
_lock = threading.Lock()
# arbitrate() runs the cycle's own interlock and arbitration with site.Control's defaults.
_core.configure_arbitrate(**{name: getattr(Control(), name) for name in _core.CONTROL_OPTIONS})


def new_ports(n: int) -> np.ndarray:
    """n empty ports (not connected) with the fields arbitrate() reads."""
    if not 0 <= n <= _core.CAPACITY["ports"]:
        raise ValueError(f"n must be 0..{_core.CAPACITY['ports']}, not {n}")
    ports = np.zeros(n, PORT_DTYPE)
    ports["min_soc"] = 0.2
    ports["measured_w"] = np.nan
    return ports


NOW_LIMIT_S = 9e9


def _finite_nonneg(name: str, v) -> float:
    v = float(v)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number of W >= 0, not {v!r}")
    return v


def arbitrate(ports: np.ndarray, now_s: float, *, import_limit_w: float, export_limit_w: float,
              setpoint_w: float | None = None, dt_s: float = 3600.0) -> np.ndarray:
    """W per port (+ charge, − discharge) for a fleet under one import/export limit.

    ports: structured array with the fields of new_ports(); departure_s on the clock of now_s.
    setpoint_w: the fleet setpoint (signed); None charges as much as the limits allow.
    dt_s: how long the answer holds at the EVs: no port is given more than it can absorb before
    its energy request is met, or give above its minimum SoC, within it.
    """
    missing = [f for f, _ in PORT_FIELDS if ports.dtype.names is None or f not in ports.dtype.names]
    if missing:
        raise ValueError(f"ports lacks field(s) {', '.join(missing)}; build it with new_ports()")
    imp = _finite_nonneg("import_limit_w", import_limit_w)
    exp = _finite_nonneg("export_limit_w", export_limit_w)
    now_s = float(now_s)
    if not abs(now_s) < NOW_LIMIT_S:       # the loop's clock is int64 ns; NaN fails too
        raise ValueError(f"now_s must be a number of s within +-{NOW_LIMIT_S:g}, not {now_s!r}")
    dt_s = float(dt_s)
    if not (math.isfinite(dt_s) and dt_s > 0):
        raise ValueError(f"dt_s must be a finite number of s > 0, not {dt_s!r}")
    sp = math.nan
    if setpoint_w is not None:
        sp = float(setpoint_w)
        if not math.isfinite(sp):
            raise ValueError(f"setpoint_w must be finite or None, not {setpoint_w!r}")

    conn = ports["connected"].astype(bool)

    def column(name, bad, fix, reason):
        v = np.asarray(ports[name], np.float64).copy()
        hit = conn & bad(v)
        if hit.any():
            rejected[reason] += int(hit.sum())
            v[hit] = fix
        return v

    cap = column("capacity_wh", lambda v: ~(np.isfinite(v) & (v > 0)), 1.0, "capacity")
    soc = column("soc", lambda v: ~np.isfinite(v), 0.0, "soc")
    off = conn & ~(np.isfinite(ports["capacity_wh"]) & (ports["capacity_wh"] > 0) & np.isfinite(ports["soc"]))
    soc = column_clamp(soc, conn, "soc_clamped")
    pch = column("max_charge_w", lambda v: ~(np.isfinite(v) & (v >= 0)), 0.0, "power_limit")
    pdis = column("max_discharge_w", lambda v: ~(np.isfinite(v) & (v >= 0)), 0.0, "power_limit")
    min_soc = column("min_soc", lambda v: ~np.isfinite(v), 1.0, "min_soc")
    min_soc = column_clamp(min_soc, conn, "min_soc_clamped")
    req = column("energy_request_wh", lambda v: ~(np.isfinite(v) & (v >= 0)), math.nan, "energy_request")
    measured = (np.asarray(ports["measured_w"], np.float64) if "measured_w" in ports.dtype.names
                else np.full(len(ports), math.nan))
    measured = np.where(np.isfinite(measured), measured, math.nan)
    dep = column("departure_s", lambda v: ~np.isfinite(v), now_s + NO_DEADLINE_S, "departure")
    connected = (conn & ~off).astype(np.uint8)
    out = np.zeros(len(ports))
    with _lock:
        _core.arbitrate_rows(connected, soc, cap, req, dep - now_s, pch, pdis, min_soc,
                             ports["v2g"].astype(np.uint8), np.ascontiguousarray(measured), now_s, imp, exp,
                             sp, dt_s, out)
    return out


def column_clamp(v: np.ndarray, conn: np.ndarray, reason: str) -> np.ndarray:
    hit = conn & ((v < 0) | (v > 1))
    if hit.any():
        rejected[reason] += int(hit.sum())
        v = np.clip(v, 0.0, 1.0)
    return v
