"""Controller: the Python face of the native core.

Python never touches the process image; it validates what comes in, names what
goes out, and talks to the loop only through the exchange (commands,
measurements, snapshot) and the statistics.
"""
from __future__ import annotations

import hashlib
import heapq
import logging
import math
import numbers
import os
import resource
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from . import _core
from .errors import V2GError
from .schedule import Book, Held
from .site import PHASES, RealTime, Site, port_source, source_specs
from .wallclock import SystemClock, WallClock

log = logging.getLogger("v2g_rt")

BINDINGS = _core.BINDINGS
_ROW_DTYPES = {}


def row_dtype(name: str) -> np.dtype:
    """numpy dtype of a published row ('site', 'node', 'port', 'trace'), laid out as the C struct."""
    if name not in _ROW_DTYPES:
        size, fields = _core._layout(name)
        _ROW_DTYPES[name] = np.dtype({"names": [f[0] for f in fields], "formats": [f[1] for f in fields],
                                      "offsets": [f[2] for f in fields], "itemsize": size})
    return _ROW_DTYPES[name]


SOURCE_RANGES = _core.SOURCE_RANGES       # physical range of each measurement kind (the gate's)
PUBLIC_COMMANDS = {k: v for k, v in _core.COMMAND_KINDS.items() if k != "latch_fault"}
PORT_COMMANDS = ("reset_fault", "disable_port", "enable_port")
# Never locked out by a table full of other commands: they have their own pool.
EXEMPT_COMMANDS = frozenset(("reset_fault", "cancel", "disable_port", "enable_port"))

COMMAND_FIELDS = {"kind", "id", "value_w", "port", "of", "of_id", "latch_seq", "expires_ns", "expires_in_s",
                  "expires_at", "starts_ns", "starts_in_s", "starts_at"}
STARTS = ("starts_ns", "starts_in_s", "starts_at")
MAX_COMMAND_HORIZON_S = 7 * 86400
MAX_REMEMBERED_IDS = 16384      # unexpired ids per command source and pool
CLOCK_STEP_NS = 1_000_000_000   # a wall-clock jump past this re-anchors wall-clock expiries
INT64 = (-2**63, 2**63 - 1)
ID_RETENTION_NS = 600 * 10**9   # ids are remembered this long past their expiry


@dataclass(frozen=True)
class Submission:
    """Outcome of submit() or measure(): truthy when accepted."""
    accepted: bool
    code: str | None = None
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.accepted


ACCEPTED = Submission(True)


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of one published cycle."""
    cycle: int
    t_ns: int
    site: dict
    nodes: np.ndarray
    ports: np.ndarray
    node_ids: tuple[str, ...]
    port_ids: tuple[str, ...]

    def port(self, port_id: str) -> np.void:
        return self.ports[self.port_ids.index(port_id)]

    def node(self, node_id: str) -> np.void:
        return self.nodes[self.node_ids.index(node_id)]


def _id_key(cid) -> tuple[str, object] | None:
    if isinstance(cid, bool):
        return None
    if isinstance(cid, int) and 0 <= cid < 2**63:
        return ("i", cid)
    if isinstance(cid, str) and 0 < len(cid) <= 128:
        return ("s", cid)
    return None


def _id_hash(key: tuple[str, object]) -> int:
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little")


def _summary(hist: np.ndarray, lo_ns: int, hi_ns: int, sum_ns: int) -> dict:
    n = int(hist.sum())
    if n == 0:
        return {"count": 0}
    cum = np.cumsum(hist)
    max_us = hi_ns / 1e3

    def pct(q):  # upper edge of the 1 us bin holding the q-quantile
        b = int(np.searchsorted(cum, q * n))
        return max_us if b >= len(hist) - 1 else min(float(b + 1), max_us)

    return {"count": n, "min_us": lo_ns / 1e3, "avg_us": sum_ns / n / 1e3, "max_us": max_us,
            "p50_us": pct(0.50), "p99_us": pct(0.99), "p999_us": pct(0.999)}


def _stage_summary(hist: np.ndarray) -> dict:
    """p50/p99/p999 and mean of one cycle stage's compute time (100 ns bins, the mean from bin
    centres; the last bin counts what is longer)."""
    n = int(hist.sum())
    if n == 0:
        return {"count": 0}
    cum = np.cumsum(hist)
    bin_us = _core.STAGE_BIN_NS_ / 1e3

    def pct(q):
        return round((int(np.searchsorted(cum, q * n)) + 1) * bin_us, 3)

    mean = float((hist * (np.arange(hist.size) + 0.5)).sum()) / n * bin_us
    return {"count": n, "p50_us": pct(0.50), "p99_us": pct(0.99), "p999_us": pct(0.999), "mean_us": round(mean, 3)}


class Controller:
    """A site's controller: one process image, stepped in virtual time or run in real time.

    clock="monotonic" (default): the controller's clock is CLOCK_MONOTONIC, start()
    runs the real-time loop, step() may still drive cycles by hand (benchmarks).
    clock="virtual": time is whatever step()/run_steps() say it is (simulation, tests).
    """

    def __init__(self, site: Site, *, clock: str = "monotonic", wall: WallClock | None = None):
        if clock not in ("monotonic", "virtual"):
            raise ValueError(f"clock must be 'monotonic' or 'virtual', not {clock!r}")
        problems = site.problems()
        if problems:
            raise V2GError(problems[0].code, "; ".join(f"[{p.section}] {p.option or ''}: {p.message}" for p in problems))
        self.site = site
        c = site.control
        core = _core.Core(site.period_ns, clock == "virtual")
        core.configure(**{name: getattr(c, name) for name in _core.CONTROL_OPTIONS})
        f = site.frequency
        core.configure_frequency(f.mode, f.nominal_hz, f.deadband_under_hz, f.deadband_over_hz, f.droop_under,
                                 f.droop_over, f.rated_w, f.response_time_s, f.curve)
        index: dict[str, int] = {}
        for n in site.ordered_nodes():
            lo, hi = n.base_load_w
            index[n.id] = core.add_node(n.kind, index[n.parent] if n.parent else -1,
                                        n.import_limit_w, n.export_limit_w, lo, hi, n.phase_limit_a, n.voltage_v)
            if n.heatsink_c:
                core.set_heatsink_derate(index[n.id], *n.heatsink_c)
            if n.thermal:        # the model's parameters: every field but the sensors' max ages
                model = {k: v for k, v in asdict(n.thermal).items() if not k.endswith("_max_age_s")}
                core.set_transformer_thermal(index[n.id], **model)
        self.node_ids = tuple(sorted(index, key=index.get))
        self.port_ids = tuple(p.id for p in site.ports)
        self._port_index = {pid: i for i, pid in enumerate(self.port_ids)}
        self._sources: dict[str, tuple[int, tuple[float, float]]] = {}

        def source(name, kind, target, max_age_s):
            self._sources[name] = (core.add_source(kind, target, max_age_s), SOURCE_RANGES[kind])

        evses = {n.id: n for n in site.nodes}
        port_index = {}
        for p in site.ports:
            evse = evses[p.evse]
            port_index[p.id] = core.add_port(index[p.evse], p.rating_charge_w, p.rating_discharge_w, PHASES[evse.phases],
                                             evse.voltage_v, site.control.pilot_duty_step_pct if evse.pilot else 0.0)
        for name, kind, owner, max_age_s in source_specs(site):
            source(name, kind, port_index[owner] if name.startswith("port/") else index.get(owner, 0), max_age_s)
        self._source_by_index = {idx: (name, rng) for name, (idx, rng) in self._sources.items()}

        self._core = core
        self._lock = threading.Lock()
        self._guide_lock = threading.Lock()     # the guidance block has one writer at a time
        self._seen: dict[tuple, dict[tuple, int]] = {}          # (source, pool) -> id -> expiry
        self._seen_heap: list[tuple[int, tuple, tuple]] = []
        self._cmd_counts: Counter[str] = Counter()
        self.wall = wall if wall is not None else SystemClock()
        self._wall_anchor = None          # wall - monotonic when wall-clock expiries were last anchored
        self._wall_synced = None
        self._book = Book(core)           # grid commands the loop holds: slots, names (under _lock)
        self.schedule_listeners: list = []    # called after a scheduled command or a cancel was accepted
        self._meas_counts: Counter[str] = Counter()
        self.rt_report: dict | None = None
        self._pm_qos = None
        self._owned: dict[str, str] = {}        # sources a device feeds: source -> device
        self._served: dict[str, object] = {}    # device kind -> its sensors served on the Python side
        self._served_io: _ServedIo | None = None

    # ------------------------------------------------------------ time

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self._sources)

    @property
    def running(self) -> bool:
        return self._core.running

    def now_ns(self) -> int:
        """The controller's clock: CLOCK_MONOTONIC, or the virtual time of the last step."""
        return self._core.now_ns()

    def step(self, now_ns: int) -> None:
        """One cycle at virtual time now_ns (strictly increasing)."""
        self._core.step(now_ns)

    def run_steps(self, n: int, dt_ns: int | None = None) -> None:
        """n cycles, each dt_ns (default: one period) after the previous."""
        self._core.run_steps(n, self.site.period_ns if dt_ns is None else dt_ns)

    # ------------------------------------------------------------ real time

    def start(self, rt: RealTime | None = None) -> dict:
        """Start the real-time loop; returns (and logs) what RT setup was applied."""
        rt = self.site.rt if rt is None else rt
        applied = self._core.start(rt.priority, -1 if rt.cpu is None else rt.cpu, rt.lock_memory)
        warnings = [_rt_warning(what, err, rt) for what, err in applied.pop("failed")]
        applied["cpu_dma_latency_us"] = None
        if rt.cpu_dma_latency_us is not None:
            try:  # the request holds while the file stays open (kernel PM QoS)
                self._pm_qos = open("/dev/cpu_dma_latency", "wb", buffering=0)
                self._pm_qos.write(struct.pack("i", rt.cpu_dma_latency_us))
                applied["cpu_dma_latency_us"] = rt.cpu_dma_latency_us
            except OSError as e:
                warnings.append(f"ERR_RT_PM_QOS: cannot hold /dev/cpu_dma_latency at {rt.cpu_dma_latency_us} us: "
                                f"{e.strerror}. Remedy: run as root or add the udev rule from hw/udev; "
                                f"[rt] cpu_dma_latency_us = -1 skips it")
        for w in warnings:
            log.warning("%s", w)
        if self._served:
            self._served_io = _ServedIo(list(self._served.values()), self._core.now_ns)
            self._served_io.start()
        deadline = time.monotonic() + 2.0
        while self._core.read_stats()["cycles"] == 0 and time.monotonic() < deadline:
            time.sleep(self.site.period_s)
        self.rt_report = dict(applied, warnings=warnings, preempt_rt=preempt_rt(),
                              loop_tid=self._core.loop_tid())
        log.info("loop started: %s", self.rt_report)
        return self.rt_report

    def stop(self, hard: bool = False) -> None:
        """0 W at every port at once; each contactor opens once its port's measured power is at
        most stop_open_below_w, or after stop_timeout_s (at once if hard); then the outputs are
        safe to hold for ever. In virtual time the stop's cycles run here, without new
        measurements: begin_stop() and step() let a simulation show the current falling.
        Sensors served on the Python side keep being read until the loop has stopped."""
        self._core.stop(hard)
        if self._served_io is not None:
            self._served_io.stop()
            self._served_io = None
        if self._pm_qos is not None:
            self._pm_qos.close()
            self._pm_qos = None

    def begin_stop(self, hard: bool = False) -> None:
        """Virtual time: the following steps are the stop's; stop() ends it."""
        self._core.begin_stop(hard)

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ commands

    def submit(self, command: Mapping, source: str = "local") -> Submission:
        """Validate a command and queue it for the loop, which applies it exactly once.

        command: {"kind", "id", "value_w", "port", "of", "of_id", "latch_seq", and one expiry:
        "expires_ns" (controller clock), "expires_in_s" or "expires_at" (wall clock, epoch s)}.
        A grid command may also carry one start, "starts_ns", "starts_in_s" or "starts_at": it
        waits in its kind's queue until then (native/schedule.pxi: the window opened last wins).
        cancel names a kind ("of") or the id of one command from the same source ("of_id").
        source names who sent it (an upstream, the control socket): ids are replay-checked
        and bounded per source, so one flooding source cannot lock out the others.
        Never raises: every bad input is a rejected Submission with its code.
        """
        try:
            verdict = self._submit(command, source)
        except Exception as e:      # a gap in validation must not become an exception for the caller
            log.error("ERR_INTERNAL: command rejected by an unexpected %s: %s", type(e).__name__, e)
            verdict = _reject("ERR_CMD_BAD_FIELD", f"command not understood ({type(e).__name__})")
        with self._lock:
            self._cmd_counts[verdict.code or "accepted"] += 1
        return verdict

    def _submit(self, cmd: Mapping, source: str) -> Submission:
        if not isinstance(cmd, Mapping):
            return _reject("ERR_CMD_BAD_FIELD", f"a command is a mapping, not {type(cmd).__name__}")
        kind = cmd.get("kind")
        if not isinstance(kind, str) or kind not in PUBLIC_COMMANDS:
            return _reject("ERR_CMD_UNKNOWN_KIND", f"unknown command kind {_short(kind)}; known: {', '.join(PUBLIC_COMMANDS)}")
        extra = [k for k in cmd if k not in COMMAND_FIELDS]
        if extra:
            return _reject("ERR_CMD_BAD_FIELD", f"unknown field(s) {', '.join(sorted(_short(k) for k in extra))}")
        key = _id_key(cmd.get("id"))
        if key is None:
            return _reject("ERR_CMD_BAD_FIELD", f"id {_short(cmd.get('id'))}: expected an int 0..2^63-1 or a string of 1..128 characters")
        now = self._core.now_ns()
        expires = self._expiry_ns(cmd, now)
        if isinstance(expires, Submission):
            return expires
        value, port = _command_value(cmd, kind, self._port_index)
        if isinstance(value, Submission):
            return value
        code = _core.COMMAND_KINDS[kind]
        starts = self._start_ns(cmd, code, now, expires)
        if isinstance(starts, Submission):
            return starts
        of_hash = 0
        if "of_id" in cmd:
            of_key = _id_key(cmd["of_id"])
            if of_key is None:
                return _reject("ERR_CMD_BAD_FIELD", f"of_id {_short(cmd['of_id'])}: expected the id of a command")
            of_hash = _id_hash((source, of_key))
        latch_seq = 0
        if kind == "reset_fault":
            latch_seq = self._latch_seq(cmd, port)
            if isinstance(latch_seq, Submission):
                return latch_seq
        table = (source, kind in EXEMPT_COMMANDS)
        with self._lock:
            self._forget_expired(now)
            seen = self._seen.setdefault(table, {})
            if key in seen:
                return _reject("ERR_CMD_REPLAYED", f"command id {_short(key[1])} was already received from {source}; ignored")
            if expires <= now:
                return _reject("ERR_CMD_EXPIRED", f"command {_short(key[1])} expired {(now - expires) / 1e9:.3f} s ago")
            if len(seen) >= MAX_REMEMBERED_IDS:
                return _reject("ERR_CMD_TOO_MANY_IDS", f"{len(seen)} unexpired ids remembered for {source} "
                               f"(limit {MAX_REMEMBERED_IDS}); use shorter expiries")
            h = _id_hash((source, key))
            slot, gen = -1, 0
            if code < _core.GRID_COMMANDS:
                active, queued, applied = self._book.view()
                self._book.prune(active, queued, applied)
                if starts is not None and starts > now:
                    slot = self._book.free_slot(code, queued)
                    if slot is None:
                        return _reject("ERR_CMD_SCHEDULE_FULL", f"{kind}: {_core.CAPACITY['scheduled_per_kind']} "
                                       f"commands already wait for their start")
            if slot >= 0:
                gen = int(self._book.gen[code, slot]) + 1
            if not self._core.push_command(code, port, value, expires, h, latch_seq, starts_ns=starts or 0,
                                           now=starts is None, slot=slot, gen=gen, of_hash=of_hash):
                return _reject("ERR_CMD_QUEUE_FULL", f"command ring of {_core.CAPACITY['command_ring']} is full")
            if slot >= 0:
                self._book.take_slot(code, slot)
            seen[key] = expires
            heapq.heappush(self._seen_heap, (expires + ID_RETENTION_NS, table, key))
            if code < _core.GRID_COMMANDS:
                wall_now = self.wall.now()
                at = [_wall(cmd, name) if name in cmd else wall_now + (ns - now) / 1e9 if ns is not None else None
                      for name, ns in (("starts_at", starts), ("expires_at", expires))]
                self._book.note(h, Held(kind, source, key[1], value, starts, expires, _wall(cmd, "starts_at"),
                                        _wall(cmd, "expires_at"), self._core.pushed, slot, *at))
        if starts is not None or kind == "cancel":
            for listener in self.schedule_listeners:
                listener()
        if kind in PORT_COMMANDS:
            log.info("port %s: %s by command %r from %s%s", self.port_ids[port], _PORT_ACTIONS[kind], key[1], source,
                     f" (latches up to #{latch_seq})" if kind == "reset_fault" else "")
        return ACCEPTED

    def _latch_seq(self, cmd: Mapping, port: int) -> int | Submission:
        """A reset clears the latches up to the sequence number it names; without one,
        those the latest snapshot shows (what the operator is looking at)."""
        if "latch_seq" not in cmd:
            return int(self.snapshot().ports["latch_seq"][port])
        seq = cmd["latch_seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**64:
            return _reject("ERR_CMD_BAD_FIELD", f"latch_seq {_short(seq)}: expected an int 0..2^64-1")
        return seq

    # ------------------------------------------------------------ wall clock

    def _expiry_ns(self, cmd: Mapping, now: int) -> int | Submission:
        given = [k for k in ("expires_ns", "expires_in_s", "expires_at") if k in cmd]
        if len(given) != 1:
            return _reject("ERR_CMD_BAD_FIELD", "a command needs exactly one of expires_ns, expires_in_s, expires_at")
        name = given[0]
        ahead_s = self._ahead_s(name, cmd[name], now)
        if isinstance(ahead_s, Submission):
            return ahead_s
        if ahead_s > MAX_COMMAND_HORIZON_S:
            return _reject("ERR_CMD_BAD_FIELD", f"{name}: expiry {ahead_s:.0f} s ahead; at most {MAX_COMMAND_HORIZON_S} s")
        if ahead_s < -MAX_COMMAND_HORIZON_S:
            return now - 1          # long past: rejected as expired
        return int(cmd[name]) if name == "expires_ns" else now + int(ahead_s * 1e9)

    def _start_ns(self, cmd: Mapping, code: int, now: int, expires: int) -> int | None | Submission:
        """The window's start on the controller clock; None: when the loop takes it."""
        given = [k for k in STARTS if k in cmd]
        if not given:
            return None
        if code >= _core.GRID_COMMANDS:
            return _reject("ERR_CMD_BAD_FIELD", f"{given[0]}: only grid commands (setpoint, export_limit, "
                           f"import_limit, load_shed) start later; this one applies when received")
        if len(given) > 1:
            return _reject("ERR_CMD_BAD_FIELD", "a command has at most one of starts_ns, starts_in_s, starts_at")
        name = given[0]
        ahead_s = self._ahead_s(name, cmd[name], now)
        if isinstance(ahead_s, Submission):
            return ahead_s
        if ahead_s > MAX_COMMAND_HORIZON_S:
            return _reject("ERR_CMD_BAD_FIELD", f"{name}: start {ahead_s:.0f} s ahead; at most {MAX_COMMAND_HORIZON_S} s")
        starts = now + int(max(ahead_s, -MAX_COMMAND_HORIZON_S) * 1e9)
        if name == "starts_ns" and ahead_s >= -MAX_COMMAND_HORIZON_S:
            starts = int(cmd[name])
        if starts >= expires:
            return _reject("ERR_CMD_BAD_FIELD", f"{name}: the window starts {(starts - expires) / 1e9:.3f} s after "
                           f"its expiry; a command starts before it expires")
        return starts

    def _ahead_s(self, name: str, raw, now: int) -> float | Submission:
        """How far ahead of now a time field (*_ns, *_in_s, *_at) lies, in s."""
        number = _finite(raw)
        if number is None:
            return _reject("ERR_CMD_BAD_FIELD", f"{name} {_short(raw)}: expected a finite number")
        if name.endswith("_ns"):
            return (number - now) / 1e9
        if name.endswith("_in_s"):
            return number
        if not self.wall.synchronized():
            base = name[:-3]
            return _reject("ERR_CLOCK_UNSYNCED", f"{name} needs a synchronised system clock and this one is not "
                           f"(yet); use {base}_in_s, or wait for NTP (timedatectl)")
        self._anchor_wall(now)
        return number - self.wall.now()

    def _anchor_wall(self, now: int) -> None:
        if self._wall_anchor is None:
            self._wall_anchor = self.wall.now() * 1e9 - now

    def check_wall_clock(self) -> float | None:
        """Call about once a second: when the wall clock has stepped, wall-clock expiries are
        re-anchored (the loop gets each active one again with its corrected expiry).
        Returns the step in seconds, or None."""
        synced = self.wall.synchronized()
        if synced != self._wall_synced:
            self._wall_synced = synced
            log.info("system clock %s: commands with expires_at are %s", "synchronised" if synced else
                     "not synchronised (timedatectl, chronyc tracking)", "accepted" if synced else "refused "
                     "(ERR_CLOCK_UNSYNCED) until it is; expires_in_s works")
        if self._wall_anchor is None or not synced:
            return None
        now = self._core.now_ns()
        offset = self.wall.now() * 1e9 - now
        step = offset - self._wall_anchor
        if abs(step) < CLOCK_STEP_NS:
            return None
        self._wall_anchor = offset
        wall_now, moved = self.wall.now(), 0
        with self._lock:
            for h, c in self._book.held.items():
                if c.starts_at is None and c.expires_at is None:
                    continue
                starts = c.starts_ns if c.starts_at is None else now + int((c.starts_at - wall_now) * 1e9)
                expires = c.expires_ns if c.expires_at is None else now + int((c.expires_at - wall_now) * 1e9)
                c.starts_ns, c.expires_ns = (None if c.starts_ns is None else starts), expires
                moved += self._core.push_command(_core.COMMAND_KINDS[c.kind], -1, c.value_w, expires, h,
                                                 starts_ns=starts or 0, now=c.starts_ns is None, reanchor=True)
        log.warning("ERR_CLOCK_STEPPED: the system clock stepped by %+.3f s; %d wall-clock starts and expiries "
                    "re-anchored", step / 1e9, moved)
        return step / 1e9

    # ------------------------------------------------------------ latched faults

    def scheduled(self) -> list[dict]:
        """The grid commands the loop holds, active and queued (see Book.listing)."""
        with self._lock:
            active, queued, applied = self._book.view()
            self._book.prune(active, queued, applied)
            return self._book.listing(active, queued, applied, self._core.now_ns(), self.wall.now())

    def latched_faults(self, snap: Snapshot | None = None) -> dict[str, int]:
        """Ports with faults that only an operator clears (latched or out of service): the journal."""
        snap = self.snapshot() if snap is None else snap
        bits = snap.ports["faults"] & _core.PERSISTENT_FAULTS
        return {pid: int(b) for pid, b in zip(self.port_ids, bits) if b}

    def restore_faults(self, faults: dict[str, int]) -> list[str]:
        """Re-latch faults saved before a restart (known ports, known bits); returns the ports restored."""
        restored = []
        for pid, bits in faults.items():
            if pid in self._port_index and bits & _core.PERSISTENT_FAULTS:
                ok = self._core.push_command(_core.COMMAND_KINDS["latch_fault"], self._port_index[pid],
                                             float(bits & _core.PERSISTENT_FAULTS), 2**62, 0, 0)
                if ok:
                    restored.append(pid)
        return restored

    def _forget_expired(self, now: int) -> None:
        heap = self._seen_heap
        while heap and heap[0][0] <= now:
            _, table, key = heapq.heappop(heap)
            self._seen.get(table, {}).pop(key, None)

    # ------------------------------------------------------------ measurements

    def measure(self, source: str | int, value: float, t_ns: int | None = None) -> Submission:
        """Publish a measurement (latest wins); t_ns on the controller clock, default now.
        Never raises: a bad source, value or time is a rejected Submission with its code."""
        try:
            verdict = self._measure(source, value, t_ns)
        except Exception as e:      # a gap in validation must not become an exception for the caller
            log.error("ERR_INTERNAL: measurement rejected by an unexpected %s: %s", type(e).__name__, e)
            verdict = _reject("ERR_MEAS_BAD_VALUE", f"measurement not understood ({type(e).__name__})")
        if verdict.code is not None and verdict.code not in _GATE_CODES:   # the gate counts its own, per source
            with self._lock:
                self._meas_counts[verdict.code] += 1
        return verdict

    def measure_many(self, index, value, t_ns: int | None = None) -> int:
        """Publish many measurements stamped t_ns (a meter block, a plant step); returns how many
        were accepted. index: integer source indices (source_index()); value: numbers. Never
        raises: a malformed call is counted and accepts nothing."""
        try:
            index, value, t = self._many_arrays(index, value, t_ns)
        except _Refused as e:
            with self._lock:
                self._meas_counts[e.code] += e.values
            return 0
        counts = self._core.write_measurements(index, value, t)
        return int(counts[0])

    def _many_arrays(self, index, value, t_ns):
        try:
            index = np.asarray(index)
            value = np.asarray(value)
        except Exception:
            raise _Refused("ERR_MEAS_BAD_VALUE", 1) from None
        n = max(index.size, 1)
        if index.ndim != 1 or index.shape != value.shape:
            raise _Refused("ERR_MEAS_BAD_VALUE", n)
        if index.dtype.kind not in "iu":
            raise _Refused("ERR_MEAS_UNKNOWN_SOURCE", n)      # floats would truncate, bools pass for 0/1
        if value.dtype.kind not in "iuf":
            raise _Refused("ERR_MEAS_BAD_VALUE", n)           # strings, bytes, bools, objects
        if index.size and not (0 <= index.min() and index.max() < len(self._sources)):
            raise _Refused("ERR_MEAS_UNKNOWN_SOURCE", n)      # checked before the cast: 2**32 + k is not k
        t = self._time(t_ns)
        if isinstance(t, Submission):
            raise _Refused(t.code, n)
        return (np.ascontiguousarray(index, np.int32), np.ascontiguousarray(value, np.float64), t)

    def _time(self, t_ns) -> int | Submission:
        if t_ns is None:
            return self._core.now_ns()
        if isinstance(t_ns, (bool, np.bool_)) or not isinstance(t_ns, numbers.Integral) \
                or not INT64[0] <= int(t_ns) <= INT64[1]:
            return _reject("ERR_MEAS_BAD_TIME", f"t_ns {_short(t_ns)}: expected an integer of ns on the controller clock")
        return int(t_ns)

    def source_index(self, name: str) -> int:
        """Index of a source for faster measure() calls."""
        return self._sources[name][0]

    # ------------------------------------------------------------ devices (see v2g_rt.devices)

    def claim_source(self, name: str, device: str) -> None:
        """A device feeds this source; measure() refuses it from now on (the native
        attach_can/add_i2c_sensor, or device_writer, make the device the slot's only writer)."""
        if name not in self._sources:
            raise KeyError(f"no source {name!r}")
        if self._owned.get(name, device) != device:
            raise ValueError(f"{name} is already fed by {self._owned[name]}; one writer per source")
        self._owned[name] = device

    def device_writer(self, name: str, device: str):
        """For a device served on the Python side (a sim backend): claim the source for the
        device kind and return the one way to write it, write(value, t_ns) -> GATE_CODES index
        (0: accepted), through the gate as that kind's writer, as the native reader would."""
        self.claim_source(name, device)
        index, writer, core = self.source_index(name), _core.WRITERS[device], self._core
        core.claim(index, writer)
        return lambda value, t_ns: core.write_measurement(index, value, t_ns, writer)

    def latest(self, source: str) -> tuple[float, int] | None:
        """(value, t_ns) last published into source through the gate (by a device, a service or
        the plant), or None before the first; what the loop takes next, read from the exchange."""
        return self._core.read_slot(self.source_index(source))

    def accepted(self, source: str) -> int:
        """Values the gate has let into source since start."""
        return self._core.gate_stats()[self.source_index(source)][0]

    def served(self, device: str):
        """The sensors of a device kind served on the Python side (add_served_sensors), or None."""
        return self._served.get(device)

    def add_served_sensors(self, device: str, sensors) -> None:
        """Sensors of a device kind served on the Python side (before the controller steps or
        starts): sensors.poll(now_ns, catch_up) reads those due, sensors.schedule(start_ns) and
        sensors.next_ns() set and tell when they are due, sensors.stats() joins
        device_stats()[device]. poll_io() reads them in virtual time; in real time a Python
        thread beside the loop does."""
        if self.running or device in self._served:
            raise RuntimeError(f"{device} sensors are served once, before the controller runs")
        self._served[device] = sensors

    def attach_can(self, fd: int, frames_per_cycle: int, signals: list[tuple]) -> None:
        self._core.attach_can(fd, frames_per_cycle, signals)

    def attach_can_writer(self, address: int, name: int, timeout_s: float, interval_s: float,
                          ports: list[tuple[str, int, int]]) -> None:
        """The write stage sends these ports' outputs as J1939 setpoint frames (after attach_can):
        ports = [(port id, power module address, port number on its EVSE), ...]."""
        self._core.attach_can_writer(address, name, timeout_s, interval_s,
                                     [(self._port_index[p], da, k) for p, da, k in ports])

    def add_i2c_sensor(self, fd: int, address: int, mode: int, reg: int, nbytes: int, decode: int,
                       source: str, scale: float, period_s: float, invalid_raw: int | None = None,
                       offset: float = 0.0) -> int:
        self.claim_source(source, "i2c")
        return self._core.add_i2c_sensor(fd, address, mode, reg, nbytes, decode, self.source_index(source),
                                         scale, offset, period_s, invalid_raw=invalid_raw)

    def attach_gpio_input(self, fd: int, kind: str, source: str, debounce_cycles: int, initial: int) -> int:
        """The read stage drains fd's edge events into source (a port's contactor); kind "chardev"
        or "sim"; initial: the level read at start-up (-1: unknown until the first edge)."""
        self.claim_source(source, "gpio")
        return self._core.attach_gpio_input(fd, kind, self.source_index(source), debounce_cycles, initial)

    def attach_gpio_output(self, fd: int, kind: str, port: str, drive: str) -> int:
        """fd's line carries port's contactor command (requested open), set by the write stage
        (drive "loop") or by the I/O thread ("io-thread") when it changes."""
        return self._core.attach_gpio_output(fd, kind, self._port_index[port], drive, 0)

    def add_spi_channel(self, fd: int, ch, speed_hz: int) -> int:
        """An ADC channel (devices.spi.SpiChannelConfig) the I/O thread reads through fd."""
        self.claim_source(ch.source, "spi")
        diode = -1
        if ch.diode_source:
            self.claim_source(ch.diode_source, "spi")
            diode = self.source_index(ch.diode_source)
        return self._core.add_spi_channel(fd, ch.kind, ch.adc_range, ch.channel, self.source_index(ch.source), diode,
                                          samples=ch.samples, speed_hz=speed_hz, delay_us=ch.delay_us, ratio=ch.ratio,
                                          at_lo=ch.at_lo, at_hi=ch.at_hi, gain=ch.gain, offset=ch.offset,
                                          period_s=ch.period_s)

    def add_pwm_channel(self, port: str, chip_dir: str, channel: int, period_ns: int, interval_s: float) -> int:
        """Port's control pilot on channel `channel` of the sysfs pwmchip directory chip_dir."""
        return self._core.add_pwm_channel(self._port_index[port], chip_dir, channel, period_ns, interval_s)

    def io_schedule_stats(self) -> dict:
        """The native I/O thread's schedule: per job (i2c, spi, pwm) its period, runs, cost and the
        periods achieved; per pass its time."""
        return self._core.io_schedule_stats()

    def attach_plc(self, fd: int, port: str, mac: bytes, modem: bytes | None, window: int, interval_s: float,
                   attenuation_limit_db: float, frames_per_cycle: int) -> None:
        """A port's PLC modem on the AF_PACKET socket fd: the loop probes and drains it and
        feeds the port's plc_loss (when the site has it) as the PLC writer."""
        source = port_source(port, "plc_loss")
        index = -1
        if source in self._sources:
            self.claim_source(source, "plc")
            index = self.source_index(source)
        self._core.attach_plc(fd, self._port_index[port], index, mac, modem, window, interval_s,
                              attenuation_limit_db, frames_per_cycle)

    def poll_io(self) -> None:
        """Virtual time: the I/O jobs due by now (I2C and SPI reads, PWM writes, the GPIO drive lines
        of sleeping chips), native and served on the Python side (the I/O thread and the served
        sensors' thread do this while running in real time)."""
        self._core.poll_io()
        now = self._core.now_ns()
        for sensors in self._served.values():
            sensors.poll(now, catch_up=True)

    def device_stats(self) -> dict:
        i2c, tid = self._core.i2c_stats()
        can = self._core.can_stats()
        can["setpoints"] = self._core.can_writer_stats()
        plc = [dict(m, port=self.port_ids[m["port"]], attenuation_db=None if math.isnan(m["attenuation_db"])
                    else m["attenuation_db"]) for m in self._core.plc_stats()]       # None: no report yet
        pwm = self._core.pwm_stats()
        for d in pwm:
            d["port"] = self.port_ids[d["port"]]
        out = {"can": can, "i2c": i2c, "gpio": self._core.gpio_stats(), "spi": self._core.spi_stats(), "pwm": pwm, "plc": plc,
               "io_thread_tid": tid}
        for device, sensors in self._served.items():
            out[device] = out[device] + sensors.stats()
        return out

    def _measure(self, source, value, t_ns) -> Submission:
        if isinstance(source, str):
            entry = self._sources.get(source)
        elif isinstance(source, numbers.Integral) and not isinstance(source, (bool, np.bool_)):
            named = self._source_by_index.get(int(source))
            entry = (int(source), named[1]) if named else None
        else:
            entry = None
        if entry is None:
            return _reject("ERR_MEAS_UNKNOWN_SOURCE", f"no source {_short(source)} in site {self.site.name!r}")
        index, (lo, hi) = entry
        name = self._source_by_index[index][0]
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            self._core.count_rejection(index, _GATE_CODES.index("ERR_MEAS_BAD_VALUE"))   # per source, as the gate
            return _reject("ERR_MEAS_BAD_VALUE", f"{name}: {_short(value)} is not a number")
        try:
            v = float(value)
        except (OverflowError, ValueError):
            v = math.nan
        t = self._time(t_ns)
        if isinstance(t, Submission):
            return t
        code = _GATE_CODES[self._core.write_measurement(index, v, t)]
        if code == "accepted":
            return ACCEPTED
        return _reject(code, _gate_reason(code, name, v, lo, hi, t, self._core.now_ns(), self._owned.get(name)))

    # ------------------------------------------------------------ guidance

    def guide(self, plan_w, expires_ns: int, plan_id: int = 0) -> None:
        """The horizon planner's advice: planned W per port now (an array in port_ids order or a
        mapping port id -> W; NaN or absent: no advice), which orders the arbitration, never its
        limits, until expires_ns (controller clock). Stale advice is ignored by the loop."""
        if isinstance(plan_w, Mapping):
            plan = np.full(len(self.port_ids), np.nan)
            for pid, w in plan_w.items():
                plan[self._port_index[pid]] = w
        else:
            plan = np.ascontiguousarray(plan_w, dtype=np.float64)
        with self._guide_lock:
            self._core.write_guidance(plan, int(expires_ns), int(plan_id))

    # ------------------------------------------------------------ outputs

    def snapshot(self) -> Snapshot:
        site_b, nodes_b, ports_b = self._core.read_snapshot()
        site_row = np.frombuffer(site_b, row_dtype("site"))[0]
        site = {k: site_row[k].item() for k in site_row.dtype.names}
        site["binding"] = BINDINGS[site["binding"]]
        site["safe_state"] = [name for name, bit in _core.SAFE_REASONS.items() if site["safe_state"] & bit]
        return Snapshot(site["cycle"], site["t_ns"], site,
                        np.frombuffer(nodes_b, row_dtype("node")).copy(),
                        np.frombuffer(ports_b, row_dtype("port")).copy(),
                        self.node_ids, self.port_ids)

    def outputs(self, take: Iterable[str] = ()) -> np.ndarray:
        """Each port's latest output, as the write stage handed it over (port order of port_ids):
        sequence (+1 per hand-over), setpoint_w, valid_until_ns (the dead-man), contactor_closed.
        The output mailbox of links served by Python; wait on output_fd() for changes.

        A link passes the ids of the ports it serves as `take`: their outputs count as taken.
        One left untaken for half its validity is counted as refused (`stats()["outputs_refused"]`)."""
        idx = [self._port_index[p] for p in take]
        return np.frombuffer(self._core.read_outputs(idx), row_dtype("output")).copy()

    def output_fd(self) -> int:
        """An eventfd that becomes readable when some port's output was handed over (a move past
        the deadband, a contactor change, a keep-alive at half the validity, the stop). Read its
        8 bytes to re-arm it; the controller owns and closes it."""
        return self._core.outbox_fd()

    def histograms(self) -> dict[str, np.ndarray]:
        """Wake-latency and compute-time histograms: 1 us bins, the last one counts overflow."""
        raw = self._core.read_stats()
        return {"wake_latency": np.frombuffer(raw["lat_hist"], np.uint64).copy(),
                "compute": np.frombuffer(raw["cmp_hist"], np.uint64).copy()}

    def trace(self) -> np.ndarray:
        """The most recent cycles (planned, wake and end times), oldest first."""
        raw, first, end, length = self._core.read_trace()
        rows = np.frombuffer(raw, row_dtype("trace"))
        idx = np.arange(first, end, dtype=np.uint64) % length
        return rows[idx].copy()

    def stats(self) -> dict:
        raw = self._core.read_stats()
        lat = np.frombuffer(raw["lat_hist"], np.uint64)
        cmp_ = np.frombuffer(raw["cmp_hist"], np.uint64)
        with self._lock:
            commands = dict(self._cmd_counts)
            measurements = dict(self._meas_counts)
        rejected_by_source = {}
        gate = self._core.gate_stats()
        for name, (idx, _) in self._sources.items():
            for code, n in zip(_GATE_CODES, gate[idx]):
                if n:
                    measurements[code] = measurements.get(code, 0) + n
                    if code != "accepted":
                        rejected_by_source.setdefault(name, {})[code] = n
        return {
            "cycles": raw["cycles"], "overruns": raw["overruns"],
            "skipped_periods": raw["skipped_periods"], "overrun_streak": raw["overrun_streak"],
            "period_us": self.site.period_s * 1e6,
            "wake_latency": _summary(lat, raw["lat_min_ns"], raw["lat_max_ns"], raw["lat_sum_ns"]),
            "compute": _summary(cmp_, raw["cmp_min_ns"], raw["cmp_max_ns"], raw["cmp_sum_ns"]),
            "stages": {name: _stage_summary(np.frombuffer(h, np.uint64)) for name, h in raw["stage_hist"].items()},
            "commands": commands, "measurements": measurements, "rejected_by_source": rejected_by_source,
            "rt": self.rt_report,
            "devices": self.device_stats(), "outbox": self._core.outbox_stats(),
            "stop_cycles": self._core.stop_cycles,
            "outputs_refused": {pid: n for pid, n in zip(self.port_ids, self._core.output_refused()) if n},
        }


class _ServedIo(threading.Thread):
    """Reads the sensors served on the Python side on their periods while the loop runs."""

    def __init__(self, served: list, clock):
        super().__init__(name="v2g-served-io", daemon=True)
        self.served, self.clock = served, clock
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:       # the values go stale (the interlock's worst case); say why
            log.error("ERR_SERVICE_FAILED: the reader of sensors served on the Python side stopped: %s: %s. "
                      "Their sources go stale until the controller restarts", type(e).__name__, e)
            raise

    def _run(self) -> None:
        now = self.clock()
        for sensors in self.served:
            sensors.schedule(now)
        while not self.stopping.is_set():
            now = self.clock()
            due = min(sensors.next_ns() for sensors in self.served)
            if due > now:
                self.stopping.wait((due - now) / 1e9)
                continue
            for sensors in self.served:
                sensors.poll(now, catch_up=False)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def _reject(code: str, reason: str) -> Submission:
    return Submission(False, code, reason)


_GATE_CODES = _core.GATE_CODES
_PORT_ACTIONS = {"reset_fault": "latched faults reset", "disable_port": "taken out of service",
                 "enable_port": "back in service"}


class _Refused(Exception):
    """A malformed measure_many() call: its code and how many values it carried."""

    def __init__(self, code: str, values: int):
        self.code, self.values = code, values


def _short(x) -> str:
    """repr() that cannot flood a log line or raise (10**5000 has no repr in 3.11)."""
    try:
        r = repr(x)
    except Exception:
        r = f"<{type(x).__name__}>"
    return r if len(r) <= 80 else r[:77] + "..."


def _finite(x) -> float | None:
    """A real number (not a bool) as a finite float, or None."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        return None
    try:
        f = float(x)
    except (OverflowError, ValueError, TypeError):
        return None
    return f if math.isfinite(f) else None


def _gate_reason(code, name, v, lo, hi, t, now, owner) -> str:
    if code == "ERR_MEAS_BAD_VALUE":
        return f"{name}: {v!r} outside {lo:g} .. {hi:g}"
    if code == "ERR_MEAS_FUTURE":
        return f"{name}: stamped {(t - now) / 1e9:.6f} s after the controller clock"
    if code == "ERR_MEAS_TOO_OLD":
        return f"{name}: stamped {(now - t) / 1e9:.3f} s ago, older than the source's max age"
    if code == "ERR_MEAS_DEVICE_OWNED":
        return f"{name}: read directly from {owner or 'a device'}, its only writer"
    return f"{name}: older than the value it already holds"


def _wall(cmd: Mapping, name: str) -> float | None:
    return float(cmd[name]) if name in cmd else None


def _command_value(cmd: Mapping, kind: str, ports: dict[str, int]) -> tuple[float | Submission, int]:
    port = -1
    if kind in PORT_COMMANDS:
        p = cmd.get("port")
        if isinstance(p, str) and p in ports:
            port = ports[p]
        elif isinstance(p, int) and not isinstance(p, bool) and 0 <= p < len(ports):
            port = p
        else:
            return _reject("ERR_CMD_BAD_PORT", f"port {_short(p)} is not a port of this site"), port
        return 0.0, port
    if "latch_seq" in cmd:
        return _reject("ERR_CMD_BAD_FIELD", f"latch_seq belongs to reset_fault, not {kind}"), port
    if "port" in cmd:
        return _reject("ERR_CMD_BAD_FIELD", f"{kind} applies to the site, not to a port"), port
    if kind == "cancel":
        if ("of" in cmd) == ("of_id" in cmd):
            return _reject("ERR_CMD_BAD_FIELD", "cancel needs exactly one of 'of' (a kind: every command of it, "
                           "active and queued) and 'of_id' (one command's id)"), port
        if "of_id" in cmd:
            return -1.0, port
        of = cmd.get("of")
        code = _core.COMMAND_KINDS.get(of, -1) if isinstance(of, str) else -1
        if not 0 <= code < _core.GRID_COMMANDS:
            return _reject("ERR_CMD_BAD_FIELD", f"cancel needs 'of': one of setpoint, export_limit, import_limit, load_shed; found {_short(of)}"), port
        return float(code), port
    if "of" in cmd or "of_id" in cmd:
        return _reject("ERR_CMD_BAD_FIELD", f"of/of_id belong to cancel, not {kind}"), port
    v = _finite(cmd.get("value_w"))
    if v is None:
        return _reject("ERR_CMD_BAD_FIELD", f"value_w {_short(cmd.get('value_w'))}: expected a finite number of W"), port
    lo = -1e9 if kind == "setpoint" else 0.0
    if not lo <= v <= 1e9:
        return _reject("ERR_CMD_BAD_FIELD", f"value_w {v!r} outside {lo:g} .. 1e9 W"), port
    return float(v), port


def preempt_rt() -> bool:
    try:
        with open("/sys/kernel/realtime") as f:
            if f.read().strip() == "1":
                return True
    except OSError:
        pass
    return "PREEMPT_RT" in os.uname().version


def _has_cap(bit: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return False


def _rt_warning(what: str, err: int, rt: RealTime) -> str:
    if what == "sched_fifo":
        soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
        return (f"ERR_RT_PRIORITY: cannot run the loop at SCHED_FIFO priority {rt.priority}: "
                f"CAP_SYS_NICE {'present' if _has_cap(23) else 'missing'}, RLIMIT_RTPRIO {soft} "
                f"(need >= {rt.priority}); running at normal priority. Remedy: systemd LimitRTPRIO={rt.priority} "
                f"and CPUSchedulingPolicy=fifo (hw/systemd), or `ulimit -r {rt.priority}`, or run as root")
    if what == "mlockall":
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024} KiB"
        return (f"ERR_RT_MEMLOCK: mlockall failed ({os.strerror(err)}); RLIMIT_MEMLOCK {limit}, "
                f"CAP_IPC_LOCK {'present' if _has_cap(14) else 'missing'}. Remedy: LimitMEMLOCK=infinity")
    allowed = sorted(os.sched_getaffinity(0))
    return (f"ERR_RT_AFFINITY: cannot pin the loop to CPU {rt.cpu}; allowed CPUs {allowed}. "
            f"Remedy: choose one of them (rt.cpu)")
