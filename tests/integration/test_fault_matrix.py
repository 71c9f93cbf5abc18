"""The fault table of DESIGN.md ("Faults"), row by row, in virtual time.

Each row injects its fault at the far side, through Controller.measure (a sensor value, a contactor
feedback, a meter reading or a heartbeat that stops arriving), and checks
  (a) the reaction,
  (b) its deadline, counted in cycles of virtual time (never wall-clock time),
  (c) the ERR code that FaultWatch.poll() logs for it,
  (d) each protective layer on its own: the port envelope and the fleet clamp of Safe State, the
      contactor command and the latch of a contactor fault.

A fault is injected at the controller's current time, so cycle 1 is the first cycle that can see
it. Rows with a timer (contactor settle time, meter max age, heartbeat timeout) count from the
event that starts the timer, and the reaction must come neither before the timer runs out nor
more than 2 cycles after it.

The reaction cycles measured are written to out/fault_matrix.json and printed at the end of the module.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from helpers import S, ev, make_site
from v2g_rt import Control, Controller, _core
from v2g_rt.controller import BINDINGS
from v2g_rt.faults import FaultWatch
from v2g_rt.site import Thermal, Upstream, node_source, port_source

PERIOD_NS = 1_000_000                      # make_site()'s period: 1 ms
PORT_W = 11_000.0                          # every port's charge and discharge rating
TOL = 1e-6
BIG = dict(grid_import_w=1e6, grid_export_w=1e6, transformer_w=1e6, group_w=1e6, meter=False)
# Sessions stay valid for the whole test unless a row is about staleness; Safe State ends after 2 s.
CONTROL = Control(port_ramp_w_per_s=math.inf, session_max_age_s=86400.0, safe_exit_s=2.0)
REACH = 2                                  # the design's deadline for the hard interlocks and derates

CONTACTOR = _core.FAULTS["contactor"]
OVERTEMP = _core.FAULTS["overtemp"]
ISO_TIMEOUT = _core.FAULTS["iso_timeout"]

RESULTS: dict[str, dict] = {}              # row id -> what was measured (out/fault_matrix.json)
OUT = Path(__file__).resolve().parents[2] / "out" / "fault_matrix.json"


def cycles(seconds: float) -> int:
    return round(seconds * 1e9 / PERIOD_NS)


# ---------------------------------------------------------------- the rig

def build_site(*, evse: dict | None = None, transformer: dict | None = None, control: Control = CONTROL, **kw):
    """4 ports of 11 kW on 2 EVSEs (evse001.1/.2, evse002.1/.2), limits far away unless a row sets them."""
    site = make_site(4, ports_per_evse=2, control=control, **{**BIG, **kw})

    def edit(n):
        if n.kind == "evse" and evse:
            return replace(n, **evse)
        if n.kind == "transformer" and transformer:
            return replace(n, **transformer)
        return n
    return replace(site, nodes=tuple(edit(n) for n in site.nodes))


class Rig:
    """A controller in virtual time with the far side of its inputs: EV sessions, and contactors whose
    feedback follows the last command unless a test makes one stick."""

    def __init__(self, site, tmp_path: Path, caplog):
        self.c = Controller(site, clock="virtual")
        self.watch = FaultWatch(self.c)
        self.caplog = caplog
        self.stuck: dict[str, float] = {}
        self.gpio = [p.id for p in site.ports if site.node(p.evse).contactor_feedback]
        self.c.step(S)

    @property
    def now(self) -> int:
        return self.c.now_ns()

    def plug(self, *pids: str, **session) -> None:
        for pid in pids or self.c.port_ids:
            ev(**{"departure_in_s": 10 * 3600, "energy_request_wh": 10_000, **session}).publish(self.c, pid, self.now)

    def put(self, source: str, value: float) -> None:
        verdict = self.c.measure(source, value, self.now)
        assert verdict, verdict.reason

    def command(self, **cmd) -> None:
        cmd.setdefault("expires_in_s", 3600)
        verdict = self.c.submit(cmd)
        assert verdict, verdict.reason

    def cycle(self):
        """One period: the contactors report (as they are now), then the cycle runs."""
        if self.gpio:
            closed = dict(zip(self.c.port_ids, self.c.snapshot().ports["contactor_closed"]))
            for pid in self.gpio:
                self.put(port_source(pid, "contactor"), self.stuck.get(pid, 1.0 if closed[pid] else 0.0))
        self.c.run_steps(1)
        return self.c.snapshot()

    def run(self, n: int, check: Callable | None = None):
        """n cycles; check(snapshot) after every one of them."""
        for _ in range(n):
            snap = self.cycle()
            if check:
                check(snap)
        return self.c.snapshot()

    def until(self, cond: Callable, limit: int, what: str) -> tuple[int, object]:
        """Cycles until cond(snapshot) holds (1 = the first cycle after now), at most limit."""
        for k in range(1, limit + 1):
            snap = self.cycle()
            if cond(snap):
                return k, snap
        pytest.fail(f"{what}: not within {limit} cycles")

    def logged(self, code: str) -> list[str]:
        self.watch.poll()
        return [r.getMessage() for r in self.caplog.records if r.getMessage().startswith(code)]


def within(k: int, lo: int, hi: int, what: str) -> None:
    assert lo <= k <= hi, f"{what} after {k} cycles; the deadline allows {lo}..{hi}"


def evse_w(snap, evse: str) -> float:
    return sum(float(snap.port(f"{evse}.{i}")["setpoint_w"]) for i in (1, 2))


def port_at_zero(row) -> bool:
    return row["setpoint_w"] == 0.0 and row["target_w"] == 0.0 and row["max_w"] == 0.0 and row["min_w"] == 0.0


def charging_everywhere(rig: Rig, sign: float = 1.0) -> None:
    k, _ = rig.until(lambda s: (s.ports["setpoint_w"] == sign * PORT_W).all(), 5, "every port at its rating")


# ---------------------------------------------------------------- contactor

def contactor_closed_reports_open(tmp_path, caplog):
    rig = Rig(build_site(evse=dict(contactor_feedback=True)), tmp_path, caplog)
    settle = cycles(rig.c.site.control.contactor_settle_s)
    rig.plug()
    charging_everywhere(rig)
    snap = rig.run(settle + 10)                          # the feedback follows: no fault, even after settling
    assert snap.ports["contactor_closed"].all() and not snap.ports["faults"].any()
    assert not rig.logged("ERR_CONTACTOR_MISMATCH")

    victim = "evse001.2"
    rig.stuck[victim] = 0.0                              # the contactor drops out on its own
    k, snap = rig.until(lambda s: s.port(victim)["faults"] & CONTACTOR, REACH + 20, "contactor fault")
    within(k, 1, REACH, "contactor fault (closed, reports open)")
    row = snap.port(victim)
    assert port_at_zero(row) and not row["contactor_closed"] and BINDINGS[row["binding"]] == "fault"
    for pid in set(rig.c.port_ids) - {victim}:           # the others keep charging
        assert snap.port(pid)["setpoint_w"] == PORT_W and snap.port(pid)["faults"] == 0
    assert rig.logged("ERR_CONTACTOR_MISMATCH") == [f"ERR_CONTACTOR_MISMATCH: port {victim}: contactor"]

    # The feedback recovers (it follows the command again): the fault stays latched and the port off.
    del rig.stuck[victim]
    latched_off(rig, victim, settle + 50)
    reset_and_resume(rig, victim, settle)
    return dict(cycles=k, deadline=REACH)


def contactor_welded(tmp_path, caplog):
    rig = Rig(build_site(evse=dict(contactor_feedback=True)), tmp_path, caplog)
    settle = cycles(rig.c.site.control.contactor_settle_s)
    rig.plug()
    charging_everywhere(rig)
    rig.run(settle + 10)

    victim = "evse002.1"
    rig.stuck[victim] = 1.0                              # welded: it stays closed whatever it is told
    rig.put(port_source(victim, "connected"), 0.0)             # the EV leaves: the contactor is commanded open
    k_open, snap = rig.until(lambda s: not s.port(victim)["contactor_closed"], REACH, "contactor commanded open")
    assert port_at_zero(snap.port(victim)) and not snap.port(victim)["faults"]   # the relay may still be moving
    k, snap = rig.until(lambda s: s.port(victim)["faults"] & CONTACTOR, settle + REACH + 20, "weld detected")
    k += k_open
    within(k, settle, settle + REACH, "weld (commanded open, reports closed) detected")
    row = snap.port(victim)
    assert port_at_zero(row) and not row["contactor_closed"] and BINDINGS[row["binding"]] == "fault"
    assert rig.logged("ERR_CONTACTOR_MISMATCH") == [f"ERR_CONTACTOR_MISMATCH: port {victim}: contactor"]

    # The weld is freed (the feedback reports open) and a new EV arrives: still latched, still off.
    rig.stuck[victim] = 0.0
    rig.plug(victim)
    latched_off(rig, victim, settle + 50)
    del rig.stuck[victim]
    reset_and_resume(rig, victim, settle)
    return dict(cycles=k, deadline=settle + REACH)


def latched_off(rig: Rig, victim: str, n: int) -> None:
    def check(snap):
        row = snap.port(victim)
        assert row["faults"] & CONTACTOR, "the contactor fault cleared without a reset"
        assert port_at_zero(row) and not row["contactor_closed"] and row["connected"]
    rig.run(n, check)
    assert rig.c.latched_faults() == {victim: CONTACTOR}


def reset_and_resume(rig: Rig, victim: str, settle: int) -> None:
    rig.command(kind="reset_fault", id=f"reset-{victim}", port=victim)
    k, _ = rig.until(lambda s: s.port(victim)["faults"] == 0 and s.port(victim)["contactor_closed"]
                     and s.port(victim)["setpoint_w"] == PORT_W, REACH + 5, "reset")
    within(k, 1, REACH, "reset_fault")
    snap = rig.run(settle + 10)                          # a healthy contactor: no new fault after settling
    assert snap.port(victim)["faults"] == 0 and snap.port(victim)["setpoint_w"] == PORT_W
    assert rig.c.latched_faults() == {}


# ---------------------------------------------------------------- EVSE heat sink

def heatsink_rig(tmp_path, caplog, direction: str) -> tuple[Rig, float]:
    rig = Rig(build_site(evse=dict(heatsink_c=(70.0, 90.0))), tmp_path, caplog)
    for e in ("evse001", "evse002"):
        rig.put(node_source(e, "heatsink_c"), 50.0)
    rig.plug()
    sign = 1.0 if direction == "charging" else -1.0
    if sign < 0:
        rig.command(kind="setpoint", id="discharge", value_w=-1e6)
    charging_everywhere(rig, sign)
    return rig, sign


def evse_overtemp_derate(tmp_path, caplog, direction):
    rig, sign = heatsink_rig(tmp_path, caplog, direction)
    rig.put("node/evse001/heatsink_c", 80.0)             # half way from derate start (70) to trip (90)
    k, snap = rig.until(lambda s: abs(evse_w(s, "evse001")) <= PORT_W + TOL, REACH + 20, "heat-sink derate")
    within(k, 1, REACH, f"heat-sink derate while {direction}")
    assert snap.node("evse001")["derate"] == pytest.approx(0.5) and snap.node("evse001")["temperature_c"] == 80.0
    assert evse_w(snap, "evse001") == pytest.approx(sign * 2 * PORT_W * 0.5)   # derated, not stopped
    assert evse_w(snap, "evse002") == sign * 2 * PORT_W
    assert BINDINGS[snap.node("evse001")["binding"]] == "thermal"
    assert not snap.port("evse001.1")["faults"] & OVERTEMP
    assert not rig.logged("ERR_EVSE_OVERTEMP")           # a derate is not a trip
    return dict(cycles=k, deadline=REACH)


def evse_overtemp_trip(tmp_path, caplog, direction):
    rig, sign = heatsink_rig(tmp_path, caplog, direction)
    assert not rig.logged("ERR_EVSE_OVERTEMP")
    rig.put("node/evse001/heatsink_c", 95.0)             # past the trip temperature
    k, snap = rig.until(lambda s: evse_w(s, "evse001") == 0.0, REACH + 20, "heat-sink trip")
    within(k, 1, REACH, f"heat-sink trip while {direction}")
    assert snap.node("evse001")["derate"] == 0.0
    assert snap.node("evse001")["import_headroom_w"] == 0.0 and snap.node("evse001")["export_headroom_w"] == 0.0
    for pid in ("evse001.1", "evse001.2"):
        assert snap.port(pid)["faults"] & OVERTEMP and snap.port(pid)["setpoint_w"] == 0.0
        # the port's own envelope holds it at 0 W too, not only the EVSE node's headroom
        assert snap.port(pid)["min_w"] == 0.0 and snap.port(pid)["max_w"] == 0.0
    assert evse_w(snap, "evse002") == sign * 2 * PORT_W
    assert sorted(rig.logged("ERR_EVSE_OVERTEMP")) == [f"ERR_EVSE_OVERTEMP: port evse001.{i}: overtemp" for i in (1, 2)]
    rig.put("node/evse001/heatsink_c", 60.0)             # cooled down: the trip is not latched
    k_back, snap = rig.until(lambda s: evse_w(s, "evse001") == sign * 2 * PORT_W, REACH + 20, "recovery")
    within(k_back, 1, REACH, "recovery after cooling")
    assert not snap.port("evse001.1")["faults"]
    return dict(cycles=k, deadline=REACH)


# ---------------------------------------------------------------- transformer hot spot

TX_W = 40_000.0         # below the 44 kW the 4 ports could take: the transformer binds


def transformer_hotspot(tmp_path, caplog, direction):
    thermal = Thermal(rated_w=TX_W, ambient_max_age_s=None, top_oil_max_age_s=600.0)
    site = build_site(transformer=dict(thermal=thermal, import_limit_w=TX_W, export_limit_w=TX_W))
    rig = Rig(site, tmp_path, caplog)
    rig.put("node/tx1/top_oil_c", 60.0)
    rig.plug()
    sign = 1.0 if direction == "charging" else -1.0
    if sign < 0:
        rig.command(kind="setpoint", id="discharge", value_w=-1e6)
    k, snap = rig.until(lambda s: s.site["fleet_w"] == pytest.approx(sign * TX_W), 5, "transformer at its limit")
    assert snap.node("tx1")["derate"] == 1.0
    assert not rig.logged("ERR_TRANSFORMER_HOTSPOT")

    rig.put("node/tx1/top_oil_c", 109.0)                 # the hot spot goes half way into its derate range
    k, snap = rig.until(lambda s: abs(s.site["fleet_w"]) < TX_W - 1.0, REACH + 20, "transformer derate")
    within(k, 1, REACH, f"transformer derate while {direction}")
    tx = snap.node("tx1")
    t = thermal
    assert t.derate_start_c < tx["temperature_c"] < t.limit_c
    expected = (t.limit_c - tx["temperature_c"]) / (t.limit_c - t.derate_start_c)   # linear over hot_spot_c
    assert tx["derate"] == pytest.approx(expected, rel=1e-9)
    assert 0.4 < expected < 0.6
    assert snap.site["fleet_w"] == pytest.approx(sign * TX_W * expected)
    assert (sign * snap.ports["setpoint_w"] >= 0).all()
    assert BINDINGS[tx["binding"]] == "thermal"
    assert tx["import_headroom_w"] == pytest.approx(TX_W * expected)
    assert tx["export_headroom_w"] == pytest.approx(TX_W * expected)
    msgs = rig.logged("ERR_TRANSFORMER_HOTSPOT")
    assert len(msgs) == 1 and msgs[0].startswith("ERR_TRANSFORMER_HOTSPOT: node tx1: hot spot")
    return dict(cycles=k, deadline=REACH)


# ---------------------------------------------------------------- PLC

def plc_loss_over_limit(tmp_path, caplog):
    rig = Rig(build_site(evse=dict(iso15118=True)), tmp_path, caplog)
    rig.plug()
    for pid in rig.c.port_ids:
        rig.put(port_source(pid, "plc_loss"), 0.01)
    charging_everywhere(rig)
    victim = "evse002.1"
    rig.put(port_source(victim, "plc_loss"), rig.c.site.control.plc_loss_limit)   # at the limit: not above it
    snap = rig.run(5)
    assert snap.port(victim)["setpoint_w"] == PORT_W and not snap.port(victim)["faults"]
    assert not rig.logged("ERR_ISO_TIMEOUT")

    rig.put(port_source(victim, "plc_loss"), 0.06)
    k, snap = rig.until(lambda s: s.port(victim)["faults"] & ISO_TIMEOUT, REACH + 20, "PLC loss stop")
    within(k, 1, REACH, "PLC loss > limit")
    row = snap.port(victim)
    assert port_at_zero(row) and not row["contactor_closed"] and BINDINGS[row["binding"]] == "fault"
    assert sum(snap.port(p)["setpoint_w"] for p in rig.c.port_ids if p != victim) == 3 * PORT_W
    assert rig.logged("ERR_ISO_TIMEOUT") == [f"ERR_ISO_TIMEOUT: port {victim}: iso timeout"]
    rig.put(port_source(victim, "plc_loss"), 0.0)              # the link recovers: stopped for the session
    rig.run(50, lambda s: port_at_zero(s.port(victim)) or pytest.fail("restarted in the same session"))
    return dict(cycles=k, deadline=REACH)


def iso_session_timeout(tmp_path, caplog):
    ctl = replace(CONTROL, session_max_age_s=1.0)
    rig = Rig(build_site(evse=dict(iso15118=True), control=ctl), tmp_path, caplog)
    max_age = cycles(ctl.session_max_age_s)
    victim = "evse001.1"
    rig.plug()
    for pid in rig.c.port_ids:
        rig.put(port_source(pid, "plc_loss"), 0.0)
    charging_everywhere(rig)
    rig.put(port_source(victim, "plc_loss"), 0.0)              # the victim's last PLC report
    last = rig.now
    for _ in range(max_age // 100 - 1):                  # everything else keeps arriving
        rig.c.run_steps(100)
        rig.plug()
        for pid in set(rig.c.port_ids) - {victim}:
            rig.put(port_source(pid, "plc_loss"), 0.0)
    rig.c.run_steps((last + max_age * PERIOD_NS - rig.now) // PERIOD_NS)
    assert rig.c.snapshot().port(victim)["setpoint_w"] == PORT_W, "stopped while the report was still fresh"
    k, snap = rig.until(lambda s: s.port(victim)["faults"] & ISO_TIMEOUT, REACH + 20, "ISO session timeout")
    k += max_age
    within(k, max_age + 1, max_age + REACH, "ISO session timeout")
    assert port_at_zero(snap.port(victim)) and not snap.port(victim)["contactor_closed"]
    assert rig.logged("ERR_ISO_TIMEOUT") == [f"ERR_ISO_TIMEOUT: port {victim}: iso timeout"]
    return dict(cycles=k, deadline=max_age + REACH)


# ---------------------------------------------------------------- grid meter

GRID_W = 100_000.0
BASE_LOAD = (-70_000.0, 80_000.0)       # worst cases while the meter is stale: 70 kW PV, 80 kW load
NON_EV = 10_000.0


def meter_stale(tmp_path, caplog, direction):
    site = build_site(meter=True, grid_import_w=GRID_W, grid_export_w=GRID_W, base_load_w=BASE_LOAD)
    max_age = cycles(site.node("grid").meter_max_age_s)
    rig = Rig(site, tmp_path, caplog)
    rig.put("node/grid/power_w", NON_EV)                 # the fleet is idle: all of it is non-EV load
    rig.plug()
    sign = 1.0 if direction == "charging" else -1.0
    if sign < 0:
        rig.command(kind="setpoint", id="discharge", value_w=-1e6)
    charging_everywhere(rig, sign)
    assert rig.c.snapshot().node("grid")["non_ev_w"] == NON_EV
    rig.put("node/grid/power_w", 2 * NON_EV + sign * 4 * PORT_W)   # the non-EV load doubles; the meter sees the fleet too
    last = rig.now
    snap = rig.run(1)
    assert snap.node("grid")["non_ev_w"] == 2 * NON_EV and snap.site["binding"] != "stale_meter"
    assert snap.node("grid")["measured_w"] == 2 * NON_EV + sign * 4 * PORT_W
    assert snap.site["fleet_measured_w"] == sign * 4 * PORT_W
    assert not rig.logged("ERR_METER_STALE")

    rig.c.run_steps((last + max_age * PERIOD_NS - rig.now) // PERIOD_NS)   # the reading is exactly max age old
    snap = rig.c.snapshot()
    assert (snap.ports["setpoint_w"] == sign * PORT_W).all(), "worst case assumed while the reading was valid"
    k, snap = rig.until(lambda s: abs(s.site["fleet_w"]) < 4 * PORT_W, REACH + 20, "worst-case headroom")
    k += max_age
    within(k, max_age + 1, max_age + REACH, f"stale meter while {direction}")
    worst = GRID_W - BASE_LOAD[1] if sign > 0 else GRID_W + BASE_LOAD[0]
    assert snap.site["fleet_w"] == pytest.approx(sign * worst)
    grid = snap.node("grid")
    assert math.isnan(grid["measured_w"]) and math.isnan(grid["non_ev_w"])
    assert BINDINGS[grid["binding"]] == "stale_meter"
    assert (sign * snap.ports["setpoint_w"] >= 0).all()
    msgs = rig.logged("ERR_METER_STALE")
    assert len(msgs) == 1 and msgs[0].startswith("ERR_METER_STALE: node grid")
    return dict(cycles=k, deadline=max_age + REACH)


# ---------------------------------------------------------------- upstream heartbeat

def assert_safe_state(snap, reason: str) -> None:
    """Safe State, each layer on its own: every port's envelope forbids discharge, and the fleet clamp
    (the site's target and the binding it reports) does too."""
    assert reason in snap.site["safe_state"]
    assert (snap.ports["min_w"] == 0.0).all(), f"port discharge limits in Safe State: {snap.ports['min_w']}"
    assert snap.site["fleet_min_w"] >= 0.0 and snap.site["requested_w"] >= 0.0
    assert snap.site["fleet_target_w"] >= 0.0 and (snap.ports["setpoint_w"] >= 0.0).all()


def upstream_lost(tmp_path, caplog):
    site = build_site(upstreams=(Upstream("dms", timeout_s=1.0),))
    timeout = cycles(1.0)
    rig = Rig(site, tmp_path, caplog)
    rig.plug()
    rig.command(kind="setpoint", id="discharge", value_w=-30_000.0)
    snap = rig.run(1)
    assert_safe_state(snap, "upstream")                      # no heartbeat yet: Safe State from the start
    assert snap.site["binding"] == "safe_state"
    # Not heard since start is waited for, not reported lost: Safe State, and no ERROR line.
    assert rig.logged("ERR_UPSTREAM_LOST") == []
    assert "upstream dms: not heard yet since start" in rig.caplog.text
    while "upstream" in rig.c.snapshot().site["safe_state"]:
        rig.put("upstream/dms/heartbeat", 1.0)
        rig.c.run_steps(100)
        assert rig.now < 10 * S, "Safe State never ended"
    snap = rig.run(1)
    assert snap.site["fleet_w"] == pytest.approx(-30_000.0) and (snap.ports["min_w"] < 0).all()
    rig.watch.poll()                                     # "Safe State (upstream) ended"
    rig.caplog.clear()

    rig.put("upstream/dms/heartbeat", 1.0)                   # the last heartbeat
    last = rig.now
    rig.c.run_steps(timeout - 1)
    snap = rig.c.snapshot()
    assert not snap.site["safe_state"] and snap.site["fleet_w"] == pytest.approx(-30_000.0)
    k, snap = rig.until(lambda s: s.site["safe_state"], REACH + 20, "Safe State")
    k = (snap.t_ns - last) // PERIOD_NS                  # counted from the last heartbeat
    within(k, timeout + 1, timeout + REACH, "Safe State after the heartbeat timeout")
    assert_safe_state(snap, "upstream")
    assert snap.site["fleet_w"] == 0.0 and snap.site["binding"] == "safe_state"
    assert rig.logged("ERR_UPSTREAM_LOST") == ["ERR_UPSTREAM_LOST: upstream dms: no heartbeat for 1 s"]

    # Charge only: a charging setpoint is still followed in Safe State.
    rig.command(kind="setpoint", id="charge", value_w=20_000.0)
    snap = rig.run(2)
    assert_safe_state(snap, "upstream")
    assert snap.site["fleet_w"] == pytest.approx(20_000.0)

    # Upstream back: Safe State holds for safe_exit_s of health, then discharge is allowed again.
    rig.command(kind="setpoint", id="discharge-again", value_w=-30_000.0)
    exit_cycles = cycles(rig.c.site.control.safe_exit_s)
    back = rig.now
    for _ in range(exit_cycles // 100):
        rig.put("upstream/dms/heartbeat", 1.0)
        rig.c.run_steps(100)
        assert_safe_state(rig.c.snapshot(), "upstream")
    rig.put("upstream/dms/heartbeat", 1.0)
    k_exit, snap = rig.until(lambda s: not s.site["safe_state"], REACH + 20, "Safe State exit")
    within((snap.t_ns - back) // PERIOD_NS, exit_cycles + 1, exit_cycles + 1 + REACH, "Safe State exit")
    assert snap.site["fleet_w"] == pytest.approx(-30_000.0)
    return dict(cycles=k, deadline=timeout + REACH)


# ---------------------------------------------------------------- the matrix

@dataclass(frozen=True)
class Row:
    fault: str
    reaction: str
    deadline: str
    code: str | None
    scenario: Callable
    kw: dict = field(default_factory=dict)


def row(id_, *args, marks=(), **kw):
    return pytest.param(Row(*args, kw=kw), id=id_, marks=marks)


MATRIX = [
    row("contactor-weld", "contactor feedback mismatch: commanded open, reports closed (weld)",
        "port 0 W, contactor open, latched until reset", "settle + 2 cycles", "ERR_CONTACTOR_MISMATCH",
        contactor_welded),
    row("contactor-drops-out", "contactor feedback mismatch: commanded closed, reports open",
        "port 0 W, contactor open, latched until reset", "2 cycles", "ERR_CONTACTOR_MISMATCH",
        contactor_closed_reports_open),
    row("evse-derate-charging", "EVSE heat sink over derate start, charging", "linear derate", "2 cycles",
        None, evse_overtemp_derate, direction="charging"),
    row("evse-derate-discharging", "EVSE heat sink over derate start, discharging", "linear derate", "2 cycles",
        None, evse_overtemp_derate, direction="discharging"),
    row("evse-trip-charging", "EVSE heat sink at trip, charging", "EVSE at 0 W until it cools", "2 cycles",
        "ERR_EVSE_OVERTEMP", evse_overtemp_trip, direction="charging"),
    row("evse-trip-discharging", "EVSE heat sink at trip, discharging", "EVSE at 0 W until it cools", "2 cycles",
        "ERR_EVSE_OVERTEMP", evse_overtemp_trip, direction="discharging"),
    row("transformer-import", "transformer hot spot over derate start, site importing", "derate site import",
        "2 cycles", "ERR_TRANSFORMER_HOTSPOT", transformer_hotspot, direction="charging"),
    row("transformer-export", "transformer hot spot over derate start, site exporting", "derate site export",
        "2 cycles", "ERR_TRANSFORMER_HOTSPOT", transformer_hotspot, direction="discharging"),
    row("plc-loss", "PLC packet loss > 5 %", "stop that port for the session", "2 cycles", "ERR_ISO_TIMEOUT",
        plc_loss_over_limit),
    row("iso-session-timeout", "ISO session timeout (PLC reports stop)", "stop that port for the session",
        "max age + 2 cycles", "ERR_ISO_TIMEOUT", iso_session_timeout),
    row("meter-stale-import", "grid meter stale, site importing", "worst-case headroom (max non-EV load)",
        "max age + 2 cycles", "ERR_METER_STALE", meter_stale, direction="charging"),
    row("meter-stale-export", "grid meter stale, site exporting", "worst-case headroom (min non-EV load)",
        "max age + 2 cycles", "ERR_METER_STALE", meter_stale, direction="discharging"),
    row("upstream-lost", "upstream heartbeat lost", "Safe State: charge only, no discharge; exit after safe_exit_s",
        "heartbeat timeout + 2 cycles", "ERR_UPSTREAM_LOST", upstream_lost),
]
# The table's "cycle overrun" row is not here: only the real-time loop counts overruns (step() and
# run_steps() never overrun), so tests/native/test_loop.py drives it, in real time.


@pytest.fixture(scope="module", autouse=True)
def matrix_summary(request):
    yield
    if not RESULTS:
        return
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(RESULTS, indent=1) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter and capture:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(f"fault matrix (cycles of {PERIOD_NS / 1e6:g} ms, measured / deadline) -> {OUT}")
            for rid, r in RESULTS.items():
                reporter.write_line(f"  {rid:24} {r['cycles']:>6} / {r['deadline_cycles']:<6} {r['reaction']}")


@pytest.mark.parametrize("row", MATRIX)
def test_fault_matrix(row, request, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="v2g_rt")
    measured = row.scenario(tmp_path, caplog, **row.kw)
    assert measured["cycles"] <= measured["deadline"]
    if row.code:
        assert any(r.getMessage().startswith(row.code) for r in caplog.records), f"{row.code} was not logged"
    RESULTS[request.node.callspec.id] = dict(fault=row.fault, reaction=row.reaction, deadline=row.deadline,
                                             code=row.code, cycles=measured["cycles"],
                                             deadline_cycles=measured["deadline"])
