"""Helpers for tests: sites at normal priority and the EV side of sessions."""
from __future__ import annotations

import os
import time

from v2g_rt import Control, Controller, RealTime, depot
from v2g_rt.sim.session import Session

S = 1_000_000_000
MS = 1_000_000
IN_GUEST = os.environ.get("V2G_KERNEL_GUEST") == "1"     # inside hw/vm/kernel-tests' guest
# device backends the kernel tests cover: the real ones only where the guest provides them
BACKENDS = {"can": ["socketcan", "sim"] if IN_GUEST else ["sim"], "i2c": ["dev", "sim"] if IN_GUEST else ["sim"],
            "gpio": ["chardev", "sim"] if IN_GUEST else ["sim"]}
NORMAL_PRIORITY = RealTime(priority=0, cpu=None, lock_memory=False, cpu_dma_latency_us=None)


def make_site(ports=50, **kw):
    kw.setdefault("rt", NORMAL_PRIORITY)
    kw.setdefault("control", Control(port_ramp_w_per_s=float("inf")))
    return depot(ports, **kw)


def ev(**kw) -> Session:
    base = dict(soc=0.5, capacity_wh=60_000, energy_request_wh=20_000, departure_in_s=8 * 3600,
                max_charge_w=11_000, max_discharge_w=11_000, min_soc=0.2, v2g=True)
    base.update(kw)
    return Session(**base)


def plug_all(ctrl: Controller, t_ns: int | None = 0, **kw) -> None:
    """Every port gets an EV; departures spread over 1..8 h."""
    for i, pid in enumerate(ctrl.port_ids):
        ev(**{"departure_in_s": 3600 * (1 + i % 8), **kw}).publish(ctrl, pid, t_ns)


def node_sums(ctrl: Controller, field: str = "setpoint_w") -> dict[str, float]:
    """Sum of a port field under every node, computed independently of the native code."""
    snap = ctrl.snapshot()
    parent = {n.id: n.parent for n in ctrl.site.nodes}
    sums = {n.id: 0.0 for n in ctrl.site.nodes}
    for p, row in zip(ctrl.site.ports, snap.ports):
        node = p.evse
        while node is not None:
            sums[node] += float(row[field])
            node = parent[node]
    return sums


def assert_within_limits(ctrl: Controller, non_ev_w: float = 0.0, tol: float = 1e-6) -> None:
    """Every node's fleet flow stays inside its import/export limits (grid: minus non-EV load)."""
    site = ctrl.snapshot().site
    for node in ctrl.site.nodes:
        flow = node_sums(ctrl)[node.id]
        imp, exp = node.import_limit_w, node.export_limit_w
        if node.parent is None:
            imp, exp = min(imp, site["import_limit_w"]), min(exp, site["export_limit_w"])
            flow += non_ev_w
        assert -exp - tol <= flow <= imp + tol, (node.id, flow, imp, exp)
    snap = ctrl.snapshot()
    assert (snap.ports["setpoint_w"] <= snap.ports["max_w"] + tol).all()
    assert (snap.ports["setpoint_w"] >= snap.ports["min_w"] - tol).all()


# A site whose three EVSEs report heat-sink temperatures in J1939 frames (three DBC messages,
# PDU2 and PDU1); .format(backend="sim"|"socketcan", budget=frames per cycle).
CAN_SITE = """
[site]
name = "can-test"
[rt]
priority = 0
lock_memory = false
cpu_dma_latency_us = -1
[control]
session_max_age_s = 3600
[node.grid]
kind = "grid"
import_limit_w = 1e6
export_limit_w = 1e6
[node.g]
kind = "group"
parent = "grid"
import_limit_w = 1e6
export_limit_w = 1e6
[can]
backend = "{backend}"
interface = "vcan0"
frames_per_cycle = {budget}
""" + "".join(f"""
[node.{evse}]
kind = "evse"
parent = "g"
port_max_charge_w = 11000
heatsink_derate_c = [70, 90]
heatsink_max_age_s = 3600
can_address = {address}
can_signal = "{signal}"
""" for evse, address, signal in (("e1", 0x21, "EVSE_Thermal.HeatSinkTemp"), ("e2", 0x22, "ET1.EngCoolantTemp"),
                                  ("e3", 0x23, "EVSE_ThermalP2P.HeatSinkTemp")))



class ServiceRig:
    """A virtual-time controller stepped by the test, around the service under test (self.service,
    set by the subclass): deadlines in cycles, wall-clock time only as a guard against a hang."""

    STEP_NS = 10 * MS
    HANG_S = 30.0

    def __init__(self, site):
        self.site = site
        self.ctrl = Controller(site, clock="virtual")
        self.t = self.STEP_NS
        self.ctrl.step(self.t)
        self.service = None

    def step(self, n=1):
        for _ in range(n):
            self.t += self.STEP_NS
            self.ctrl.step(self.t)

    def until(self, pred, what, hang_s=None):
        """Step the controller (one cycle per 2 ms of wall time) until pred() holds."""
        end = time.monotonic() + (hang_s or self.HANG_S)
        while not pred():
            assert time.monotonic() < end, f"hung waiting for {what}: {self.service.stats()}"
            time.sleep(0.002)
            self.step()


# A grid and one EVSE of 2 ports whose contactors report feedback: the GPIO tests add [gpio.*] lines.
GPIO_SITE = """
[site]
name = "gpio-test"
period_ms = 1
[rt]
priority = 0
lock_memory = false
cpu_dma_latency_us = -1
[control]
contactor_settle_s = 0.01
contactor_max_age_s = 0.05
[node.grid]
kind = "grid"
import_limit_w = 1e6
export_limit_w = 1e6
[node.e1]
kind = "evse"
parent = "grid"
ports = 2
port_max_charge_w = 11000
contactor_feedback = true
"""


def plc_site(modems=1, backend="sim", interface="", budget=16, period_ms=10, interval_ms=100, window=20,
             extra="") -> str:
    """A site of one ISO 15118 EVSE with `modems` ports, each with its [plc.mK] modem (port e1.K)."""
    text = f"""
[site]
name = "plc-test"
period_ms = {period_ms}
[rt]
priority = 0
lock_memory = false
cpu_dma_latency_us = -1
[control]
session_max_age_s = 3600
plc_loss_limit = 0.05
[node.grid]
kind = "grid"
import_limit_w = 1e6
export_limit_w = 1e6
[node.e1]
kind = "evse"
parent = "grid"
ports = {modems}
port_max_charge_w = 11000
iso15118 = true
"""
    for k in range(1, modems + 1):
        text += (f'[plc.m{k}]\nbackend = "{backend}"\ninterface = "{interface}"\nport = "e1.{k}"\n'
                 f'probe_interval_ms = {interval_ms}\nloss_window = {window}\nframes_per_cycle = {budget}\n{extra}')
    return text
