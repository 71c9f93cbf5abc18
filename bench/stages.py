"""What each stage of a cycle costs, and what sending setpoints over CAN adds to the write stage.

    python bench/stages.py [--ports 50 256] [--seconds 20] [--json bench/results/stages.json]

For each port count, two controllers of the same depot run the same virtual-time cycles
(1 ms, every EV plugged, a fleet setpoint that moves every 50 ms so outputs keep changing):
one with every EVSE on link = "sim" (outputs to the mailbox only), one with every EVSE on
link = "can" over the sim bus, whose far end a thread drains as a bus would. Per stage
(read, update, write, publish) p50/p99 of the compute time the loop itself records (100 ns
bins), the setpoint frames sent per cycle, and what a frame costs the write stage: the
difference of the two runs' mean write time over the frames per cycle (most cycles send none,
so the p50s are alike; the frames show in the mean and the p99). A third controller runs the
mailbox site with the horizon planner's guidance fresh throughout (a new plan every 50 ms):
what following guidance costs the read and update stages. A fourth keeps the setpoint queue full
(every slot of native/schedule.pxi's queue holds a scheduled setpoint, one window opening every
50 ms and a new one queued behind it): what scanning the queue and publishing it costs.
Virtual time: no sleep, so the numbers are compute, not wake latency.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from dataclasses import replace
from pathlib import Path

from v2g_rt import Control, Controller, _core, depot
from v2g_rt.devices.can import CanConfig
from v2g_rt.sim.peers import attach
from v2g_rt.sim.session import Session

S, MS = 1_000_000_000, 1_000_000


def site(ports: int, link: str):
    s = depot(ports, meter=False, control=Control(session_max_age_s=1e6))
    evses = [n for n in s.nodes if n.kind == "evse"]
    address = {n.id: 0x10 + k for k, n in enumerate(evses)}        # below 0xFE for 256 ports: 128 EVSEs
    nodes = tuple(replace(n, link=link, can_address=address[n.id] if link == "can" else None)
                  if n.kind == "evse" else n for n in s.nodes)
    s = replace(s, nodes=nodes)
    s.sections["can"] = CanConfig(backend="sim", address=0xF0)
    return s


def drain(sock, stop: threading.Event) -> None:
    sock.settimeout(0.05)
    while not stop.is_set():
        try:
            sock.recv(16)
        except TimeoutError:
            continue
        except OSError:
            return


def setpoint_w(k: int, ports: int) -> float:
    return (1 if k % 2 else -1) * 3_000.0 * ports * (0.3 + 0.7 * (k % 7) / 7)


def schedule(ctrl, k: int, ports: int) -> None:
    """Setpoint k, its window opening at k x 50 ms after the start (the queue has room: one opened)."""
    ok = ctrl.submit({"kind": "setpoint", "id": f"q{k}", "value_w": setpoint_w(k, ports), "expires_in_s": 3600,
                      "starts_ns": S + k * 50 * MS + MS // 2})
    if not ok:
        raise RuntimeError(f"scheduled setpoint {k} refused: {ok.code}")


def run(ports: int, link: str, seconds: float, guided: bool = False, scheduled: bool = False) -> dict:
    ctrl = Controller(site(ports, link), clock="virtual")
    devices = attach(ctrl, ctrl.site)
    stop = threading.Event()
    drainer = threading.Thread(target=drain, args=(devices.can_peer.sock, stop), daemon=True)
    drainer.start()
    ctrl.step(S)
    for i, pid in enumerate(ctrl.port_ids):
        Session(soc=0.3 + 0.05 * (i % 10), capacity_wh=60_000, energy_request_wh=20_000,
                departure_in_s=3600 * (2 + i % 6), max_charge_w=11_000, max_discharge_w=11_000,
                min_soc=0.2, v2g=True).publish(ctrl, pid, S)
    cycles = int(seconds * 1000)
    queue = _core.CAPACITY["scheduled_per_kind"] if scheduled else 0
    for k in range(queue):
        schedule(ctrl, k, ports)
    for k in range(cycles // 50):
        value = setpoint_w(k, ports)
        if not scheduled:
            ctrl.submit({"kind": "setpoint", "id": f"b{k}", "value_w": value, "expires_in_s": 3600})
        if guided:
            plan = [(11_000.0 if value > 0 else -11_000.0) * ((i + k) % 3) / 2 for i in range(ports)]
            ctrl.guide(plan, ctrl.now_ns() + S, plan_id=k + 1)
        ctrl.run_steps(50, MS)
        if scheduled:
            schedule(ctrl, k + queue, ports)       # behind the one that opened
    st = ctrl.stats()
    stop.set()
    drainer.join()
    devices.close()
    frames = st["devices"]["can"]["setpoints"]["frames_sent"]
    return {"link": link + ("+guidance" if guided else "+schedule" if scheduled else ""), "ports": ports, "cycles": cycles, "stages": st["stages"],
            "frames_per_cycle": round(frames / cycles, 3), "frames_refused": st["devices"]["can"]["setpoints"]["frames_refused"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", type=int, nargs="+", default=[50, 256])
    ap.add_argument("--seconds", type=float, default=20.0, help="virtual seconds per run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results = []
    for ports in args.ports:
        runs = {link: run(ports, link, args.seconds) for link in ("sim", "can")}
        runs["sim+guidance"] = run(ports, "sim", args.seconds, guided=True)
        runs["sim+schedule"] = run(ports, "sim", args.seconds, scheduled=True)
        w_sim, w_can = runs["sim"]["stages"]["write"], runs["can"]["stages"]["write"]
        per_cycle = runs["can"]["frames_per_cycle"]
        per_frame = round((w_can["mean_us"] - w_sim["mean_us"]) / per_cycle, 2) if per_cycle else None
        results.append({"ports": ports, "runs": runs, "write_mean_us": {"mailbox": w_sim["mean_us"], "can": w_can["mean_us"]},
                        "can_write_us_per_frame": per_frame})
        for link, r in runs.items():
            line = "  ".join(f"{name} {s['p50_us']}/{s['p99_us']}" for name, s in r["stages"].items())
            print(f"{ports:4d} ports link {link:<4} p50/p99 us: {line}   frames/cycle {r['frames_per_cycle']}")
        print(f"{ports:4d} ports: write stage mean {w_sim['mean_us']} us (mailbox) vs {w_can['mean_us']} us (can): "
              f"{per_frame} us per setpoint frame")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
