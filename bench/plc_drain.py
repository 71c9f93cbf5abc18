"""What the PLC drain costs the cycle, and how many cycles loss takes to stop a port.

    python bench/plc_drain.py [--modems 1 8] [--frames 0 1 4 16] [--cycles 400] [--rounds 7]
                              [--windows 10 20 50 100] [--json bench/results/plc-drain.json]

Drain: controllers of one EVSE per modem (iso15118, one [plc.NAME] per port) run the same
virtual-time cycles; before a round, the far side queues N frames per cycle per modem
(CM_ATTEN_CHAR.IND, the most work a frame asks: 58 groups averaged) and the round's cycles run
in one nogil run_steps() with the per-modem budget = N, so every cycle drains exactly N frames
per modem. ns per cycle = the round's wall time / cycles, median of the rounds; the difference
to the same site without [plc] sections is what the PLC unit adds (a recvmmsg() per modem, the
frames' parse, a probe send() every probe interval). Backend "packet" (AF_PACKET on a veth pair)
as root, else the sim backend (a datagram socket pair), as the result says.

Loss onset: with probe interval I cycles and window W, the cycles from the first unanswered
probe to FAULT_ISO_TIMEOUT in the published snapshot, against devices.plc.trip_cycles().
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

from v2g_rt import Controller, config
from v2g_rt.bench import write_results
from v2g_rt.devices.plc import trip_cycles
from v2g_rt.sim.peers import attach
from v2g_rt.sim.peers.plc import EV_MAC, SimPlcModem, VethPair, atten_char_ind, veth_missing

S, MS = 1_000_000_000, 1_000_000
HEAD = """
[site]
name = "plc-bench"
period_ms = 1
[rt]
priority = 0
lock_memory = false
cpu_dma_latency_us = -1
[control]
session_max_age_s = 3600
plc_loss_limit = 0.05
[node.grid]
kind = "grid"
import_limit_w = 1e7
export_limit_w = 1e7
"""


def site_text(modems: int, backend: str, budget: int, window: int = 20, interval_ms: int = 10,
              interfaces=(), plc: bool = True) -> str:
    text = HEAD
    for k in range(modems):
        text += f'[node.e{k}]\nkind = "evse"\nparent = "grid"\nport_max_charge_w = 11000\niso15118 = true\n'
        if plc:
            iface = interfaces[k] if interfaces else ""
            text += (f'[plc.m{k}]\nbackend = "{backend}"\ninterface = "{iface}"\nport = "e{k}.1"\n'
                     f'probe_interval_ms = {interval_ms}\nloss_window = {window}\nframes_per_cycle = {max(budget, 1)}\n')
    return text


class Rig:
    """A controller with `modems` PLC modems and their far sides (veth or socket pairs)."""

    def __init__(self, modems: int, backend: str, budget: int, plc: bool = True, window: int = 20,
                 interval_ms: int = 10):
        self.pairs = [VethPair(f"{os.getpid() % 1000}{k}") for k in range(modems)] if backend == "packet" and plc else []
        text = site_text(modems, backend, budget, window, interval_ms, [p.near for p in self.pairs], plc)
        site = config.parse(text, "plc-bench.toml")
        self.ctrl = Controller(site, clock="virtual")
        self.devices = attach(self.ctrl, site)
        if not plc:
            self.modems = []
        elif backend == "packet":
            self.modems = [SimPlcModem(p.far_socket()) for p in self.pairs]
        else:
            self.modems = list(self.devices.plc_peer.modems.values())
        for m in self.modems:
            bufsize = 16 << 20
            m.sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", 32), bufsize)
        for h in (self.devices.handles.get("plc") or ()):
            h.sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), bufsize if plc else 0)
        self.ctrl.step(S)
        for m in self.modems:
            m.poll(self.ctrl.now_ns())                 # the first probe is answered

    def close(self) -> None:
        self.devices.close()
        for m in self.modems if self.pairs else ():
            m.close()
        for p in self.pairs:
            p.close()


def drain_ns_per_cycle(modems: int, backend: str, frames: int, cycles: int, rounds: int, plc: bool = True) -> dict:
    rig = Rig(modems, backend, frames, plc)
    frame = atten_char_ind(EV_MAC, b"\x02" * 6, [20] * 58)
    samples = []
    try:
        for _ in range(rounds):
            for m in rig.modems:
                for _ in range(frames * cycles):
                    m.sock.send(frame)
            t0 = time.perf_counter_ns()
            rig.ctrl.run_steps(cycles, MS)
            samples.append((time.perf_counter_ns() - t0) / cycles)
            for m in rig.modems:
                m.poll(rig.ctrl.now_ns())              # take the probes off the far side's queue
        reports = sum(s["atten_reports"] for s in rig.ctrl.device_stats()["plc"])
    finally:
        rig.close()
    expected = modems * frames * cycles * rounds if plc else 0
    return {"ns_per_cycle": round(statistics.median(samples)), "frames_taken": reports, "frames_sent": expected}


def onset_cycles(window: int, interval_cycles: int, backend: str) -> int:
    """Cycles from the first unanswered probe to FAULT_ISO_TIMEOUT in the snapshot."""
    rig = Rig(1, backend, 16, window=window, interval_ms=interval_cycles)
    try:
        ctrl, modem = rig.ctrl, rig.modems[0]
        ctrl.measure("port/e0.1/connected", 1.0)
        step = lambda: (ctrl.run_steps(1, MS), modem.poll(ctrl.now_ns()))   # noqa: E731
        for _ in range(interval_cycles * (window + 2)):
            step()
        sent = ctrl.device_stats()["plc"][0]["probes_sent"]
        while ctrl.device_stats()["plc"][0]["probes_sent"] == sent:
            ctrl.run_steps(1, MS)
        modem.loss = 1.0
        modem.poll(ctrl.now_ns())
        for n in range(1, 100 * interval_cycles * window):
            step()
            if int(ctrl.snapshot().port("e0.1")["faults"]) & 0x100:
                return n
        return -1
    finally:
        rig.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modems", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--frames", type=int, nargs="+", default=[0, 1, 4, 16], help="frames per cycle per modem")
    ap.add_argument("--cycles", type=int, default=400, help="cycles per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--windows", type=int, nargs="+", default=[10, 20, 50, 100])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    why = veth_missing()
    backend = "packet" if why is None else "sim"
    print(f"backend {backend}" + (f" ({why})" if why else " (AF_PACKET on veth pairs)"))
    drain = []
    for modems in args.modems:
        base = drain_ns_per_cycle(modems, backend, 0, args.cycles, args.rounds, plc=False)["ns_per_cycle"]
        for frames in args.frames:
            r = drain_ns_per_cycle(modems, backend, frames, args.cycles, args.rounds)
            r.update(modems=modems, frames_per_cycle=frames, baseline_ns=base, plc_ns=r["ns_per_cycle"] - base)
            drain.append(r)
            print(f"{modems:3d} modems {frames:3d} frames/cycle each: {r['ns_per_cycle']:7d} ns/cycle "
                  f"({r['plc_ns']:+d} ns over {base} ns without PLC)  frames taken {r['frames_taken']}/{r['frames_sent']}")
    onset = []
    for window in args.windows:
        got, want = onset_cycles(window, 10, backend), trip_cycles(window, 0.05, 10)
        onset.append({"window": window, "interval_cycles": 10, "limit": 0.05, "cycles": got, "predicted": want})
        print(f"window {window:4d} probes, probe every 10 cycles, limit 5 %: loss onset -> ERR_ISO_TIMEOUT "
              f"in {got} cycles (predicted {want})")
    write_results(args.json, {"backend": backend, "drain": drain, "onset": onset})
    return 0


if __name__ == "__main__":
    sys.exit(main())
