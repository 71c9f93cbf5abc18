"""GPIO contactors: feedback inputs and drive outputs on the GPIO character device (v2 uAPI).

Each [gpio.NAME] section is one line. This module resolves the chip (path, gpiochipN or label)
and the line (offset or name), requests it with GPIO_V2_GET_LINE_IOCTL — a feedback line as an
input with edge detection on both edges (kernel debounce where asked), a drive line as an output
requested at its safe value (open) — reads a feedback line's level once (GET_VALUES), makes the
fd nonblocking and hands it to the native core: the loop's read stage drains the edges into the
port's contactor source, its write stage (or the I/O thread, drive = "io-thread") sets the drive.
The sim backend hands the core pipes instead, carrying the same records; their far ends go to
the simulator (v2g_rt.sim.peers.gpio), which this module never imports.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import math
import os
from dataclasses import dataclass

from . import DeviceError
from ..site import port_source

SECTION = "gpio"          # [gpio.NAME]: one table per line

ROLES = ("contactor_feedback", "contactor_drive")
BIASES = {"as-is": 0, "pull-up": 1 << 8, "pull-down": 1 << 9, "disabled": 1 << 10}
FLAG_ACTIVE_LOW, FLAG_INPUT, FLAG_OUTPUT = 1 << 1, 1 << 2, 1 << 3
FLAG_EDGE_BOTH = (1 << 4) | (1 << 5)
ATTR_OUTPUT_VALUES, ATTR_DEBOUNCE = 2, 3
NAME_SIZE, LINES_MAX, ATTRS_MAX = 32, 64, 10


class ChipInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * NAME_SIZE), ("label", ctypes.c_char * NAME_SIZE), ("lines", ctypes.c_uint32)]


class Attribute(ctypes.Structure):       # struct gpio_v2_line_attribute (the union as its u64)
    _fields_ = [("id", ctypes.c_uint32), ("padding", ctypes.c_uint32), ("value", ctypes.c_uint64)]


class ConfigAttribute(ctypes.Structure):
    _fields_ = [("attr", Attribute), ("mask", ctypes.c_uint64)]


class LineConfig(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("num_attrs", ctypes.c_uint32), ("padding", ctypes.c_uint32 * 5),
                ("attrs", ConfigAttribute * ATTRS_MAX)]


class LineRequest(ctypes.Structure):
    _fields_ = [("offsets", ctypes.c_uint32 * LINES_MAX), ("consumer", ctypes.c_char * NAME_SIZE),
                ("config", LineConfig), ("num_lines", ctypes.c_uint32), ("event_buffer_size", ctypes.c_uint32),
                ("padding", ctypes.c_uint32 * 5), ("fd", ctypes.c_int32)]


class LineInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * NAME_SIZE), ("consumer", ctypes.c_char * NAME_SIZE),
                ("offset", ctypes.c_uint32), ("num_attrs", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                ("attrs", Attribute * ATTRS_MAX), ("padding", ctypes.c_uint32 * 4)]


class LineValues(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_uint64), ("mask", ctypes.c_uint64)]


def _iowr(nr: int, size: int, read_only: bool = False) -> int:
    return ((2 if read_only else 3) << 30) | (size << 16) | (0xB4 << 8) | nr


GET_CHIPINFO = _iowr(0x01, ctypes.sizeof(ChipInfo), read_only=True)
GET_LINEINFO = _iowr(0x05, ctypes.sizeof(LineInfo))
GET_LINE = _iowr(0x07, ctypes.sizeof(LineRequest))
GET_VALUES = _iowr(0x0E, ctypes.sizeof(LineValues))
SET_VALUES = _iowr(0x0F, ctypes.sizeof(LineValues))
EVENT_SIZE = 48           # struct gpio_v2_line_event


@dataclass(frozen=True)
class GpioConfig:
    name: str
    backend: str           # chardev | sim
    chip: str
    line: int | str        # offset or line name
    role: str
    port: str
    active_low: bool = False
    debounce_ms: float = 0.0     # feedback lines
    bias: str = "as-is"
    drive: str = "loop"          # drive lines: loop | io-thread (chips whose set can sleep)

    @property
    def feedback(self) -> bool:
        return self.role == "contactor_feedback"


def check_config(cf, site) -> list[GpioConfig]:
    out = []
    ports = {p.id: p for p in site.ports}
    seen: dict[tuple[str, str], str] = {}
    for sec in cf.tables(SECTION):
        name = sec.name.split(".", 1)[1]
        role = sec.get_str("role", choices=ROLES)
        port = sec.get_str("port")
        line = _line_option(sec)
        cfg = GpioConfig(name=name, backend=sec.get_str("backend", "chardev", choices=("chardev", "sim")),
                         chip=sec.get_str("chip", "gpiochip0"), line=line, role=role, port=port,
                         active_low=sec.get_bool("active_low", False),
                         debounce_ms=sec.get_float("debounce_ms", 0.0, minval=0, maxval=1000, unit="ms"),
                         bias=sec.get_str("bias", "as-is", choices=tuple(BIASES)),
                         drive=sec.get_str("drive", "loop", choices=("loop", "io-thread")))
        if cfg.feedback and sec.has("drive"):
            sec.problem("drive", "only a contactor_drive line is driven; a feedback line is read by the loop")
        if not cfg.feedback and sec.has("debounce_ms"):
            sec.problem("debounce_ms", "only a contactor_feedback line is debounced")
        if port not in ports:
            shown = ", ".join(list(ports)[:6])
            sec.problem("port", f"{port!r} is not a port of this site; ports are named EVSE.N, e.g. {shown}")
        elif cfg.feedback and not site.node(ports[port].evse).contactor_feedback:
            sec.problem("port", f"EVSE {ports[port].evse!r} has no contactor feedback source; set "
                                f"[node.{ports[port].evse}] contactor_feedback = true")
        if role and port and (role, port) in seen:
            sec.problem("port", f"port {port} already has a {role} line ([gpio.{seen[role, port]}]); one per port")
        seen.setdefault((role, port), name)
        out.append(cfg)
    return out


def _line_option(sec):
    """line: an offset (0..) or the line's name, as gpioinfo shows it."""
    sec.mark_read("line")
    if not sec.has("line"):
        sec.problem("line", "required option is missing: the line's offset or name (`gpioinfo`)")
        return 0
    value = sec.raw["line"]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or isinstance(value, int) and value < 0 \
            or isinstance(value, str) and not 0 < len(value) < NAME_SIZE:
        sec.problem("line", f"expected a line offset (an integer >= 0) or a line name (1-31 characters), "
                            f"found {value!r}")
        return 0
    return value


def feeds(site) -> list:
    """The contactor sources the loop feeds from feedback lines."""
    from . import Feed
    return [Feed(port_source(cfg.port, "contactor"), f"gpio.{cfg.name}", "port", ("contactor",),
                 "a contactor feedback line") for cfg in site.sections.get(SECTION) or () if cfg.feedback]


def gpio_ports(site) -> set[str]:
    """Ports whose contactor is wired to GPIO lines (the plant leaves them to the GPIO far side)."""
    return {cfg.port for cfg in site.sections.get(SECTION) or ()}


def feedback_level(site, ctrl, port: str) -> bool | None:
    """A port's debounced contactor feedback as the loop takes it (True: closed), None without a
    feedback line or before its level is known. The loop publishes it into the port's input every
    cycle, not through the exchange that Controller.latest reads; the core lists its feedback
    lines in attach order."""
    inputs = [cfg.port for cfg in site.sections.get(SECTION) or () if cfg.feedback]
    if port not in inputs:
        return None
    level = ctrl.device_stats()["gpio"]["inputs"][inputs.index(port)]["level"]
    return None if level is None else bool(level)


def debounce_cycles(cfg: GpioConfig, period_s: float) -> int:
    return math.ceil(cfg.debounce_ms / 1e3 / period_s - 1e-9) if cfg.debounce_ms else 0


# ---------------------------------------------------------------- the character device

def _fail(cfg: GpioConfig, what: str) -> DeviceError:
    return DeviceError(f"[gpio.{cfg.name}] {what}", "ERR_GPIO_LINE")


def chip_path(cfg: GpioConfig) -> str:
    """/dev/gpiochipN for a path, a gpiochipN name or a chip's label."""
    if cfg.chip.startswith("/"):
        return cfg.chip
    if os.path.exists(f"/dev/{cfg.chip}"):
        return f"/dev/{cfg.chip}"
    labels = []
    for path in sorted(glob.glob("/dev/gpiochip*")):
        try:
            info = chip_info(path)
        except OSError:
            continue
        labels.append(info.label.decode())
        if info.label.decode() == cfg.chip:
            return path
    raise _fail(cfg, f"no GPIO chip {cfg.chip!r}: chips here are labelled {', '.join(labels) or '(none)'}. Remedy: "
                     f"set chip to /dev/gpiochipN or a label `gpiodetect` shows; check the board's device tree")


def chip_info(path: str) -> ChipInfo:
    info = ChipInfo()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, GET_CHIPINFO, info)
    finally:
        os.close(fd)
    return info


def _line_info(chip_fd: int, offset: int) -> LineInfo:
    info = LineInfo()
    info.offset = offset
    fcntl.ioctl(chip_fd, GET_LINEINFO, info)
    return info


def _offset(cfg: GpioConfig, chip_fd: int, path: str) -> int:
    info = ChipInfo()
    fcntl.ioctl(chip_fd, GET_CHIPINFO, info)
    if isinstance(cfg.line, int):
        if cfg.line >= info.lines:
            raise _fail(cfg, f"line {cfg.line} does not exist: {path} ({info.label.decode()}) has {info.lines} lines")
        return cfg.line
    names = [_line_info(chip_fd, k).name.decode() for k in range(info.lines)]
    if cfg.line not in names:
        raise _fail(cfg, f"{path} ({info.label.decode()}) has no line named {cfg.line!r}; its named lines: "
                         f"{', '.join(n for n in names if n) or '(none)'}")
    return names.index(cfg.line)


def request_line(cfg: GpioConfig) -> tuple[int, int, bool]:
    """Request cfg's line; returns (line fd, initial logical level or -1 for a drive, kernel debounces)."""
    path = chip_path(cfg)
    try:
        chip_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise _fail(cfg, f"{path} does not exist. Remedy: check chip (`gpiodetect`)") from e
    except PermissionError as e:
        raise _fail(cfg, f"no permission on {path}. Remedy: add the service user to group gpio "
                         f"(hw/udev/90-v2g-rt.rules)") from e
    try:
        offset = _offset(cfg, chip_fd, path)
        req = LineRequest()
        req.offsets[0] = offset
        req.num_lines = 1
        req.consumer = f"v2g-rt {cfg.name}".encode()[:NAME_SIZE - 1]
        flags = BIASES[cfg.bias] | (FLAG_ACTIVE_LOW if cfg.active_low else 0)
        if cfg.feedback:
            req.config.flags = flags | FLAG_INPUT | FLAG_EDGE_BOTH
            if cfg.debounce_ms:
                _attribute(req, ATTR_DEBOUNCE, round(cfg.debounce_ms * 1000))
        else:
            req.config.flags = flags | FLAG_OUTPUT
            _attribute(req, ATTR_OUTPUT_VALUES, 0)            # requested open: its safe value
        kernel_debounce = cfg.feedback and cfg.debounce_ms > 0
        try:
            fcntl.ioctl(chip_fd, GET_LINE, req)
        except OSError as e:
            if not (kernel_debounce and e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)):
                raise _request_error(cfg, e, chip_fd, path, offset) from e
            req.config.num_attrs = 0                          # an older kernel: debounced in cycles
            kernel_debounce = False
            try:
                fcntl.ioctl(chip_fd, GET_LINE, req)
            except OSError as e2:
                raise _request_error(cfg, e2, chip_fd, path, offset) from e2
    finally:
        os.close(chip_fd)
    fd = req.fd
    os.set_blocking(fd, False)
    initial = -1
    if cfg.feedback:
        values = LineValues(0, 1)
        fcntl.ioctl(fd, GET_VALUES, values)
        initial = values.bits & 1
    return fd, initial, kernel_debounce


def _attribute(req: LineRequest, attr_id: int, value: int) -> None:
    a = req.config.attrs[req.config.num_attrs]
    a.attr.id, a.attr.value, a.mask = attr_id, value, 1
    req.config.num_attrs += 1


def _request_error(cfg, e: OSError, chip_fd: int, path: str, offset: int) -> DeviceError:
    where = f"line {offset} of {path}"
    if e.errno == errno.EBUSY:
        consumer = _line_info(chip_fd, offset).consumer.decode() or "another consumer"
        return _fail(cfg, f"{where} is busy: held by {consumer!r}. Remedy: release it (a sysfs export, another "
                          f"service) or choose another line")
    if cfg.feedback and e.errno in (errno.ENXIO, errno.EINVAL, errno.EIO):
        return _fail(cfg, f"{where} cannot report edges ({e.strerror}): no interrupt for this line. Remedy: wire "
                          f"the contactor feedback to an interrupt-capable line")
    return _fail(cfg, f"cannot request {where}: {e.strerror}")


# ---------------------------------------------------------------- attach

class GpioLine:
    def __init__(self, fd: int, cfg: GpioConfig):
        self.fd, self.cfg = fd, cfg

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FarEnds:
    """The sim backend's far ends, one pipe end per line, for the simulator: feedback lines' write
    ends (it writes 48-byte edge events), drive lines' read ends (it reads the struct
    gpio_v2_line_values the loop writes)."""

    def __init__(self):
        self.lines: list[tuple[GpioConfig, int]] = []

    def close(self) -> None:
        for _, fd in self.lines:
            try:
                os.close(fd)
            except OSError:
                pass
        self.lines = []


def attach(ctrl, site):
    """Request every line and hand it to the core; returns the lines, the sim backend's far ends
    (None without sim lines) and the site's period (for the far side's settle times)."""
    lines, far = [], None
    period_s = site.period_s
    try:
        for cfg in site.sections[SECTION]:
            if cfg.backend == "sim":
                far = far or FarEnds()
                near, other = _sim_pipe(cfg)
                far.lines.append((cfg, other))
                initial, kernel_debounce = -1, False
            else:
                near, initial, kernel_debounce = request_line(cfg)
            lines.append(GpioLine(near, cfg))
            if cfg.feedback:
                source = port_source(cfg.port, "contactor")
                ctrl.claim_source(source, SECTION)
                ctrl.attach_gpio_input(near, cfg.backend, source,
                                       0 if kernel_debounce else debounce_cycles(cfg, period_s), initial)
            else:
                ctrl.attach_gpio_output(near, cfg.backend, cfg.port, cfg.drive)
    except BaseException:
        for line in lines:
            line.close()
        if far:
            far.close()
        raise
    return lines, far, period_s


def _sim_pipe(cfg: GpioConfig) -> tuple[int, int]:
    """(our end, the far side's end): we read a feedback pipe and write a drive pipe."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    return (r, w) if cfg.feedback else (w, r)


def safe_outputs(site) -> str:
    """Without a running controller (systemd ExecStopPost): request every drive line as an output
    at its safe value (open; the kernel applies active_low) and release it. Names every line it
    could not reach; raises DeviceError if any."""
    drives = [cfg for cfg in site.sections.get(SECTION) or () if not cfg.feedback]
    done, failed = [], []
    for cfg in drives:
        if cfg.backend == "sim":
            done.append(f"{cfg.name} (sim: opens with the simulated contactor)")
            continue
        try:
            fd, _, _ = request_line(cfg)
        except DeviceError as e:
            failed.append(str(e).removeprefix("ERR_GPIO_LINE: "))
            continue
        os.close(fd)          # released: the line keeps the value it was requested with (chip permitting)
        done.append(f"{cfg.name} ({cfg.port})")
    if failed:
        raise DeviceError(f"contactor drive lines not made safe: {'; '.join(failed)}; opened: "
                          f"{', '.join(done) or 'none'}", "ERR_GPIO_LINE")
    return f"{len(done)} contactor drive lines opened: {', '.join(done) or 'none'}"


def calibration_steps(site, bench) -> list:
    """Per port with a contactor drive and a feedback line: open, close, open, the feedback
    checked each time (calibrate.contactor_cycle; ERR_CALIBRATION_CONTACTOR), never with a vehicle.

    The contactor is closed the way it always is: by the interlock, for a port in service whose
    vehicle is there, here under a fleet setpoint of 0 W, and opened by taking the port out of
    service again (calibrate has no command of its own that drives a line). So the interlock
    stays the only authority over the drive: never in Safe State, never with a fault open, and
    a pilot's contactor only in CP state C or D. A calibration-only
    "close it" command would need an exception to that last rule, and closing it in state A
    would put the supply on an outlet nothing has asked for. Hence on a port with a pilot the
    cycle needs a test box in state C that the engineer confirms (calibrate.pilot_test_box: the
    CP in A before, nothing plugged in; in B-D, it is the test box, not a vehicle); on a sim
    site the SPI ADC far side's test box plugs in and out again. Without a pilot the engineer
    confirms that no vehicle is connected (the sim plant's test loads are what is)."""
    from ..calibrate import TEST_CHARGE_W, Step, contactor_cycle, pilot_test_box, port_faults
    from .spi import cp_channel

    lines: dict[str, dict[str, GpioConfig]] = {}
    for cfg in site.sections[SECTION]:
        lines.setdefault(cfg.port, {})[cfg.role] = cfg
    settle_s = site.control.contactor_settle_s + 0.3
    steps = []
    for port in (p.id for p in site.ports):
        pair = lines.get(port, {})
        if len(pair) < 2:
            continue
        drive, fb = pair["contactor_drive"], pair["contactor_feedback"]
        step_id, what = f"gpio.{drive.name}.cycle", f"contactor of port {port} ([gpio.{drive.name}], [gpio.{fb.name}])"
        cp = cp_channel(site, port)
        adcs = bench.devices.spi_peer
        adcs = adcs if cp is not None and adcs is not None and cp.source in adcs.by_source else None
        sim = fb.backend == "sim" and drive.backend == "sim"

        def command(closed, port=port):
            bench.command("enable_port" if closed else "disable_port", port=port)

        def feedback(port=port):
            return feedback_level(site, bench.ctrl, port)

        ready = None
        if cp is not None:
            chips = bench.devices.pwm_peer
            duty = (lambda port=port, chips=chips: chips.duty(port)) if chips and port in chips.configs else None
            plug = (lambda src=cp.source, adcs=adcs, duty=duty: adcs.plug(src, "C", duty)) if adcs is not None else None
            ready = (lambda b, step_id=step_id, what=what, port=port, plug=plug:
                     pilot_test_box(b, step_id, what, port, "ERR_CALIBRATION_CONTACTOR", plug))
        cycle = contactor_cycle(step_id, what, command, feedback, settle_s, ready,
                                (lambda: True) if sim else None, section=f"gpio.{drive.name}")

        def run(b, cycle=cycle, adcs=adcs, cp=cp, port=port):
            b.command("setpoint", value_w=0.0)         # no current offered while it switches
            try:
                verdict = cycle.run(b)
                faults = port_faults(b, port)
                if not verdict.ok and faults != "none":
                    verdict.detail += f"; port faults: {faults}"
                return verdict
            finally:
                b.command("setpoint", value_w=TEST_CHARGE_W)
                if adcs is not None:
                    adcs.plug(cp.source, None)
        steps.append(Step(step_id, f"{what}: open, closed, open with its feedback", run))
    return steps
