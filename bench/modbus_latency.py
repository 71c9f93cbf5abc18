"""Meter value change -> visible in the loop's image, through the Modbus service.

A SunSpec meter (pymodbus server on loopback, v2g_rt.sim.peers.modbus) changes its power; the
controller's real-time loop runs (1 ms period, CLOCK_MONOTONIC) with the Modbus service polling
the meter at period_ms; we note when the new value appears in the loop's snapshot. The latency
is about one poll period on average (the change waits for the next poll) plus the request and
one cycle. Prints p50/p99 per period and writes JSON.

    python -P bench/modbus_latency.py [--changes 200] [--periods 100,10] [--json out.json]
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from v2g_rt import Controller, config
from v2g_rt.bench import machine, write_results
from v2g_rt.services.modbus import ModbusService
from v2g_rt.sim.peers.modbus import MeterPeer

SITE = """
[site]
name = "modbus-bench"
period_ms = 1
[rt]
priority = 0
lock_memory = false
cpu_dma_latency_us = -1
[node.grid]
kind = "grid"
import_limit_w = 1000000
export_limit_w = 1000000
meter_max_age_s = 5
[node.evse01]
kind = "evse"
parent = "grid"
port_max_charge_w = 11000
[modbus.meter]
role = "meter"
host = "127.0.0.1"
port = {port}
map = "sunspec"
period_ms = {period_ms}
node = "grid"
"""


def measure(period_ms: float, changes: int) -> dict:
    """Latencies (ms) from set_power() to the loop's snapshot showing it, for `changes` changes."""
    with MeterPeer("sunspec", power_w=0) as peer, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.toml"
        path.write_text(SITE.format(port=peer.port, period_ms=period_ms))
        site = config.load(path)
        ctrl = Controller(site)
        ctrl.start()
        service = ModbusService(ctrl, site.sections["modbus"])
        service.start()
        out = []
        try:
            value = 0
            for _ in range(changes):
                value = (value + 10) % 30000 or 10
                time.sleep(random.uniform(0, period_ms / 1e3))       # changes fall anywhere in a poll period
                peer.set_power(value)
                t0 = peer.changed_ns
                deadline = time.monotonic() + 10
                while ctrl.snapshot().node("grid")["measured_w"] != value:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"value never arrived: {service.stats()}")
                    time.sleep(0.0002)
                out.append((time.monotonic_ns() - t0) / 1e6)
            stats = service.stats()["devices"]["meter"]
        finally:
            service.stop()
            ctrl.stop()
    a = np.array(out)
    return {"period_ms": period_ms, "changes": changes, "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 2),
            "polls": stats["polls"], "late_polls": stats["late_polls"], "errors": stats["errors"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--periods", default="100,10", help="poll periods in ms, comma separated")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    results = {"machine": machine(),
               "runs": [measure(float(ms), args.changes) for ms in args.periods.split(",")]}
    for r in results["runs"]:
        print(f"period {r['period_ms']:g} ms: change -> image p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
              f"max {r['max_ms']} ms ({r['changes']} changes, {r['polls']} polls, {r['late_polls']} late)")
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    main()
