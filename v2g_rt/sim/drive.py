"""Drivers of the simulated plant: in virtual time (simulate) or beside the real-time loop (run)."""
from __future__ import annotations

import csv
import json
import math
import threading
import time
from dataclasses import replace
from pathlib import Path

from ..controller import Controller
from .peers import attach
from ..site import Site
from .plant import PEER_POLL_S, Plant, PlantConfig

S = 1_000_000_000
# simulate (and calibrate on a simulated site) step the cycle at least this far apart by default:
# a day at 1 ms is 86 million cycles (minutes of wall time) and changes nothing the plant's 1 s
# steps can see.
SIMULATE_PERIOD_S = 0.01


def plant_config(site: Site) -> PlantConfig:
    return site.sections.get("sim") or PlantConfig()


def simulate(site: Site, hours: float, out: Path, *, period_s: float | None = None,
             sample_s: float = 60.0, plot: bool = True, progress=None) -> dict:
    """Run the site for `hours` of virtual time as fast as possible; write the timeline and summary."""
    if period_s is not None:
        site = replace(site, period_s=period_s)
    cfg = plant_config(site)
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    t = S
    ctrl.step(t)
    plant = Plant(site, ctrl, cfg, t, devices)
    plant.by_hand()
    plant.poll_peers(t)            # a modem answers the first probe before a vehicle is seen plugged in
    plant.publish(t)
    cycles = max(1, round(cfg.step_s * S) // site.period_ns)
    end = t + round(hours * 3600 * S)
    next_sample = t
    rows = []
    wall0 = time.perf_counter()
    while t < end:
        t = plant.step_virtual(t, cycles)
        if t >= next_sample:
            rows.append(plant.sample(t))
            next_sample += round(sample_s * S)
            if progress:
                progress((t - S) / (end - S))
    wall = time.perf_counter() - wall0
    devices.close()
    summary = plant.summary()
    summary.update(hours=hours, ports=len(site.ports), period_ms=site.period_s * 1e3,
                   cycles=ctrl.snapshot().cycle, wall_s=round(wall, 2),
                   speedup=round(hours * 3600 / wall, 1) if wall else math.inf, site=site.name)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "timeline.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if plot:
        from .plot import timeline_png
        timeline_png(rows, out / "timeline.png", title=f"{site.name}: {len(site.ports)} ports, {hours:g} h")
    return summary


class RealtimePlant(threading.Thread):
    """The plant beside a running controller: steps every cfg.step_s of real time."""

    def __init__(self, site: Site, ctrl: Controller, devices=None, step_s: float = 0.1):
        super().__init__(name="v2g-sim-plant", daemon=True)
        cfg = replace(plant_config(site), step_s=step_s)
        self.ctrl = ctrl
        self.t = ctrl.now_ns()
        self.plant = Plant(site, ctrl, cfg, self.t, devices)
        self.plant.poll_peers(self.t)
        self.plant.publish(self.t)
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        step_ns = round(self.plant.cfg.step_s * S)
        wait = min(self.plant.cfg.step_s, PEER_POLL_S) if self.plant.fast_peers else self.plant.cfg.step_s
        try:
            while not self.stopping.wait(wait):
                now = self.ctrl.now_ns()
                self.plant.poll_peers(now)
                if now - self.t < step_ns:
                    continue
                self.plant.advance(self.t, (now - self.t) / S)
                self.t = now
                self.plant.events(now)
                self.plant.publish(now)
        except BaseException as e:  # reported by the CLI, which stops the controller
            self.error = e

    def stop(self) -> None:
        self.stopping.set()
        self.join()
