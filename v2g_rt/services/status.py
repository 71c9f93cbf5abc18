"""`v2g-rt status`: a running controller answers on a UNIX socket with its snapshot and stats."""
from __future__ import annotations

import json
import math
import os
import socketserver
import time
from pathlib import Path

from ..controller import BINDINGS, Controller
from ..localsock import LocalServer, request
from ..site import Site
from . import SocketService


def control_socket(site: Site | None = None) -> Path:
    """The control socket lives beside the status socket."""
    return default_socket(site).with_name("control.sock")


def default_socket(site: Site | None = None) -> Path:
    if site is not None and site.status_socket:
        return Path(site.status_socket)
    runtime = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.geteuid() == 0 else f"/tmp/v2g-rt-{os.getuid()}")
    return Path(runtime) / "v2g-rt" / "status.sock"


def _num(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def report(ctrl: Controller, services=None) -> dict:
    """The snapshot and statistics of a controller as plain JSON-able data; `services`, when given,
    returns each service's health (Supervisor.health)."""
    snap = ctrl.snapshot()
    site = {k: _num(v) for k, v in snap.site.items()}
    nodes = [{"id": nid, "binding": BINDINGS[int(r["binding"])], "fleet_w": float(r["fleet_w"]),
              "import_headroom_w": float(r["import_headroom_w"]), "export_headroom_w": float(r["export_headroom_w"]), "overload_w": float(r["overload_w"]),
              "measured_w": _num(float(r["measured_w"])), "non_ev_w": _num(float(r["non_ev_w"]))}
             for nid, r in zip(snap.node_ids, snap.nodes)]
    stats = ctrl.stats()
    link = {n.id: n.link for n in ctrl.site.nodes}
    ports = [{"id": pid, "connected": bool(r["connected"]), "setpoint_w": float(r["setpoint_w"]),
              "target_w": float(r["target_w"]), "min_w": float(r["min_w"]), "max_w": float(r["max_w"]),
              "soc": _num(float(r["soc"])), "binding": BINDINGS[int(r["binding"])],
              "binding_node": snap.node_ids[r["binding_node"]] if r["binding_node"] >= 0 else None,
              "faults": int(r["faults"]), "link": link[port.evse],
              "outputs_refused": stats["outputs_refused"].get(pid, 0)}
             for pid, r, port in zip(snap.port_ids, snap.ports, ctrl.site.ports)]
    plc = [{k: _num(v) for k, v in m.items()} for m in ctrl.device_stats().get("plc", ())]
    return {"site_name": ctrl.site.name, "site": site, "nodes": nodes, "ports": ports, "plc": plc, "commands": ctrl.scheduled(),
            "faults": [p["id"] for p in ports if p["faults"]], "stats": stats,
            "services": services() if services else {}}


class StatusServer(SocketService):
    """Serves report(ctrl, services) as one JSON document per connection."""

    name = "status"

    def __init__(self, ctrl: Controller, path: Path, services=None):
        super().__init__()
        self.path = path
        self.served = 0
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(json.dumps(report(ctrl, services)).encode() + b"\n")
                outer.served += 1

        self.server = LocalServer(path, Handler, ctrl.site.operator_group, "status")

    def stats(self) -> dict:
        return {"clients_served": self.served}


def query(path: Path, timeout: float = 2.0) -> dict:
    """The status of the controller serving on path; ClientError (a ConnectionError) says why not."""
    return request(path, None, "status", timeout)


def render(doc: dict) -> str:
    """Human-readable status: site, nodes with their binding limit, ports, faults, stats."""
    s, st = doc["site"], doc["stats"]
    kw = lambda w: "-" if w is None else f"{w / 1e3:8.1f}"  # noqa: E731
    lines = [f"site {doc['site_name']}  cycle {s['cycle']}  binding {s['binding']}  "
             f"safe state {'+'.join(s['safe_state']) or 'no'}",
             f"  fleet {kw(s['fleet_w'])} kW  setpoint {kw(s['setpoint_w'])} kW  "
             f"import limit {kw(s['import_limit_w'])} kW  export limit {kw(s['export_limit_w'])} kW",
             f"  ports charging {s['ports_charging']}  discharging {s['ports_discharging']}  "
             f"frequency {s['frequency_hz'] or '-'} Hz", "", "nodes:"]
    for n in doc["nodes"]:
        lines.append(f"  {n['id']:<12} {kw(n['fleet_w'])} kW  headroom +{kw(n['import_headroom_w'])}"
                     f" / -{kw(n['export_headroom_w'])} kW  binding {n['binding']}"
                     + (f"  OVERLOAD {kw(n['overload_w'])} kW relieved by discharge" if n["overload_w"] else ""))
    lines.append("ports:")
    for p in doc["ports"]:
        soc = "-" if p["soc"] is None else f"{p['soc']:.2f}"
        via = f" ({p['binding_node']})" if p["binding_node"] else ""
        lines.append(f"  {p['id']:<12} {'EV' if p['connected'] else '--'} soc {soc:>4}  {kw(p['setpoint_w'])} kW"
                     f"  [{kw(p['min_w'])} .. {kw(p['max_w'])}]  {p['binding']}{via}"
                     + (f"  faults 0x{p['faults']:x}" if p["faults"] else "")
                     + (f"  {p['outputs_refused']} outputs refused by link {p['link']}" if p["outputs_refused"] else ""))
    if doc.get("commands"):
        lines.append("grid commands:")
    for c in doc.get("commands", []):
        start = "now" if c["starts_in_s"] <= 0 else f"in {c['starts_in_s']:.0f} s"
        lines.append(f"  {c['kind']:<12} {c['state']:<7} {c['value_w'] / 1e3:8.1f} kW  from {start}, "
                     f"expires in {c['expires_in_s']:.0f} s"
                     f"  {time.strftime('%H:%M:%S', time.gmtime(c['starts_at']))}-"
                     f"{time.strftime('%H:%M:%SZ', time.gmtime(c['expires_at']))}"
                     + (f"  id {c['id']!r} from {c['source']}" if c["id"] is not None else ""))
    lines += _plc(doc.get("plc") or ())
    lat, cmp_ = st["wake_latency"], st["compute"]
    lines += ["", f"faults: {', '.join(doc['faults']) or 'none'}",
              f"stats: {st['cycles']} cycles, {st['overruns']} overruns; wake latency p99 "
              f"{lat.get('p99_us', '-')} us max {lat.get('max_us', '-')} us; compute p99 {cmp_.get('p99_us', '-')} us"]
    if doc.get("services"):
        lines.append("services:")
    for name, h in doc.get("services", {}).items():
        known = "  ".join(f"{k.replace('_', ' ')} {v}" for k, v in h.items()
                          if k not in ("alive", "devices", "stations", "refused"))
        if h.get("refused"):                                  # connections a service turned away (OCPP)
            known += "  refused " + ", ".join(f"{code} {n}" for code, n in h["refused"].items())
        lines.append(f"  {name:<12} {'up' if h['alive'] else 'DOWN'}  {known}")
        for device, d in h.get("devices", {}).items():       # per device of a service (Modbus)
            errors = ", ".join(f"{code} {n}" for code, n in d.get("errors", {}).items()) or "no errors"
            lines.append(f"    {device:<12} {'connected' if d['connected'] else 'NOT CONNECTED'}  polls {d['polls']}  "
                         f"values {d['values']}  {errors}" + (f"  retry in {d['backoff_s']} s" if d.get("backoff_s") else "")
                         + (f"  port {d['port']}: {_setpoint(d)}, {d['writes']} writes" if "port" in d else ""))
        for station, d in h.get("stations", {}).items():     # per station of a service (OCPP)
            errors = ", ".join(f"{code} {n}" for code, n in d.get("errors", {}).items()) or "no errors"
            lines.append(f"    {station:<12} {d['version'] + ' connected' if d['connected'] else 'NOT CONNECTED'}  "
                         f"transactions {d['transactions']}  values {d.get('values', 0)}  profiles accepted "
                         f"{d.get('setpoint_accepted', 0)} of {d.get('setpoint_sent', 0)}  {errors}")
    return "\n".join(lines)


BAD_MME = ("wrong_mmv", "wrong_type", "wrong_length", "unknown_mac", "truncated")


def _plc(modems) -> list[str]:
    """Per port with a PLC modem: link, loss over its window, attenuation, bad MMEs."""
    lines = ["plc:"] if modems else []
    for m in modems:
        atten = "-" if m["attenuation_db"] is None else f"{m['attenuation_db']:.1f} dB"
        bad = {k: m[k] for k in BAD_MME if m[k]}
        lines.append(f"  {m['port']:<12} link {'up' if m['link_up'] else 'DOWN'}  loss {m['loss'] * 100:5.1f} % "
                     f"of {m['window_filled']}/{m['window']} probes  attenuation {atten}"
                     + ("  ERR_PLC_ATTENUATION" if m["attenuation_high"] else "")
                     + (f"  ERR_PLC_BAD_MME {', '.join(f'{k} {n}' for k, n in bad.items())}" if bad else ""))
    return lines


def _setpoint(d: dict) -> str:
    """What a Modbus-driven charger was last told."""
    if d["setpoint_w"] is None:
        return "nothing written yet"
    return f"{d['setpoint_w'] / 1e3:.1f} kW" + ("" if d["enabled"] else ", stopped")
