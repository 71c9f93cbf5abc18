"""50 chargers driven over Modbus TCP: what the service costs, and the loop's wake latency with and
without that traffic, in one run.

    python -P bench/modbus_evse.py [--chargers 50] [--windows 6] [--window-s 10] [--priority 80]
                                   [--keepalive-ms 1000] [--period-ms 100] [--json out.json]

The chargers (v2g_rt.sim.peers.modbus, one pymodbus server each) run in another process, as they
would on the network. The controller's loop runs in real time (SCHED_FIFO at --priority when
allowed) at 1 kHz; windows alternate: idle (no Modbus service), then the service driving every
charger (setpoint on change and every keepalive_ms, feedback read every period_ms). Per window: the
wake-latency histogram (the difference of the loop's cumulative one), and in service windows the
service thread's CPU time (/proc/self/task/TID/schedstat) and the requests the chargers answered.
Compare as ratios: this machine is shared and noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hammer import percentile_us, summarize  # noqa: E402

from v2g_rt import Controller, config  # noqa: E402
from v2g_rt.bench import write_results  # noqa: E402
from v2g_rt.services.modbus import ModbusService  # noqa: E402

SITE = """
[site]
name = "modbus-evse-bench"
period_ms = 1
[rt]
priority = {priority}
lock_memory = {lock}
cpu_dma_latency_us = -1
[control]
output_hold_s = 5
[node.grid]
kind = "grid"
import_limit_w = 1000000
export_limit_w = 1000000
"""
CHARGER = """
[node.c{i:02d}]
kind = "evse"
parent = "grid"
link = "modbus"
port_max_charge_w = 7400
port_max_discharge_w = 7400
[modbus.c{i:02d}]
role = "evse"
host = "127.0.0.1"
port = {port}
map = "wallbox-quasar"
node = "c{i:02d}"
period_ms = {period_ms}
keepalive_ms = {keepalive_ms}
"""


def thread_cpu_ns(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


def run(chargers: int, windows: int, window_s: float, priority: int, keepalive_ms: float, period_ms: float) -> dict:
    fleet = subprocess.Popen([sys.executable, "-P", "-m", "v2g_rt.sim.peers.modbus", "--chargers", str(chargers)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ports = json.loads(fleet.stdout.readline())["ports"]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "site.toml"
            path.write_text(SITE.format(priority=priority, lock=str(priority > 0).lower()) + "".join(
                CHARGER.format(i=i, port=port, period_ms=period_ms, keepalive_ms=keepalive_ms)
                for i, port in enumerate(ports)))
            site = config.load(path)
        ctrl = Controller(site)
        rt = ctrl.start()
        rows = []
        try:
            for k in range(windows):
                load = "modbus" if k % 2 else "idle"
                service = ModbusService(ctrl, site.sections["modbus"]) if load == "modbus" else None
                if service:
                    service.start()
                    time.sleep(1.0)                       # connected, set up, first writes: not measured
                    cpu0 = thread_cpu_ns(service.thread.native_id)
                    before_stats = service.stats()["devices"]
                before = ctrl.histograms()["wake_latency"]
                t0 = time.monotonic()
                time.sleep(window_s)
                h = ctrl.histograms()["wake_latency"] - before
                row = {"window": k, "load": load, "cycles": int(h.sum()), "p50_us": percentile_us(h, 0.5),
                       "p99_us": percentile_us(h, 0.99), "p999_us": percentile_us(h, 0.999)}
                if service:
                    elapsed = time.monotonic() - t0
                    cpu = thread_cpu_ns(service.thread.native_id) - cpu0
                    after = service.stats()["devices"]
                    polls = sum(after[n]["polls"] - before_stats[n]["polls"] for n in after)
                    writes = sum(after[n]["writes"] - before_stats[n]["writes"] for n in after)
                    row.update(service_cpu_pct=round(100 * cpu / (elapsed * 1e9), 2),
                               polls_per_s=round(polls / elapsed, 1), writes_per_s=round(writes / elapsed, 1),
                               errors=sum(sum(d["errors"].values()) for d in after.values()),
                               connected=sum(d["connected"] for d in after.values()))
                    service.stop()
                rows.append(row)
                print(f"{k:2d} {load:<6} cycles {row['cycles']:6d}  p50 {row['p50_us']:5.0f} us  "
                      f"p99 {row['p99_us']:6.0f} us  p99.9 {row['p999_us']:6.0f} us"
                      + (f"  service CPU {row['service_cpu_pct']} %  polls/s {row['polls_per_s']}  writes/s "
                         f"{row['writes_per_s']}  errors {row['errors']}" if service else ""), flush=True)
        finally:
            ctrl.stop()
    finally:
        out, _ = fleet.communicate("", timeout=30)
    seen = json.loads(out.strip().splitlines()[-1])
    summary, ratio = summarize(rows, "modbus")
    sel = [r for r in rows if r["load"] == "modbus"]
    summary["modbus"]["service_cpu_pct_median"] = float(np.median([r["service_cpu_pct"] for r in sel])) if sel else None
    idle, busy = summary["idle"]["p99_us_median"], summary["modbus"]["p99_us_median"]
    print(f"{chargers} chargers, keep-alive {keepalive_ms:g} ms, feedback every {period_ms:g} ms: service CPU "
          f"{summary['modbus']['service_cpu_pct_median']} % of one core; p99 wake latency idle {idle} us, "
          f"with Modbus {busy} us, ratio {ratio and round(ratio, 2)}; chargers stopped by their own timeout "
          f"{seen['timeouts']} times (each, once per idle window after a service window: the dead-man)")
    return {"rt": {k: v for k, v in rt.items() if k != "loop_tid"}, "chargers": chargers, "keepalive_ms": keepalive_ms,
            "period_ms": period_ms, "window_s": window_s, "windows": rows, "summary": summary,
            "p99_ratio_modbus_over_idle": ratio, "chargers_saw": seen, "overruns": ctrl.stats()["overruns"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chargers", type=int, default=50)
    p.add_argument("--windows", type=int, default=6)
    p.add_argument("--window-s", type=float, default=10.0)
    p.add_argument("--priority", type=int, default=80)
    p.add_argument("--keepalive-ms", type=float, default=1000.0)
    p.add_argument("--period-ms", type=float, default=100.0)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    result = run(args.chargers, args.windows, args.window_s, args.priority, args.keepalive_ms, args.period_ms)
    write_results(args.json, result)
    return result


if __name__ == "__main__":
    main()
