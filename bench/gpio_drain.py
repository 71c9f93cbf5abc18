"""What draining GPIO contactor feedback costs the read stage, and how many cycles a contactor
that drops open takes to latch.

    python bench/gpio_drain.py [--lines 0 8 32 128] [--seconds 5] [--json bench/results/gpio-drain.json]

For each number of feedback lines (one per port, 2 ports per EVSE, each port with a drive line
too), a virtual-time controller on the sim backend runs 1 ms cycles: idle (no edge anywhere:
one epoll_wait per cycle finds nothing) and busy (every line gets an edge before every cycle:
one read() per line). The read stage's mean compute time, as the loop records it (100 ns bins),
less that of the same site without GPIO lines, is the drain's cost; per line when busy. The
sim backend's fds are pipes: the system calls are those a chardev line request takes (epoll_wait,
read of 48-byte events), the kernel work behind them differs. Then edge-to-latch: a closed,
settled contactor's feedback falls; the cycles until FAULT_CONTACTOR is in the snapshot, with
no debounce and with 3 ms debounced in cycles.
"""
from __future__ import annotations

import argparse
import os
import sys

from v2g_rt import Controller, config
from v2g_rt._core import FAULTS
from v2g_rt.bench import machine, write_results
from v2g_rt.sim.peers import attach
from v2g_rt.sim.peers.gpio import EVENT, FALLING, RISING

S, MS = 1_000_000_000, 1_000_000
HEAD = """
[site]
name = "gpio-bench"
period_ms = 1
[control]
contactor_settle_s = 0.01
session_max_age_s = 3600
[node.grid]
kind = "grid"
import_limit_w = 1e7
export_limit_w = 1e7
"""


def site_text(lines: int, debounce_ms: float = 0.0) -> str:
    parts = [HEAD]
    for e in range(max(1, (lines + 1) // 2)):
        parts.append(f'[node.e{e}]\nkind = "evse"\nparent = "grid"\nports = 2\nport_max_charge_w = 11000\n'
                     f'contactor_feedback = {"true" if lines else "false"}\n')
    for k in range(lines):
        port = f"e{k // 2}.{k % 2 + 1}"
        parts.append(f'[gpio.fb{k}]\nbackend = "sim"\nline = {k}\nrole = "contactor_feedback"\nport = "{port}"\n'
                     f'debounce_ms = {debounce_ms}\n'
                     f'[gpio.coil{k}]\nbackend = "sim"\nline = {k}\nrole = "contactor_drive"\nport = "{port}"\n')
    return "".join(parts)


def rig(lines: int, debounce_ms: float = 0.0):
    site = config.parse(site_text(lines, debounce_ms), "gpio-bench.toml")
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    ctrl.step(S)
    return ctrl, devices


def read_cost(lines: int, seconds: float, busy: bool) -> dict:
    ctrl, devices = rig(lines)
    fds = [c.feedback_fd for c in devices.gpio_peer.contactors.values()] if lines else []
    cycles = int(seconds * 1000)
    seq = 1
    for k in range(cycles):
        if busy:
            seq += 1
            record = EVENT.pack(0, RISING if k % 2 else FALLING, 0, seq, seq)
            for fd in fds:
                os.write(fd, record)
        ctrl.run_steps(1, MS)
    read = ctrl.stats()["stages"]["read"]
    events = sum(i["events"] for i in ctrl.device_stats()["gpio"]["inputs"])
    devices.close()
    return {"lines": lines, "busy": busy, "cycles": cycles, "read_mean_us": read["mean_us"],
            "read_p50_us": read["p50_us"], "read_p99_us": read["p99_us"], "events": events}


def edge_to_latch(debounce_ms: float) -> int:
    ctrl, devices = rig(2, debounce_ms)
    contactor = devices.gpio_peer.contactors["e0.1"]
    ctrl.measure("port/e0.1/connected", 1.0)
    ctrl.run_steps(1, MS)
    contactor.edge(True, 0)
    ctrl.run_steps(50, MS)
    contactor.edge(False, 0)
    for cycles in range(1, 100):
        ctrl.run_steps(1, MS)
        if int(ctrl.snapshot().port("e0.1")["faults"]) & FAULTS["contactor"]:
            devices.close()
            return cycles
    raise AssertionError("no latch within 100 cycles")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, nargs="+", default=[0, 8, 32, 128])
    ap.add_argument("--seconds", type=float, default=5.0, help="virtual seconds per run")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    base = read_cost(0, args.seconds, False)["read_mean_us"]
    runs = []
    for lines in args.lines:
        for busy in (False, True):
            r = read_cost(lines, args.seconds, busy)
            r["drain_ns_per_cycle"] = round((r["read_mean_us"] - base) * 1e3)
            r["drain_ns_per_line"] = round(r["drain_ns_per_cycle"] / lines) if lines else None
            runs.append(r)
            print(f"{lines:4d} lines {'busy' if busy else 'idle'}: read stage mean {r['read_mean_us']:.2f} us "
                  f"(p99 {r['read_p99_us']}), GPIO drain {r['drain_ns_per_cycle']} ns/cycle"
                  + (f", {r['drain_ns_per_line']} ns/line" if lines else ""))
    latch = {f"debounce_{d:g}ms": edge_to_latch(d) for d in (0.0, 3.0)}
    print(f"edge to latch (cycles of 1 ms): {latch}")
    write_results(args.json, {"machine": machine(), "baseline_read_mean_us": base, "runs": runs,
                              "edge_to_latch_cycles": latch})
    return 0


if __name__ == "__main__":
    sys.exit(main())
