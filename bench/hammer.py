"""Wake latency of the running loop while Python hammers it, against idle, in one run.

    python bench/hammer.py [--windows 6] [--window-s 5] [--clients 200] [--commanders 8]
                           [--priority 80] [--json bench/results/hammer.json]

The packaged 50-port site runs in real time (SCHED_FIFO at --priority when allowed,
memory locked). Windows alternate: idle, then hammered by --clients threads that
each read the status socket in a loop (connect, JSON document, close) and
--commanders threads that submit setpoints as fast as the controller takes them.
Each window's wake-latency histogram is the difference of the loop's own cumulative
histogram before and after it, so both conditions are measured by the same loop in
the same run; compare them as ratios (this machine is shared and noisy).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from v2g_rt import Controller, config
from v2g_rt.bench import write_results
from v2g_rt.localsock import ClientError
from v2g_rt.services.status import StatusServer, query


def percentile_us(hist: np.ndarray, q: float) -> float:
    n = int(hist.sum())
    if n == 0:
        return float("nan")
    return float(np.searchsorted(np.cumsum(hist), q * n) + 1)     # upper edge of the 1 us bin


def summarize(rows: list[dict], busy: str) -> tuple[dict, float | None]:
    """Median p99 / p99.9 wake latency of the idle windows and of the `busy` ones, and their p99
    ratio (busy over idle)."""
    summary = {}
    for load in ("idle", busy):
        sel = [r for r in rows if r["load"] == load]
        summary[load] = {"p99_us_median": float(np.median([r["p99_us"] for r in sel])) if sel else None,
                         "p999_us_median": float(np.median([r["p999_us"] for r in sel])) if sel else None}
    idle, loaded = summary["idle"]["p99_us_median"], summary[busy]["p99_us_median"]
    return summary, (loaded / idle if idle and loaded else None)


class Hammer:
    def __init__(self, ctrl: Controller, sock: Path, clients: int, commanders: int):
        self.ctrl, self.sock = ctrl, sock
        self.on = threading.Event()
        self.done = threading.Event()
        self.reads = self.read_errors = self.commands = self.rejected = 0
        self.errors: dict[str, int] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count()
        self.threads = [threading.Thread(target=self.reader, daemon=True) for _ in range(clients)]
        self.threads += [threading.Thread(target=self.commander, args=(f"bench{k}",), daemon=True)
                         for k in range(commanders)]
        for t in self.threads:
            t.start()

    def reader(self) -> None:
        while not self.done.is_set():
            if not self.on.wait(0.1):
                continue
            try:
                query(self.sock, timeout=10)
                ok = True
            except ClientError as e:
                ok = False
                with self.lock:
                    self.errors[e.code] = self.errors.get(e.code, 0) + 1
            with self.lock:
                self.reads += ok
                self.read_errors += not ok

    def commander(self, source: str) -> None:
        # Each thread is its own source: once its 16384 ids are remembered its commands are
        # refused (ERR_CMD_TOO_MANY_IDS) by the same validation path, which is still the load.
        while not self.done.is_set():
            if not self.on.wait(0.1):
                continue
            v = self.ctrl.submit({"kind": "setpoint", "id": next(self.ids), "value_w": 50_000.0,
                                  "expires_in_s": 30}, source=source)
            with self.lock:
                self.commands += bool(v)
                self.rejected += not v

    def counts(self) -> dict:
        with self.lock:
            return {"status_reads": self.reads, "status_errors": self.read_errors, "errors": dict(self.errors),
                    "commands": self.commands, "commands_rejected": self.rejected}

    def stop(self) -> None:
        self.on.clear()
        self.done.set()
        for t in self.threads:
            t.join(timeout=15)


def run(windows: int, window_s: float, clients: int, commanders: int, priority: int) -> dict:
    site = config.load()
    site = replace(site, rt=replace(site.rt, priority=priority, lock_memory=priority > 0,
                                    cpu_dma_latency_us=None))
    ctrl = Controller(site)
    sock = Path(tempfile.mkdtemp(prefix="v2g-hammer-")) / "status.sock"
    rt = ctrl.start()
    server = StatusServer(ctrl, sock)
    server.start()
    hammer = Hammer(ctrl, sock, clients, commanders)
    rows = []
    try:
        for k in range(windows):
            load = "hammer" if k % 2 else "idle"
            before, counts0 = ctrl.histograms()["wake_latency"], hammer.counts()
            if load == "hammer":
                hammer.on.set()
            time.sleep(window_s)
            hammer.on.clear()
            after, counts1 = ctrl.histograms()["wake_latency"], hammer.counts()
            h = after - before
            row = {"window": k, "load": load, "cycles": int(h.sum()), "p50_us": percentile_us(h, 0.5),
                   "p99_us": percentile_us(h, 0.99), "p999_us": percentile_us(h, 0.999),
                   **{key: counts1[key] - counts0[key] for key in ("status_reads", "status_errors", "commands",
                                                                    "commands_rejected")}}
            rows.append(row)
            print(f"{k:2d} {load:<6} cycles {row['cycles']:6d}  p50 {row['p50_us']:5.0f} us  p99 {row['p99_us']:6.0f} us"
                  f"  p99.9 {row['p999_us']:6.0f} us  status reads {row['status_reads']:6d} "
                  f"(errors {row['status_errors']})  commands {row['commands']:6d}", flush=True)
            time.sleep(0.5)               # let the last clients of a hammer window drain
    finally:
        hammer.stop()
        server.stop()
        ctrl.stop()
    summary, ratio = summarize(rows, "hammer")
    idle, busy = summary["idle"]["p99_us_median"], summary["hammer"]["p99_us_median"]
    print(f"p99 wake latency: idle {idle} us, hammered {busy} us, ratio {ratio and round(ratio, 2)}")
    return {"rt": {k: v for k, v in rt.items() if k != "loop_tid"}, "clients": clients, "commanders": commanders,
            "window_s": window_s, "windows": rows, "summary": summary, "p99_ratio_hammer_over_idle": ratio,
            "errors": hammer.counts()["errors"], "overruns": ctrl.stats()["overruns"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", type=int, default=6)
    p.add_argument("--window-s", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--commanders", type=int, default=8)
    p.add_argument("--priority", type=int, default=80)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    result = run(args.windows, args.window_s, args.clients, args.commanders, args.priority)
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
