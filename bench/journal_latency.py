"""How long a latched fault is only in memory: from the loop's latch to the journal on disk.

    python bench/journal_latency.py [--trials 20] [--json bench/results/journal-latency.json]

A real-time controller with contactor feedback and its JournalService run as in
`v2g-rt run`. Each trial welds one port (its contactor reports closed after the loop
opened it), waits until the snapshot shows the latch, and then until the journal file
holds it; it reports both delays. The second is the window in which kill -9 would
lose the latch (the issue asked for at most 100 ms). Then the port is reset and the
next trial welds another.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from v2g_rt import Control, Controller, RealTime, depot
from v2g_rt.services.journal import JournalService
from v2g_rt.sim.session import Session
from v2g_rt.site import port_source

FAULT_CONTACTOR = 0x10000


def site(ports: int):
    s = depot(ports, meter=False, control=Control(contactor_settle_s=0.05, contactor_max_age_s=1e6,
                                                     session_max_age_s=1e6),
              rt=RealTime(priority=0, cpu=None, lock_memory=False, cpu_dma_latency_us=None))
    return replace(s, nodes=tuple(replace(n, contactor_feedback=True) if n.kind == "evse" else n for n in s.nodes))


def wait(pred, timeout_s=5.0) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError
        time.sleep(0.0005)
    return time.monotonic()


def run(trials: int) -> dict:
    ctrl = Controller(site(max(2, trials)))
    path = Path(tempfile.mkdtemp(prefix="v2g-journal-bench-")) / "latched.json"
    journal = JournalService(ctrl, path)
    ctrl.start()
    journal.start()
    ev = Session(soc=0.5, capacity_wh=60_000, energy_request_wh=20_000, departure_in_s=8 * 3600,
                 max_charge_w=11_000, max_discharge_w=11_000, min_soc=0.2, v2g=True)
    to_snapshot, to_disk = [], []
    try:
        for pid in ctrl.port_ids:
            ev.publish(ctrl, pid)
            ctrl.measure(port_source(pid, "contactor"), 1.0)
        time.sleep(0.2)
        for k, pid in enumerate(ctrl.port_ids[:trials]):
            ctrl.measure(port_source(pid, "contactor"), 1.0)     # keep it fresh
            row = lambda: ctrl.snapshot().port(pid)           # noqa: E731
            ctrl.measure(port_source(pid, "contactor"), 0.0)        # the contactor drops out: a latch
            t0 = time.monotonic()
            t1 = wait(lambda: row()["faults"] & FAULT_CONTACTOR)
            t2 = wait(lambda: pid in json.loads(path.read_text() if path.exists() else "{}").get("ports", {}))
            to_snapshot.append((t1 - t0) * 1e3)
            to_disk.append((t2 - t1) * 1e3)
            print(f"{k:3d} {pid}: latch visible {to_snapshot[-1]:6.2f} ms, on disk {to_disk[-1]:6.2f} ms after it",
                  flush=True)
    finally:
        ctrl.stop()
        journal.stop()

    def summary(xs):
        a = np.array(xs)
        return {"n": len(a), "p50_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
                "max_ms": float(a.max())}

    result = {"poll_s": journal.poll_s, "latch_to_snapshot": summary(to_snapshot),
              "latch_to_disk": summary(to_disk), "writes": journal.writes}
    print(f"latch -> journal on disk: p50 {result['latch_to_disk']['p50_ms']:.1f} ms, "
          f"max {result['latch_to_disk']['max_ms']:.1f} ms over {trials} trials")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args(argv)
    result = run(args.trials)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
