"""What the controller reports upstream, built from the loop's snapshot: the site's aggregated
`state`, each EVSE's `evse/<id>`, and when they are worth sending (a move past the deadband, a
change of anything countable, or max_interval_s of silence for `state`)."""
from __future__ import annotations

import datetime
import json
import math

from ... import _core
from ...controller import Snapshot

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def epoch_ms(epoch_s: float) -> int:
    """The message's time in whole ms since the epoch: protobuf's ts, and what JSON's ts shows."""
    return round(epoch_s * 1_000_000) // 1000        # to the µs first, as datetime does: 0.043 is not 0.042999


def timestamp_ms(ms: int) -> str:
    """UTC, ISO 8601 with milliseconds."""
    t = EPOCH + datetime.timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def timestamp(epoch_s: float) -> str:
    return timestamp_ms(epoch_ms(epoch_s))


def ms_of(ts: str) -> int:
    """timestamp_ms's inverse."""
    return (datetime.datetime.fromisoformat(ts) - EPOCH) // datetime.timedelta(milliseconds=1)


def message(body: dict, seq: int, ts, replaced: int = 0) -> dict:
    """seq and ts first, `replaced` when it stands for older unsent ones, then the body."""
    return {"seq": seq, "ts": ts, **({"replaced": replaced} if replaced else {}), **body}


def encode(body: dict, seq: int, epoch_s: float, replaced: int = 0) -> bytes:
    """The JSON message."""
    return json.dumps(message(body, seq, timestamp(epoch_s), replaced), separators=(",", ":"),
                      allow_nan=False).encode()


def _w(x: float) -> float | None:
    return round(float(x), 1) if math.isfinite(x) else None


def state(snap: Snapshot) -> dict:
    """The site as the aggregator sees it: fleet power, the setpoint in force and its source,
    what the fleet can do now, SoC summary, ports by state, Safe State, binding limit."""
    s, ports = snap.site, snap.ports
    setpoint = _w(s["setpoint_w"])
    connected = ports["connected"].astype(bool)
    faulted = ports["faults"] != 0
    socs = [float(x) for x in ports["soc"][connected] if math.isfinite(x)]
    sp = ports["setpoint_w"]
    return {
        "fleet_w": _w(s["fleet_w"]), "fleet_target_w": _w(s["fleet_target_w"]),
        "setpoint_w": setpoint, "setpoint_source": "grid" if setpoint is not None else "default",
        "fleet_min_w": _w(s["fleet_min_w"]), "fleet_max_w": _w(s["fleet_max_w"]),
        "flex_charge_wh": _w(s["flex_charge_wh"]), "flex_discharge_wh": _w(s["flex_discharge_wh"]),
        "import_limit_w": _w(s["import_limit_w"]), "export_limit_w": _w(s["export_limit_w"]),
        "load_shed_w": _w(s["load_shed_w"]),
        "soc": {"min": round(min(socs), 2), "mean": round(sum(socs) / len(socs), 2), "max": round(max(socs), 2)}
        if socs else None,
        "ports": {"charging": int(((sp > 0) & ~faulted).sum()), "discharging": int(((sp < 0) & ~faulted).sum()),
                  "idle": int(((sp == 0) & connected & ~faulted).sum()), "unplugged": int((~connected & ~faulted).sum()),
                  "faulted": int(faulted.sum())},
        "safe_state": [r for r in s["safe_state"] if r != "stopped"],
        "binding": s["binding"],
    }


def evses(snap: Snapshot, site) -> dict[str, dict]:
    """Each EVSE's ports: plugged, setpoint, faults by name; and its power."""
    out: dict[str, dict] = {}
    for port, row in zip(site.ports, snap.ports):
        e = out.setdefault(port.evse, {"power_w": 0.0, "ports": {}})
        faults = [name for name, bit in _core.FAULTS.items() if int(row["faults"]) & bit]
        e["ports"][port.id] = {"connected": bool(row["connected"]), "setpoint_w": _w(row["setpoint_w"]),
                               "soc": round(float(row["soc"]), 3) if math.isfinite(row["soc"]) else None,
                               "faults": faults}
        e["power_w"] += float(row["setpoint_w"])
    for e in out.values():
        e["power_w"] = round(e["power_w"], 1)
    return out


def moved(old: dict | None, new: dict, deadband_w: float) -> bool:
    """new differs from old: a power (a *_w field, at any depth) or an energy over the hour (*_wh)
    by more than the deadband, or appearing or vanishing; anything else at all."""
    if old is None or new.keys() != old.keys():
        return True
    return any(_field_moved(key, old[key], value, deadband_w) for key, value in new.items())


def _field_moved(key: str, before, value, deadband_w: float) -> bool:
    if isinstance(value, dict) and isinstance(before, dict):
        return moved(before, value, deadband_w)
    if key.endswith(("_w", "_wh")) and value is not None and before is not None:
        return abs(value - before) > deadband_w     # an energy over the hour: the same number in Wh
    return value != before
