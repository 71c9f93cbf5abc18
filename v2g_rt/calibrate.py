"""`v2g-rt calibrate`: guided commissioning of a site's devices, its grid meter and its ports.

The procedure is a list of steps, shown as "step i/n  what ... verdict". Every step runs, so
the engineer sees every problem of a visit at once; calibration.toml is written (atomically,
v2g_rt.calibration) only when every step passed, and an interrupted run writes nothing.

Steps
-----
A device kind contributes its own steps: its module in v2g_rt/devices/ may define

    calibration_steps(site, bench) -> list[Step]

which calibrate collects from every kind in devices.kinds() whose section the site has; the
meter and port steps (meter_steps) follow, since they need the whole site. A step is

    Step(id, what, run)   id    "i2c.tx1_ambient.span": the key of its answers in --answers and
                                of its line in the progress display
                          what  one line saying what is checked
                          run   run(bench) -> Verdict

run() talks to the site only through the Bench: bench.ctrl (the controller: latest(source),
accepted(source), snapshot(), submit through bench.command()), bench.devices (what attach()
opened), bench.settle(seconds) (lets the loop and the site run: virtual time on a simulated
site, real time on hardware), bench.ask(step id, Question) (the engineer's answer) and
bench.meter (the grid meter's readings, total and per phase). It returns a Verdict: ok, one
line of detail, the ERR_CALIBRATION_* code when not ok, and `result`: {section: {option:
value}} merged into calibration.toml.

A Question is answered by --answers FILE (TOML or JSON: {step id: {question key: value}}), else
by the simulated far side (Question.sim: a function the step sets when its device's backend is
sim; it acts on the sim far side, e.g. holds the chip at the reference, and returns what the
engineer would have read off the reference instrument; it acts even when the file answers),
else at the terminal. An answer
outside the question's range is refused with the reason (ERR_CALIBRATION_ANSWER).

Generic steps a kind wires to its devices: analog_zero_span (a channel against a zero and a
span reference), duty_readback (a commanded PWM duty against its sysfs read-back and the
engineer's logic analyser) and contactor_cycle (open, close, open with the feedback, never with
a vehicle). Helpers: pilot_test_box (a test box in state C at a direct-wired port, confirmed by
the engineer, read as C by the controller; never a vehicle), port_alone (one port in service
under a given fleet setpoint, the rest as isolate_ports left them) and Bench.cp_state. Wired:

    spi   v2g_rt.devices.spi.calibration_steps: each 4-20 mA or 0-10 V channel against a loop
          calibrator or a voltage reference, in mA or V (to_unit), held by the sim ADC
    pwm   v2g_rt.devices.pwm.calibration_steps: per pilot, with a test box in state C, the port
          alone in service at 6, 18, 30 (and 65) A through the fleet setpoint, so the loop sets
          the duty as for any setpoint: the I/O thread's sysfs read-back and the logic analyser
          (sim: the sim pwmchip's files) within one pilot quantum of the map (v2g_rt.pilot)
    gpio  v2g_rt.devices.gpio.calibration_steps: per port's drive and feedback lines, closed
          and opened by the interlock itself (the port in and out of service at 0 W, a pilot's
          test box in state C): calibrate never drives a line (see that function for why)

A site is simulated (simulated_site: the plant plays it, in virtual time) when the plant plays
an EVSE link or every port is a direct-wired one with a sim pilot. There the test boxes are the
far sides': a pilot's plugs into the SPI ADC far side (SimAdcs.plug, its CP following the sim
pwmchip's PWM) and out again after its step; a site without a meter at its root has none to
read there either (the meter step says so).
"""
from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import _core
from . import devices as device_kinds
from .errors import V2GError
from .site import PHASES, Site, port_source

TEST_CHARGE_W = 2000.0          # the small known charge each port is given, one port at a time
METER_SIGN_BAND = (0.8, 1.2)    # meter change / commanded charge that counts as "seen"
PHASE_SHARE = 0.7               # share of the change on one phase that names the port's phase
PHASE_NAMES = ("L1", "L2", "L3")


class CalibrationError(V2GError):
    def __init__(self, code: str, message: str):
        super().__init__(code, message)
        self.detail = message


class Interrupted(BaseException):
    """SIGTERM (or SIGHUP) during calibration, raised where the main thread is."""


@dataclass(frozen=True)
class Question:
    key: str                    # the answer's key inside its step's table
    prompt: str
    unit: str = ""
    lo: float = -math.inf       # numbers: the range an answer must be in
    hi: float = math.inf
    confirm: bool = False       # a yes/no confirmation instead of a number
    sim: Callable[[], float | bool] | None = None   # the simulated far side's answer (see the docstring)


@dataclass
class Verdict:
    ok: bool
    detail: str
    code: str | None = None
    result: dict = field(default_factory=dict)

    @classmethod
    def fail(cls, code: str, detail: str) -> Verdict:
        return cls(False, detail, code)


@dataclass(frozen=True)
class Step:
    id: str
    what: str
    run: Callable[[Bench], Verdict]


# ------------------------------------------------------------------ answers

class Answers:
    """--answers FILE: {step id: {key: value}}; every id must be a step of this run."""

    def __init__(self, path: str | None):
        self.path, self.table = path, {}
        if path is None:
            return
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise CalibrationError("ERR_CALIBRATION_ANSWER", f"{path}: cannot read it ({e.strerror})") from None
        try:
            doc = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode())
        except (ValueError, UnicodeDecodeError) as e:
            raise CalibrationError("ERR_CALIBRATION_ANSWER", f"{path}: not {'JSON' if path.endswith('.json') else 'TOML'}: {e}") from None
        if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
            raise CalibrationError("ERR_CALIBRATION_ANSWER", f"{path}: expected a table per step id, "
                                                             f"{{\"i2c.NAME.zero\": {{\"reference_c\": 10.0}}}}")
        self.table = _flatten_ids(doc)

    def check_ids(self, steps: list[Step]) -> None:
        known = {s.id for s in steps}
        unknown = sorted(set(self.table) - known)
        if unknown:
            raise CalibrationError("ERR_CALIBRATION_ANSWER", f"{self.path}: {', '.join(unknown)}: no such step on this "
                                                             f"site; its steps: {', '.join(sorted(known))}")

    def get(self, step_id: str, key: str):
        return self.table.get(step_id, {}).get(key)


def _flatten_ids(doc: dict, prefix: str = "") -> dict:
    """TOML's [i2c.tx1_ambient.zero] nests; step ids are the dotted paths to tables of plain values."""
    out = {}
    for k, v in doc.items():
        name = f"{prefix}{k}"
        plain = {kk: vv for kk, vv in v.items() if not isinstance(vv, dict)}
        if plain:
            out[name] = plain
        out.update(_flatten_ids({kk: vv for kk, vv in v.items() if isinstance(vv, dict)}, name + "."))
    return out


def check_answer(step_id: str, q: Question, value) -> float | bool:
    """The answer as the step takes it; CalibrationError with the reason when it is refused."""
    where = f"[{step_id}] {q.key}"
    if q.confirm:
        if isinstance(value, str) and value.strip().lower() in ("y", "yes", "true"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("n", "no", "false"):
            return False
        if isinstance(value, bool):
            return value
        raise CalibrationError("ERR_CALIBRATION_ANSWER", f"{where}: expected yes or no, found {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise CalibrationError("ERR_CALIBRATION_ANSWER", f"{where}: expected a number in {q.unit or 'units'}, "
                                                             f"found {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CalibrationError("ERR_CALIBRATION_ANSWER", f"{where}: expected a number, found {value!r}")
    if not q.lo <= value <= q.hi:
        raise CalibrationError("ERR_CALIBRATION_ANSWER", f"{where}: {value:g} {q.unit} is out of range: expected "
                                                         f"{q.lo:g} .. {q.hi:g} {q.unit} ({q.prompt})")
    return float(value)


# ------------------------------------------------------------------ the meter

class ModbusMeter:
    """The grid meter read over Modbus (a [modbus.NAME] meter, or the simulated site's): the total
    and, where its map has them, the three phases' active power, in W, import positive."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self.link = None            # made inside the loop: pymodbus takes the running one
        self.map = None

    def read(self) -> tuple[float, tuple[float, float, float] | None]:
        return self.loop.run_until_complete(self._read())

    async def _read(self):
        from .services.modbus import Failure, Link, discover, read_block
        try:
            if self.map is None:
                self.link = Link(self.cfg)
                await self.link.connect()
                self.map = self.cfg.register_map or await discover(self.link)
            values = {}
            for block in self.map.blocks:
                for point, value, code in await read_block(self.link, block):
                    values[point.name] = value
        except Failure as f:
            raise CalibrationError("ERR_CALIBRATION_METER", f"meter [modbus.{self.cfg.name}] {self.cfg.host}:"
                                                            f"{self.cfg.port}: {f.code}: {f}") from None
        if values.get("power_w") is None:
            raise CalibrationError("ERR_CALIBRATION_METER", f"meter [modbus.{self.cfg.name}]: no active power value")
        phases = tuple(values.get(f"power_l{k}_w") for k in (1, 2, 3))
        return values["power_w"], (None if None in phases else phases)

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


# ------------------------------------------------------------------ the bench

class Bench:
    """What a step may use: the site, its controller and devices, time, the engineer, the meter."""

    def __init__(self, site: Site, ctrl, devices, settle: Callable[[float], None], answers: Answers,
                 ask_terminal: Callable[[str, Question], str] | None, meter: ModbusMeter | None):
        self.site, self.ctrl, self.devices, self.settle = site, ctrl, devices, settle
        self.answers, self.ask_terminal, self.meter = answers, ask_terminal, meter
        self.asked: dict[str, dict] = {}
        self._ids = 0

    def ask(self, step_id: str, q: Question):
        """The answer: the sim far side acts (holds the reference) and answers, but an answer
        given in --answers wins (what the engineer read off the instrument); else the terminal."""
        value = q.sim() if q.sim is not None else None
        if (given := self.answers.get(step_id, q.key)) is not None:
            value = given
        elif value is None:
            if self.ask_terminal is None:
                raise CalibrationError("ERR_CALIBRATION_ANSWER", f"[{step_id}] {q.key}: no answer ({q.prompt}); give it "
                                       f"in --answers FILE as [{step_id}] {q.key} = ..., or run at a terminal")
            while True:
                try:
                    return self._note(step_id, q, check_answer(step_id, q, self.ask_terminal(step_id, q)))
                except CalibrationError as e:
                    print(f"  refused: {e}", file=sys.stderr)
        return self._note(step_id, q, check_answer(step_id, q, value))

    def _note(self, step_id: str, q: Question, value):
        self.asked.setdefault(step_id, {})[q.key] = value
        return value

    def cp_state(self, port: str) -> str | None:
        """The port's control pilot state (A-F) as the controller reads it now; None without a
        fresh reading, or between two states."""
        got = self.ctrl.latest(port_source(port, "cp_v"))
        if got is None or self.ctrl.now_ns() - got[1] > self.site.control.pilot_max_age_s * 1e9:
            return None
        return _core.cp_level_state(got[0])

    def command(self, kind: str, **fields) -> None:
        """A command through the controller's own path (validated, interlock applies)."""
        self._ids += 1
        verdict = self.ctrl.submit({"kind": kind, "id": f"calibrate-{self._ids}", "expires_in_s": 3600, **fields},
                                   source="calibrate")
        if not verdict:
            raise CalibrationError("ERR_CALIBRATION_INTERRUPTED", f"the controller refused {kind}: {verdict.code}: "
                                                                  f"{verdict.reason}")

    def fresh(self, source: str, after_ns: int, wait_s: float) -> float | None:
        """The source's first value stamped after after_ns, waiting up to wait_s; None if none came."""
        step = min(wait_s, 0.5)
        waited = 0.0
        while True:
            got = self.ctrl.latest(source)
            if got is not None and got[1] > after_ns:
                return got[0]
            if waited >= wait_s:
                return None
            self.settle(step)
            waited += step


# ------------------------------------------------------------------ generic device steps

def analog_zero_span(step_id: str, what: str, source: str, unit: str, points: tuple[float, float],
                     valid: tuple[float, float], period_s: float, tolerance: tuple[float, float],
                     hold: Callable[[float | None], None] | None = None, section: str = "",
                     to_unit: Callable[[float], float] = float) -> Step:
    """A channel against a zero and a span reference: the engineer applies each (or the sim far
    side, through hold), reads the reference instrument and answers its reading; the channel's
    readings give offset and gain (reading = gain * reference + offset is corrected to the
    reference: calibrated = (reading - offset) / gain). Dead: the reading does not follow
    (moves less than a fifth of the references' difference) or none arrives. tolerance =
    (largest |offset| in unit, largest |gain - 1|). to_unit: the source's value in unit (an SPI
    channel's engineering value back to the mA or V its correction applies to)."""

    def run(bench: Bench) -> Verdict:
        readings, refs = [], []
        for key, nominal in zip(("zero", "span"), points):
            sim = None
            if hold is not None:
                sim = (lambda v=nominal: (hold(v), v)[1])
            ref = bench.ask(step_id, Question(f"{key}_{unit_key(unit)}", f"apply the {key} reference (about "
                                              f"{nominal:g} {unit}) to {what} and enter the reference's reading",
                                              unit, *valid, sim=sim))
            t0 = bench.ctrl.now_ns()
            value = bench.fresh(source, t0, 2 * period_s + 1.0)
            if value is None:
                if hold:
                    hold(None)
                return Verdict.fail("ERR_CALIBRATION_DEAD_CHANNEL", f"{what}: no reading within "
                                    f"{2 * period_s + 1:g} s of the {key} reference")
            refs.append(ref)
            readings.append(to_unit(value))
        if hold:
            hold(None)
        d_ref, d_read = refs[1] - refs[0], readings[1] - readings[0]
        shown = f"{readings[0]:.3g} / {readings[1]:.3g} {unit} at references {refs[0]:g} / {refs[1]:g} {unit}"
        if abs(d_ref) < 1e-9:
            return Verdict.fail("ERR_CALIBRATION_ANSWER", f"{what}: the zero and span references are equal")
        if abs(d_read) < 0.2 * abs(d_ref):
            return Verdict.fail("ERR_CALIBRATION_DEAD_CHANNEL", f"{what} is dead: reads {shown}")
        gain = d_read / d_ref
        offset = readings[0] - gain * refs[0]
        if abs(offset) > tolerance[0] or abs(gain - 1) > tolerance[1]:
            return Verdict.fail("ERR_CALIBRATION_SPAN", f"{what}: offset {offset:+.3g} {unit}, gain {gain:.4f} "
                                f"(tolerance ±{tolerance[0]:g} {unit}, ±{tolerance[1] * 100:g} %): reads {shown}")
        return Verdict(True, f"offset {offset:+.3g} {unit}, gain {gain:.4f}",
                       result={section: {"offset": round(-offset / gain, 6) + 0.0, "gain": round(1 / gain, 6)}})
    return Step(step_id, what, run)


def unit_key(unit: str) -> str:
    return {"°C": "c", "C": "c", "V": "v", "mA": "ma", "A": "a", "W": "w", "%": "pct"}.get(unit, "value")


def duty_readback(step_id: str, what: str, set_duty: Callable[[float], float], duties: tuple[float, ...] = (10.0, 50.0, 90.0),
                  tolerance_pct: float = 0.5, measured: Callable[[], float] | None = None, settle_s: float = 0.5,
                  section: str = "") -> Step:
    """A PWM output at each duty: set_duty(pct) commands it and returns the duty the driver read
    back; the engineer answers what the logic analyser shows (the sim far side: measured()).
    Both must be within tolerance_pct (absolute) of the commanded duty."""

    def run(bench: Bench) -> Verdict:
        worst = 0.0
        for duty in duties:
            readback = set_duty(duty)
            bench.settle(settle_s)
            seen = bench.ask(step_id, Question(f"duty_{duty:g}_pct", f"{what} is commanded to {duty:g} %: enter the "
                                               f"duty the logic analyser measures", "%", 0.0, 100.0, sim=measured))
            for name, got in (("read back", readback), ("measured", seen)):
                if abs(got - duty) > tolerance_pct:
                    return Verdict.fail("ERR_CALIBRATION_DUTY", f"{what}: commanded {duty:g} %, {name} {got:g} % "
                                        f"(tolerance ±{tolerance_pct:g} %)")
                worst = max(worst, abs(got - duty))
        return Verdict(True, f"duty within {worst:.2f} % at {', '.join(f'{d:g}' for d in duties)} %",
                       result={section: {"duty_error_pct": worst}} if section else {})
    return Step(step_id, what, run)


def contactor_cycle(step_id: str, what: str, command: Callable[[bool], None], feedback: Callable[[], bool | None],
                    settle_s: float = 0.5, ready: Callable[[Bench], Verdict | None] | None = None,
                    confirm_sim: Callable[[], bool] | None = None, section: str = "") -> Step:
    """Open, close and open a contactor: command(closed) switches it, feedback() (True closed, False
    open, None not known) must follow each within settle_s; it is left open whatever happens.
    Never with a vehicle: ready(bench) is the precondition, None when it is met, else the verdict
    that refuses (a pilot's port: pilot_test_box); without one the engineer confirms that no
    vehicle is connected (a test box may be; confirm_sim: the sim far side's answer)."""

    def run(bench: Bench) -> Verdict:
        if ready is not None:
            refused = ready(bench)
            if refused is not None:
                return refused
        elif not bench.ask(step_id, Question("no_vehicle", f"{what}: no vehicle is connected, or a test box is "
                                             f"(yes/no)", confirm=True, sim=confirm_sim)):
            return Verdict.fail("ERR_CALIBRATION_CONTACTOR", f"{what}: not confirmed free of a vehicle; not switched")
        try:
            for closed in (False, True, False):
                command(closed)
                bench.settle(settle_s)
                got = feedback()
                if got is not closed:
                    return Verdict.fail("ERR_CALIBRATION_CONTACTOR", f"{what}: commanded {'closed' if closed else 'open'}"
                                        f", feedback {'none' if got is None else 'closed' if got else 'open'} after "
                                        f"{settle_s:g} s" + (": welded contacts, or the feedback wired to another "
                                                             "contactor" if got and not closed else ""))
        finally:
            command(False)
        return Verdict(True, f"open, closed, open: the feedback followed each within {settle_s:g} s",
                       result={section: {"cycled": True}} if section else {})
    return Step(step_id, what, run)


def pilot_test_box(bench: Bench, step_id: str, what: str, port: str, code: str,
                   plug: Callable[[], None] | None = None) -> Verdict | None:
    """A test box (an EV simulator) in state C at a direct-wired port, never a vehicle: the engineer
    confirms it (plug: the sim far side's test box plugs in, and the far side answers yes), then
    the controller must read state C on the CP. None when it does, else the verdict that refuses.
    The CP in A before means nothing is plugged in; in B, C or D something is, and the engineer
    confirms it is the test box."""
    before = bench.cp_state(port)
    if before not in ("A", "B", "C", "D"):
        return Verdict.fail(code, f"{what}: CP state {before or 'unknown (no fresh reading, or between states)'}: "
                                  f"the pilot is faulty or not sampled; check the pilot circuit and its SPI channel")
    prompt = (f"{what}: plug the test box in and set it to state C" if before == "A" else
              f"{what}: something is plugged in (CP state {before}): confirm it is the test box, not a vehicle, and "
              f"set it to state C")
    sim = (lambda: (plug(), True)[1]) if plug is not None else None
    if not bench.ask(step_id, Question("test_box", f"{prompt} (yes/no)", confirm=True, sim=sim)):
        return Verdict.fail(code, f"{what}: no test box confirmed (CP state {before}); nothing switched")
    state = bench.cp_state(port)
    for _ in range(10):
        if state == "C":
            return None
        bench.settle(0.1)
        state = bench.cp_state(port)
    return None if state == "C" else Verdict.fail(code, f"{what}: CP state {state or 'unknown'} with the test box, "
                                                       f"expected C: set the test box to C; check the CP's SPI channel")


# ------------------------------------------------------------------ meter and ports

def meter_steps(site: Site, bench: Bench) -> list[Step]:
    """The meter's sign (the first port's test charge) and each port's phase, one port charging
    at a time: the others are out of service (0 W, contactor open) through the controller's own
    port commands, and the test charge is a fleet setpoint that only the port under test can take."""
    root = next(n for n in site.nodes if n.parent is None)
    if bench.meter is None:
        return [Step(f"meter.{root.id}.sign", f"grid meter at {root.id}: sign, CT direction and port phases",
                     lambda b: Verdict(True, f"not checked: no [modbus.NAME] meter on {root.id} to read"))]
    seen: dict[str, tuple] = {}

    def measure(pid: str) -> tuple:
        if pid not in seen:
            seen[pid] = _test_charge(bench, pid)
        return seen[pid]

    def sign(b: Bench) -> Verdict:
        first = site.ports[0].id
        total, _, taken, _ = measure(first)
        if taken < 0.5 * TEST_CHARGE_W:
            return Verdict.fail("ERR_CALIBRATION_METER", f"port {first} took {taken:.0f} W of the {TEST_CHARGE_W:.0f} W "
                                                         f"test charge: {_why_not_taken(b, first)}")
        ratio = total / taken
        if -METER_SIGN_BAND[1] <= ratio <= -METER_SIGN_BAND[0]:
            return Verdict.fail("ERR_CALIBRATION_CT_REVERSED", f"the meter at {root.id} read {total:+.0f} W while port "
                                f"{first} charged {taken:+.0f} W: its CT is reversed")
        if not METER_SIGN_BAND[0] <= ratio <= METER_SIGN_BAND[1]:
            return Verdict.fail("ERR_CALIBRATION_METER", f"the meter at {root.id} changed {total:+.0f} W while port "
                                f"{first} charged {taken:+.0f} W: it does not see the port")
        return Verdict(True, f"import positive: {total:+.0f} W for {taken:+.0f} W",
                       result={f"meter.{root.id}": {"sign": 1, "gain": round(ratio, 4)}})

    def phase(pid: str, evse) -> Callable[[Bench], Verdict]:
        def run(b: Bench) -> Verdict:
            total, phases, taken, contactor = measure(pid)
            if taken < 0.5 * TEST_CHARGE_W:
                return Verdict.fail("ERR_CALIBRATION_METER", f"port {pid} took {taken:.0f} W of the "
                                    f"{TEST_CHARGE_W:.0f} W test charge: {_why_not_taken(b, pid)}")
            if contactor is not None and contactor != (True, False):
                shown = ["none" if c is None else "closed" if c else "open" for c in contactor]
                return Verdict.fail("ERR_CALIBRATION_CONTACTOR", f"port {pid}: contactor feedback {shown[0]} while "
                                    f"charging, {shown[1]} once stopped (expected closed, then open)")
            switched = ", contactor closed and opened with its feedback" if contactor else ""
            if phases is None:
                return Verdict(True, f"{total:+.0f} W; phase not checked: the meter reports no per-phase power{switched}")
            mags = [abs(w) for w in phases]
            k = max(range(3), key=mags.__getitem__)
            expected = min(i for i in range(3) if PHASES[evse.phases] >> i & 1)
            if mags[k] < PHASE_SHARE * sum(mags):
                return Verdict.fail("ERR_CALIBRATION_PHASE", f"port {pid}: the test charge spreads over the phases "
                                    f"({', '.join(f'{w:+.0f}' for w in phases)} W); the test box draws on L1 only")
            if k != expected:
                return Verdict.fail("ERR_CALIBRATION_PHASE", f"port {pid}'s L1 is on site phase {PHASE_NAMES[k]}, but "
                                    f"[node.{evse.id}] phases = {evse.phases!r} puts it on {PHASE_NAMES[expected]}: "
                                    f"phases swapped at the port or its supply")
            return Verdict(True, f"on {PHASE_NAMES[k]} ({abs(phases[k]):.0f} W){switched}",
                           result={f"port.{pid}": {"phase": PHASE_NAMES[k]}})
        return run

    steps = [Step(f"meter.{root.id}.sign", f"grid meter at {root.id}: sign and CT direction", sign)]
    for p in site.ports:
        steps.append(Step(f"port.{p.id}.phase", f"port {p.id}: {TEST_CHARGE_W / 1e3:g} kW test charge on the meter",
                          phase(p.id, site.node(p.evse))))
    return steps


def _why_not_taken(bench: Bench, port: str) -> str:
    faults = port_faults(bench, port)
    return "connect the test box (or a vehicle) there" if faults == "none" else f"port faults: {faults}"


def settle_s(site: Site) -> float:
    """Long enough for a contactor to close and its port to ramp to the test charge."""
    c = site.control
    return max(3.0, c.contactor_settle_s + 1.0, TEST_CHARGE_W / c.port_ramp_w_per_s + 1.0)


def _test_charge(bench: Bench, pid: str) -> tuple[float, tuple | None, float, tuple | None]:
    """The meter's change (total, per phase), the port's own measured power and its contactor's
    feedback (closed while on, closed after off; None without feedback) while only pid takes
    TEST_CHARGE_W: readings with it off, on, off again; on minus the mean of the offs."""
    wait = settle_s(bench.site)
    feedback = port_source(pid, "contactor")
    feedback = feedback if feedback in bench.ctrl.sources else None
    before = bench.meter.read()
    bench.command("enable_port", port=pid)
    bench.settle(wait)
    on = bench.meter.read()
    taken = float(bench.ctrl.snapshot().port(pid)["measured_w"])
    closed_on = _contactor(bench, feedback, wait)
    bench.command("disable_port", port=pid)
    bench.settle(wait)
    after = bench.meter.read()
    closed_off = _contactor(bench, feedback, wait)
    total = on[0] - (before[0] + after[0]) / 2
    phases = None
    if on[1] and before[1] and after[1]:
        phases = tuple(on[1][k] - (before[1][k] + after[1][k]) / 2 for k in range(3))
    return total, phases, taken if math.isfinite(taken) else 0.0, (closed_on, closed_off) if feedback else None


def _contactor(bench: Bench, source: str | None, within_s: float) -> bool | None:
    """The contactor feedback reported within the last within_s (None: none that fresh); a GPIO
    feedback line's level as the loop takes it."""
    from .devices.gpio import feedback_level
    level = feedback_level(bench.site, bench.ctrl, source.split("/")[1]) if source else None
    if level is not None:
        return level
    got = bench.ctrl.latest(source) if source else None
    if got is None or bench.ctrl.now_ns() - got[1] > within_s * 1e9:
        return None
    return got[0] >= 0.5


# ------------------------------------------------------------------ the procedure

def collect_steps(site: Site, bench: Bench) -> list[Step]:
    steps = []
    for kind in device_kinds.kinds():
        if site.sections.get(kind.SECTION) and hasattr(kind, "calibration_steps"):
            steps += kind.calibration_steps(site, bench)
    return steps + meter_steps(site, bench)


@dataclass
class Outcome:
    steps: int
    failed: list[tuple[Step, Verdict]]
    result: dict
    seconds: float


def run_steps(bench: Bench, steps: list[Step], show: Callable[[str], None]) -> Outcome:
    t0 = time.perf_counter()
    n = len(steps)
    failed, result = [], {}
    for i, step in enumerate(steps, 1):
        show(f"step {i:>{len(str(n))}}/{n}  {step.what} ...")
        try:
            verdict = step.run(bench)
        except CalibrationError as e:
            if e.code == "ERR_CALIBRATION_INTERRUPTED":
                raise
            verdict = Verdict.fail(e.code, e.detail)
        show(f"    {'ok' if verdict.ok else 'FAIL'}: " + (verdict.detail if verdict.ok else f"{verdict.code}: {verdict.detail}"))
        if verdict.ok:
            for section, values in verdict.result.items():
                if section:
                    result.setdefault(section, {}).update(values)
        else:
            failed.append((step, verdict))
    return Outcome(n, failed, result, time.perf_counter() - t0)


def isolate_ports(bench: Bench) -> None:
    """Every port out of service (0 W, contactor open); the test charge as the fleet setpoint."""
    for p in bench.site.ports:
        bench.command("disable_port", port=p.id)
    bench.command("setpoint", value_w=TEST_CHARGE_W)


def port_faults(bench: Bench, port: str) -> str:
    """The port's open and latched faults as the controller holds them, with their codes, but
    out of service (calibrate's own doing)."""
    from .faults import PORT_CODES
    bits = int(bench.ctrl.snapshot().port(port)["faults"]) & ~_core.FAULTS["out_of_service"]
    names = [f"{name} ({PORT_CODES.get(name, '?')})" for name, bit in _core.FAULTS.items() if bits & bit]
    return ", ".join(names) or "none"


@contextmanager
def port_alone(bench: Bench, port: str, value_w: float):
    """port in service alone (the others stay out, as isolate_ports left them) under the fleet
    setpoint value_w; afterwards out of service again under the test charge's setpoint."""
    bench.command("setpoint", value_w=value_w)
    bench.command("enable_port", port=port)
    try:
        yield
    finally:
        bench.command("disable_port", port=port)
        bench.command("setpoint", value_w=TEST_CHARGE_W)


def restore_ports(bench: Bench) -> None:
    bench.command("cancel", of="setpoint")
    for p in bench.site.ports:
        bench.command("enable_port", port=p.id)


def simulated_site(site: Site) -> bool:
    """The simulated plant plays the site: an EVSE link it plays (app.simulated), or only
    direct-wired ports whose pilots are sim pwmchips (its test boxes plug into their CPs)."""
    from .app import simulated
    sim_pilots = {c.port for c in site.sections.get("pwm") or () if c.backend == "sim"}
    return simulated(site) or bool(site.ports) and all(p.id in sim_pilots for p in site.ports)


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def calibrate(site: Site, out: Path, answers_path: str | None = None, inject: str | None = None,
              show: Callable[[str], None] = print, ask_terminal=None) -> tuple[Outcome, Path | None]:
    """Run every step on the site; write out only if all passed. Returns the outcome and the path
    written (None when nothing was)."""
    from . import calibration

    answers = Answers(answers_path)
    sim = simulated_site(site)
    if inject and not sim:
        raise CalibrationError("ERR_CALIBRATION_ANSWER", f"--inject {inject} miswires the simulated plant; "
                                                         f"{site.source} is not a simulated site")
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    rig = None
    try:
        rig = _SimRig(site, inject) if sim else _HardwareRig(site)
        bench = Bench(site, rig.ctrl, rig.devices, rig.settle, answers, ask_terminal, rig.meter())
        steps = collect_steps(site, bench)
        answers.check_ids(steps)
        isolate_ports(bench)
        bench.settle(settle_s(site))            # every port at 0 W before the first reading
        try:
            outcome = run_steps(bench, steps, show)
        finally:
            restore_ports(bench)
    except (KeyboardInterrupt, Interrupted) as e:
        raise CalibrationError("ERR_CALIBRATION_INTERRUPTED", f"calibration interrupted "
                               f"({type(e).__name__ if isinstance(e, KeyboardInterrupt) else e}); "
                               f"{out} left as it was") from None
    finally:
        if rig is not None:
            rig.close()
        for s, h in old.items():
            signal.signal(s, h)
    if outcome.failed:
        return outcome, None
    calibration.write(out, calibration.document(site, outcome.result, bench.asked))
    return outcome, out


class _SimRig:
    def __init__(self, site: Site, inject: str | None):
        from .sim.commissioning import SimSite
        try:
            self.sim = SimSite(site, inject)
        except ValueError as e:
            raise CalibrationError("ERR_CALIBRATION_ANSWER", f"--inject {inject}: {e}") from None
        self.ctrl, self.devices, self.settle = self.sim.ctrl, self.sim.devices, self.sim.advance
        self._meter = None

    def meter(self) -> ModbusMeter | None:
        """The site's meter as the plant plays it; None where the site has none (as on hardware)."""
        root = next(n for n in self.sim.site.nodes if n.parent is None)
        self._meter = ModbusMeter(self.sim.meter_config()) if root.meter_max_age_s is not None else None
        return self._meter

    def close(self) -> None:
        if self._meter:
            self._meter.close()
        self.sim.close()


class _HardwareRig:
    """The controller in real time with its devices, the EVSE links' services (a port's test
    charge must reach its charger), the journal left alone (ports taken out of service here
    must not outlive calibration)."""

    def __init__(self, site: Site):
        from .controller import Controller
        from .devices import attach
        from .services import Supervisor
        from .services.modbus import ModbusService
        from .services.ocpp import OcppService

        self.site = site
        self.ctrl = Controller(site)
        self.devices = attach(self.ctrl, site)
        self.supervisor = Supervisor()
        self.ctrl.start()
        if site.sections.get("modbus"):
            self.supervisor.add(ModbusService(self.ctrl, site.sections["modbus"]))
        if site.sections.get("ocpp"):
            self.supervisor.add(OcppService(self.ctrl, site.sections["ocpp"]))
        self.supervisor.start()
        self._meter = None

    def settle(self, seconds: float) -> None:
        time.sleep(seconds)

    def meter(self) -> ModbusMeter | None:
        root = next(n.id for n in self.site.nodes if n.parent is None)
        cfg = next((c for c in self.site.sections.get("modbus") or () if c.role == "meter" and c.node == root), None)
        self._meter = ModbusMeter(cfg) if cfg else None
        return self._meter

    def close(self) -> None:
        if self._meter:
            self._meter.close()
        self.ctrl.stop()
        self.supervisor.stop()
        self.devices.close()
