"""Reference equal-share allocator (a baseline, not our product).

Same signature as ``v2g_rt.arbitrate``; the optional ``dt_s`` (the harness
binds it with functools.partial) lets it cap each port at the energy it can
still take / give in one step.

* per-port charge cap: max_charge_w if the EV still wants energy
  (and <= energy_request_wh over dt_s); discharge cap: max_discharge_w if
  v2g and SoC > min_soc (and <= energy above min_soc over dt_s), so it never
  discharges below min SoC.
* fleet target: setpoint clipped to [-min(sum discharge caps, export limit),
  min(sum charge caps, import limit)]; setpoint None -> charge freely
  (the upper end of that range).
* the target is split equally among the EVs that can move power in that
  direction, water-filling the caps (capped EVs' leftovers go to the rest).
"""
import numpy as np


def waterfill(caps, total):
    """Equal split of ``total`` >= 0 over ``caps`` >= 0, no port above its cap."""
    out = np.zeros_like(caps)
    order = np.argsort(caps)
    left, n = total, np.count_nonzero(caps > 0)
    for i in order:
        if caps[i] <= 0:
            continue
        out[i] = min(caps[i], left / n)
        left -= out[i]
        n -= 1
    return out


def equal_share(ports, now_s, *, import_limit_w, export_limit_w, setpoint_w=None, dt_s=None):
    on = ports["connected"]
    request = np.where(on, ports["energy_request_wh"], 0.0)
    room = np.where(on & ports["v2g"], (ports["soc"] - ports["min_soc"]) * ports["capacity_wh"], 0.0)
    hi = np.where(request > 0, ports["max_charge_w"], 0.0)
    lo = np.where(room > 0, ports["max_discharge_w"], 0.0)
    if dt_s:
        hi = np.minimum(hi, request * 3600 / dt_s)
        lo = np.minimum(lo, np.maximum(room, 0) * 3600 / dt_s)
    up = min(hi.sum(), import_limit_w)
    down = min(lo.sum(), export_limit_w)
    target = up if setpoint_w is None else float(np.clip(setpoint_w, -down, up))
    if target >= 0:
        return waterfill(hi, target)
    return -waterfill(lo, -target)


if __name__ == "__main__":  # self-check: python equal_share.py
    from adapter import new_ports

    p = new_ports(4)
    p["connected"] = [True, True, True, False]
    p["soc"], p["min_soc"], p["capacity_wh"] = 0.5, 0.2, 50e3
    p["energy_request_wh"] = [25e3, 100.0, 25e3, 25e3]
    p["max_charge_w"] = p["max_discharge_w"] = 11e3
    p["v2g"] = [True, True, False, True]
    w = equal_share(p, 0, import_limit_w=1e6, export_limit_w=1e6, setpoint_w=20e3, dt_s=900)
    assert np.allclose(w, [9800, 400, 9800, 0]), w          # port 1 capped at 100 Wh / 0.25 h
    w = equal_share(p, 0, import_limit_w=5e3, export_limit_w=1e6, setpoint_w=20e3, dt_s=900)
    assert np.isclose(w.sum(), 5e3) and w[3] == 0, w        # import limit binds
    w = equal_share(p, 0, import_limit_w=1e6, export_limit_w=15e3, setpoint_w=-30e3, dt_s=900)
    assert np.allclose(w, [-7500, -7500, 0, 0]), w           # export limit, v2g ports only
    w = equal_share(p, 0, import_limit_w=1e6, export_limit_w=1e6, setpoint_w=None)
    assert np.allclose(w, [11e3, 11e3, 11e3, 0]), w          # charge freely
    p["soc"] = 0.2
    w = equal_share(p, 0, import_limit_w=1e6, export_limit_w=1e6, setpoint_w=-30e3, dt_s=900)
    assert np.all(w >= 0), w                                 # nothing above min SoC
    print("equal_share self-check ok")
