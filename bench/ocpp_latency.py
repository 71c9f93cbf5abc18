"""OCPP: setpoint change -> SetChargingProfile at the station, and what 50 stations cost the loop.

latency: the real-time loop (1 ms) with the OCPP service and one simulated station over mutual TLS
on loopback (v2g_rt.sim.peers.ocpp); a fleet setpoint command moves the port's output at once
(no ramp, no deadband) and we note when the station has the TxProfile carrying it. Measured from
the command's submission, so it includes up to one cycle before the output moves. Changes are
spaced wider than the service's per-station rate limit (lowered to --min-interval-ms here).

fleet: the loop's wake-latency p99 over a window with no station, then with --stations stations
connected and reporting (run in a child process, so this process's memory growth is the
controller's own per connected station).

    python -P bench/ocpp_latency.py [--changes 1000] [--stations 50] [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from v2g_rt import Controller, config
from v2g_rt.bench import machine, percentiles, write_results
from v2g_rt.services.ocpp import OcppService
from v2g_rt.sim.peers.ocpp import Fleet, SimStation, client_context

HEAD = """
[site]
name = "ocpp-bench"
period_ms = 1
[rt]
priority = {priority}
lock_memory = false
cpu_dma_latency_us = -1
[control]
port_ramp_w_per_s = "unlimited"
deadband_w = 0
[node.grid]
kind = "grid"
import_limit_w = 10000000
export_limit_w = 10000000
[ocpp]
listen = "127.0.0.1:9443"
ca = "pki/ca.pem"
cert = "pki/controller.pem"
key = "pki/controller.key"
"""
STATION = '[node.{sid}]\nkind = "evse"\nparent = "grid"\nlink = "ocpp"\nport_max_charge_w = 11000\n'


def _site(tmp: Path, ids: list[str], priority: int):
    r = subprocess.run([sys.executable, "-P", "-m", "v2g_rt.cli", "pki", "init", str(tmp / "pki"),
                        *[a for s in ids for a in ("--station", s)]], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr)
    (tmp / "site.toml").write_text(HEAD.format(priority=priority) + "".join(STATION.format(sid=s) for s in ids))
    return config.load(tmp / "site.toml")


def _wait(pred, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {seconds} s")
        time.sleep(0.0002)


def _arrival(station: SimStation, seen: int, w: float) -> float | None:
    """When the station received a TxProfile limited to w, among the profiles after the first `seen`."""
    for at, _, prof in station.profiles[seen:]:
        period = prof["charging_schedule"][0]["charging_schedule_period"][0]
        if prof["charging_profile_purpose"] == "TxProfile" and period["limit"] == w:
            return at
    return None


def latency(changes: int, min_interval_ms: float, priority: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        site = _site(tmp, ["cs01"], priority)
        ctrl = Controller(site)
        ctrl.start()
        service = OcppService(ctrl, dataclasses.replace(site.sections["ocpp"], port=0))
        service.min_interval_s = min_interval_ms / 1e3
        service.start()
        out = []
        try:
            with Fleet() as fleet:
                st = fleet.start(SimStation("cs01", f"wss://localhost:{service.port}/ocpp/cs01",
                                            client_context(tmp / "pki", "cs01")))
                _wait(lambda: st.received("TxProfile"), "the first TxProfile")
                for k in range(changes):
                    w = 1000.0 + (k % 10) * 1000.0 + (k % 7)         # never the value before
                    time.sleep(min_interval_ms * 1.2e-3)
                    seen = len(st.profiles)
                    t0 = time.monotonic()
                    if not ctrl.submit({"kind": "setpoint", "id": f"b{k}", "value_w": w, "expires_in_s": 60}):
                        raise RuntimeError("setpoint refused")
                    _wait(lambda: _arrival(st, seen, w) is not None, f"profile {k}")
                    out.append((_arrival(st, seen, w) - t0) * 1e3)
                errors = service.stats()["stations"]["cs01"]["errors"]
        finally:
            service.stop()
            ctrl.stop()
    a = np.array(out)
    return {"changes": changes, "min_interval_ms": min_interval_ms, "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 2), "errors": errors}


def _fleet_child(pki: str, port: int, n: int) -> None:
    """The stations, in a process of their own: says "ready" once all booted, stops at stdin's end."""
    with Fleet() as fleet:
        stations = [fleet.start(SimStation(s, f"wss://localhost:{port}/ocpp/{s}", client_context(pki, s),
                                           report_s=1.0)) for s in _ids(n)]
        for s in stations:
            s.ready.wait(60)
        print("ready" if all(s.error is None for s in stations) else "failed", flush=True)
        sys.stdin.read()


def _ids(n: int) -> list[str]:
    return [f"cs{k:02d}" for k in range(1, n + 1)]


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _wake_p99(ctrl: Controller, seconds: float) -> float:
    """Wake latency p99 (us) over the next `seconds`, from the histogram's growth."""
    before = ctrl.histograms()["wake_latency"].astype(np.int64)
    time.sleep(seconds)
    h = ctrl.histograms()["wake_latency"].astype(np.int64) - before
    return percentiles(h, math.inf)["p99_us"]


def fleet(n: int, seconds: float, priority: int = 0) -> dict:
    ids = _ids(n)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        site = _site(tmp, ids, priority)
        ctrl = Controller(site)
        ctrl.start()
        service = OcppService(ctrl, dataclasses.replace(site.sections["ocpp"], port=0))
        service.start()
        child = None
        try:
            idle = _wake_p99(ctrl, seconds)
            rss0 = _rss_kb()
            child = subprocess.Popen([sys.executable, "-P", __file__, "--fleet-child", str(tmp / "pki"),
                                      str(service.port), str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("the fleet never booted")
            _wait(lambda: all(s["booted"] and s["connected"] for s in service.stats()["stations"].values()),
                  "every station booted", 60)
            connected = _wake_p99(ctrl, seconds)
            rss1 = _rss_kb()
            stats = service.stats()["stations"]
        finally:
            if child is not None:
                child.stdin.close()
                child.wait(30)
            service.stop()
            ctrl.stop()
    return {"stations": n, "window_s": seconds, "wake_p99_us_idle": idle, "wake_p99_us_connected": connected,
            "ratio": round(connected / max(idle, 1.0), 2), "rss_kb_per_station": round((rss1 - rss0) / n, 1),
            "errors": sum(sum(s["errors"].values()) for s in stats.values())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--changes", type=int, default=1000)
    p.add_argument("--min-interval-ms", type=float, default=50.0)
    p.add_argument("--stations", type=int, default=50)
    p.add_argument("--window-s", type=float, default=10.0)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--priority", type=int, default=0, help="the loop's SCHED_FIFO priority (0: normal)")
    p.add_argument("--fleet-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fleet_child:
        pki, port, n = args.fleet_child
        return _fleet_child(pki, int(port), int(n))
    results = {"machine": machine(),
               "priority": args.priority, "latency": latency(args.changes, args.min_interval_ms, args.priority),
               "fleet": fleet(args.stations, args.window_s, args.priority)}
    lat, fl = results["latency"], results["fleet"]
    print(f"setpoint -> TxProfile at the station: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
          f"max {lat['max_ms']} ms ({lat['changes']} changes)")
    print(f"{fl['stations']} stations: wake p99 {fl['wake_p99_us_connected']:g} us vs {fl['wake_p99_us_idle']:g} us "
          f"with none ({fl['ratio']}x); {fl['rss_kb_per_station']} KiB per station")
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    main()
