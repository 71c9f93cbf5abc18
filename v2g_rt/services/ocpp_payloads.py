"""What OCPP payloads mean to the controller, and the profiles it sends: pure functions, no I/O.

Readings come in the `ocpp` package's snake_case form. Signs follow the site's convention:
positive is power into the vehicle, so Power.Active.Export counts negative.

Profiles. The purpose/stack-level scheme:
- stack level 0, TxDefaultProfile on evseId 0, id FALLBACK_ID, set at every BootNotification,
  persistent (no validity): charge only, at the station's fallback share. It is what a station
  runs when it has heard nothing from us, and what it falls back to when our TxProfile expires.
  A ChargingStationMaxProfile would cap every later profile too, so our setpoints could never
  exceed the fallback; a TxDefaultProfile is replaced, not capped, by a TxProfile.
- stack level 1, TxProfile per evseId and transaction, id TX_ID_BASE + evseId: the port's shaped
  setpoint, valid for a limited time (the dead-man). OCPP 2.0.1 limits are charge-only, so a
  discharge setpoint becomes 0 W; OCPP 2.1 gets operationMode CentralSetpoint with the signed
  setpoint, bounded by limit and dischargeLimit, and maxOfflineDuration with
  invalidAfterOfflineDuration, so a station that lost us drops it even if its clock is wrong.
"""
from __future__ import annotations

import datetime as dt


V201, V21 = "ocpp2.0.1", "ocpp2.1"
FALLBACK_ID = 1
TX_ID_BASE = 100
POWER = {"Power.Active.Import": 1.0, "Power.Active.Export": -1.0}
UNIT_W = {"W": 1.0, "kW": 1e3}
# A connector in these states has a vehicle on it (OCPP 2.0.1 ConnectorStatusEnumType).
OCCUPIED = ("Occupied",)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def meter_readings(meter_values) -> list[tuple[str | None, str, float]]:
    """(timestamp, kind, value) for every sampled value the controller uses: power_w (the sum of
    import and export of one meter value, W) and soc (0..1)."""
    out = []
    for mv in meter_values or ():
        power, soc = None, None
        for sv in mv.get("sampled_value") or ():
            measurand = sv.get("measurand", "Energy.Active.Import.Register")
            if sv.get("phase"):
                continue                              # a per-phase value; the total is reported too
            try:
                value = float(sv["value"])
            except (KeyError, TypeError, ValueError):
                continue
            unit = (sv.get("unit_of_measure") or {}).get("unit", "W")
            multiplier = 10.0 ** (sv.get("unit_of_measure") or {}).get("multiplier", 0)
            if measurand in POWER and unit in UNIT_W:
                power = (power or 0.0) + POWER[measurand] * value * UNIT_W[unit] * multiplier
            elif measurand == "SoC":
                soc = value / 100.0
        if power is not None:
            out.append((mv.get("timestamp"), "power_w", power))
        if soc is not None:
            out.append((mv.get("timestamp"), "soc", soc))
    return out


def charging_needs(needs: dict, node, now: dt.datetime) -> list[tuple[str, float]]:
    """NotifyEVChargingNeeds' charging_needs as port sources: AC currents become W by the EVSE's
    phases and phase voltage; the departure becomes seconds from now."""
    out = []
    departure = parse_time(needs.get("departure_time")) if needs.get("departure_time") else None
    if departure is not None:
        out.append(("departure_in_s", (departure - now).total_seconds()))
    ac = needs.get("ac_charging_parameters")
    dc = needs.get("dc_charging_parameters")
    if ac:
        out.append(("energy_request_wh", float(ac["energy_amount"])))
        out.append(("max_charge_w", float(ac["ev_max_current"]) * node.watts_per_amp))
    if dc:
        if dc.get("energy_amount") is not None:
            out.append(("energy_request_wh", float(dc["energy_amount"])))
        if dc.get("ev_max_power") is not None:
            out.append(("max_charge_w", float(dc["ev_max_power"])))
        else:
            out.append(("max_charge_w", float(dc["ev_max_current"]) * float(dc["ev_max_voltage"])))
        if dc.get("ev_energy_capacity") is not None:
            out.append(("capacity_wh", float(dc["ev_energy_capacity"])))
        if dc.get("state_of_charge") is not None:
            out.append(("soc", float(dc["state_of_charge"]) / 100.0))
    v2x = needs.get("v2x_charging_parameters")           # OCPP 2.1
    if v2x and v2x.get("max_discharge_power") is not None:
        out.append(("max_discharge_w", float(v2x["max_discharge_power"])))
        out.append(("v2g", 1.0 if float(v2x["max_discharge_power"]) > 0 else 0.0))
    return out


def _schedule(period: dict) -> list[dict]:
    return [{"id": 1, "charging_rate_unit": "W", "charging_schedule_period": [{"start_period": 0, **period}]}]


def fallback_profile(limit_w: float) -> dict:
    """The persistent stack-level-0 default: charge only, at most limit_w, every transaction."""
    return {"evse_id": 0, "charging_profile": {
        "id": FALLBACK_ID, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Relative", "charging_schedule": _schedule({"limit": round(max(limit_w, 0.0), 1)})}}


def tx_profile(version: str, evse_id: int, transaction_id: str, setpoint_w: float, now: dt.datetime,
               valid_s: int) -> dict:
    """The port's setpoint as a TxProfile from now, valid for valid_s (OCPP 2.1: also offline)."""
    w = round(setpoint_w, 1)
    profile = {"id": TX_ID_BASE + evse_id, "stack_level": 1, "charging_profile_purpose": "TxProfile",
               "charging_profile_kind": "Absolute", "transaction_id": transaction_id,
               "valid_to": iso(now + dt.timedelta(seconds=valid_s))}
    if version == V21:
        profile["charging_schedule"] = _schedule({"operation_mode": "CentralSetpoint", "setpoint": w,
                                                  "limit": max(w, 0.0), "discharge_limit": min(w, 0.0)})
        profile["max_offline_duration"] = valid_s
        profile["invalid_after_offline_duration"] = True
    else:
        profile["charging_schedule"] = _schedule({"limit": max(w, 0.0)})
    profile["charging_schedule"][0]["start_schedule"] = iso(now)
    return {"evse_id": evse_id, "charging_profile": profile}


def fallback_share_w(site, evse_id: str) -> float:
    """What an EVSE may take on its own with every station on its fallback at once: along its
    path to the grid, each node's import limit (the grid's less its largest non-EV load) shared
    by port count, and never above the EVSE's own limit."""
    nodes = {n.id: n for n in site.nodes}
    ports_below: dict[str, int] = {}
    for p in site.ports:
        node = nodes[p.evse]
        while node is not None:
            ports_below[node.id] = ports_below.get(node.id, 0) + 1
            node = nodes.get(node.parent) if node.parent else None
    mine = ports_below.get(evse_id, 0)
    share = nodes[evse_id].import_limit_w
    node = nodes[evse_id]
    while node is not None:
        limit = node.import_limit_w - (node.base_load_w[1] if node.parent is None else 0.0)
        share = min(share, max(limit, 0.0) * mine / ports_below[node.id])
        node = nodes.get(node.parent) if node.parent else None
    return share
