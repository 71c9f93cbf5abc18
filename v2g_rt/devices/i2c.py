"""I2C sensors (TMP117 temperature, INA228 power monitor) read by the native I/O thread.

smbus2 opens /dev/i2c-N, checks the chip's identity and configures it; the native
I/O thread then reads one register per transfer with I2C_RDWR where the adapter
speaks plain I2C, or SMBus word / I2C-block transfers where I2C_FUNCS says it only
speaks SMBus. A sim sensor is served on the Python side instead: ServedBus reads
it on its period (the controller's poll_io in virtual time, a Python thread beside
the loop in real time) from a simulated register file (v2g_rt.sim.peers.i2c, which
this module never imports), decodes it with the I/O thread's own decoder and writes
it through the gate as the I2C writer.
"""
from __future__ import annotations

import errno
import fcntl
from dataclasses import dataclass

from .. import _core
from . import DeviceError, Served

SECTION = "i2c"          # [i2c.NAME]: one table per sensor

I2C_TIMEOUT = 0x0702
I2C_SLAVE = 0x0703
I2C_FUNC_I2C = 0x00000001
I2C_FUNC_SMBUS_READ_WORD_DATA = 0x00200000
I2C_FUNC_SMBUS_READ_I2C_BLOCK = 0x04000000
MODE_RDWR, MODE_SMBUS = 0, 1
BE16_SIGNED, BE24_UNSIGNED, BE24_SIGNED_SHIFT4, BE24_UNSIGNED_SHIFT4 = 0, 1, 2, 3


@dataclass(frozen=True)
class Register:
    reg: int
    nbytes: int
    decode: int
    scale: float          # per LSB; for INA228 power and current times CURRENT_LSB (set at attach)
    invalid_raw: int | None = None   # the decoded raw value that means "no reading yet"


# (sensor, quantity) -> register; identity register, expected value
SENSORS = {
    # TMP117: 0x8000 (-256 C) until the first conversion after power-on or reset
    "tmp117": {"temperature": Register(0x00, 2, BE16_SIGNED, 0.0078125, invalid_raw=-0x8000)},
    "ina228": {"power": Register(0x08, 3, BE24_UNSIGNED, 3.2), "current": Register(0x07, 3, BE24_SIGNED_SHIFT4, 1.0),
               "bus_voltage": Register(0x05, 3, BE24_UNSIGNED_SHIFT4, 195.3125e-6),
               "die_temperature": Register(0x06, 2, BE16_SIGNED, 7.8125e-3)},
}
# quantity -> the source kinds it can feed (the INA228's current and bus voltage feed none yet)
TEMPERATURES = ("heatsink_c", "ambient_c", "top_oil_c")
QUANTITY_KINDS = {"temperature": TEMPERATURES, "die_temperature": TEMPERATURES,
                  "power": ("node_power_w", "power_w"), "current": (), "bus_voltage": ()}
IDENTITY = {"tmp117": (0x0F, 0x0117), "ina228": (0x3E, 0x5449)}   # device ID / manufacturer ID "TI"
INA228_SHUNT_CAL = 0x02


@dataclass(frozen=True)
class I2cConfig:
    name: str
    backend: str           # dev | sim
    bus: int
    address: int
    sensor: str
    quantity: str
    source: str
    period_s: float
    shunt_ohms: float = 0.002
    max_current_a: float = 100.0
    scale: float = 1.0     # e.g. a current transformer's ratio
    gain: float = 1.0      # from calibration.toml (v2g_rt.calibration), not the site config:
    offset: float = 0.0    # value = raw * lsb * scale * gain + offset


def check_config(cf, site) -> list[I2cConfig]:
    out = []
    for sec in cf.tables("i2c"):
        name = sec.name.split(".", 1)[1]
        sensor = sec.get_str("sensor", choices=tuple(SENSORS))
        quantity = sec.get_str("quantity", "temperature" if sensor == "tmp117" else "power",
                               choices=tuple(SENSORS.get(sensor, {})) or None)
        cfg = I2cConfig(name=name, backend=sec.get_str("backend", "dev", choices=("dev", "sim")),
                        bus=sec.get_int("bus", 1, minval=0, maxval=255),
                        address=sec.get_int("address", minval=0x03, maxval=0x77), sensor=sensor, quantity=quantity,
                        source=sec.get_str("source"), period_s=sec.get_float("period_ms", 1000.0, minval=1,
                                                                               maxval=3.6e6, unit="ms") / 1e3,
                        shunt_ohms=sec.get_float("shunt_ohms", 0.002, above=0, maxval=10, unit="ohm"),
                        max_current_a=sec.get_float("max_current_a", 100.0, above=0, maxval=1e4, unit="A"),
                        scale=sec.get_float("scale", 1.0, above=0, maxval=1e6))
        out.append(cfg)
    return out


def feeds(site) -> list:
    """The sources the I/O thread feeds from I2C sensors."""
    from . import Feed
    return [Feed(cfg.source, f"i2c.{cfg.name}", "source", QUANTITY_KINDS.get(cfg.quantity, ()),
                 f"the {cfg.sensor}'s {cfg.quantity.replace('_', ' ')}") for cfg in site.sections.get("i2c") or ()]


def open_bus(cfg: I2cConfig):
    import smbus2
    path = f"/dev/i2c-{cfg.bus}"
    try:
        bus = smbus2.SMBus(cfg.bus)
    except FileNotFoundError as e:
        raise DeviceError(f"[i2c.{cfg.name}] {path} does not exist. Remedy: `modprobe i2c-dev`, enable the I2C "
                          f"controller in the board's device tree, check [i2c.{cfg.name}] bus") from e
    except PermissionError as e:
        raise DeviceError(f"[i2c.{cfg.name}] no permission on {path}. Remedy: add the service user to group i2c "
                          f"(hw/udev/90-v2g-rt.rules)") from e
    funcs = bus.funcs
    if funcs & I2C_FUNC_I2C:
        mode = MODE_RDWR
    elif funcs & I2C_FUNC_SMBUS_READ_WORD_DATA and funcs & I2C_FUNC_SMBUS_READ_I2C_BLOCK:
        mode = MODE_SMBUS
    else:
        bus.close()
        raise DeviceError(f"[i2c.{cfg.name}] {path} speaks neither plain I2C nor SMBus word/I2C-block reads "
                          f"(I2C_FUNCS 0x{funcs:08x})")
    try:
        fcntl.ioctl(bus.fd, I2C_SLAVE, cfg.address)
        fcntl.ioctl(bus.fd, I2C_TIMEOUT, 5)                 # 50 ms: bounds a stuck transfer
        reg, want = IDENTITY[cfg.sensor]
        word = bus.read_word_data(cfg.address, reg)
        got = ((word & 0xFF) << 8) | (word >> 8)            # the chip sends MSB first
    except OSError as e:
        bus.close()
        raise DeviceError(f"[i2c.{cfg.name}] no answer from 0x{cfg.address:02x} on {path} ({e.strerror}). "
                          f"Remedy: check the address, wiring and pull-ups (`i2cdetect -y {cfg.bus}`)") from e
    if got != want:
        bus.close()
        raise DeviceError(f"[i2c.{cfg.name}] the chip at 0x{cfg.address:02x} on {path} is not a {cfg.sensor} "
                          f"(register 0x{reg:02x} reads 0x{got:04x}, expected 0x{want:04x})")
    return bus, mode


def current_lsb(cfg: I2cConfig) -> float:
    return cfg.max_current_a / 2**19


def lsb(cfg: I2cConfig) -> float:
    """The physical value of one raw unit of cfg's register, as configured (before calibration's gain)."""
    return SENSORS[cfg.sensor][cfg.quantity].scale * (current_lsb(cfg) if cfg.quantity in ("power", "current")
                                                      else 1.0) * cfg.scale


def configure_ina228(bus, cfg: I2cConfig) -> None:
    cal = round(13107.2e6 * current_lsb(cfg) * cfg.shunt_ohms)
    bus.write_i2c_block_data(cfg.address, INA228_SHUNT_CAL, [cal >> 8 & 0x7F, cal & 0xFF])


class I2cDevice:
    def __init__(self, handle, cfg: I2cConfig):
        self.handle, self.cfg = handle, cfg

    def close(self) -> None:
        self.handle.close()


def _unplugged(address: int, register: int, n: int) -> bytes:
    raise OSError(errno.ENXIO, "no chip plays this sim sensor")


class ServedSensor:
    """One sim sensor's register, read on the Python side as the I/O thread reads a real one:
    a failed transfer is counted and publishes nothing, the "no reading yet" code is counted
    as not ready, a value the gate refuses is counted."""

    def __init__(self, cfg: I2cConfig, reg: Register, scale: float, write):
        self.cfg, self.reg, self.scale, self.write = cfg, reg, scale, write
        self.period_ns = round(cfg.period_s * 1e9)
        self.next_ns: int | None = None
        self.reads = self.errors = self.not_ready = self.gate_rejected = self.last_errno = 0

    def read(self, transfer, t_ns: int) -> None:
        try:
            data = transfer(self.cfg.address, self.reg.reg, self.reg.nbytes)
            if len(data) != self.reg.nbytes:
                raise OSError(errno.EIO, f"{len(data)} bytes for {self.reg.nbytes}")
        except OSError as e:
            self.errors += 1
            self.last_errno = e.errno or errno.EIO
            return
        self.reads += 1
        raw = _core.i2c_decode(self.reg.decode, data)
        if raw == self.reg.invalid_raw:
            self.not_ready += 1
            return
        if self.write(raw * self.scale + self.cfg.offset, t_ns) != 0:
            self.gate_rejected += 1

    def stats(self) -> dict:
        return {"reads": self.reads, "errors": self.errors, "not_ready": self.not_ready,
                "gate_rejected": self.gate_rejected, "last_errno": self.last_errno,
                "period_s": self.period_ns / 1e9, "mode": "python", "address": self.cfg.address}


class ServedBus(Served):
    """The sim backend: sensors served on the Python side. The far side plugs in its chips with
    plug(transfer): transfer(address, register, n) returns the register's n bytes MSB first, or
    raises OSError for a NACK."""

    def __init__(self):
        super().__init__(_unplugged)


def attach(ctrl, site):
    """Open each sensor and hand it to the core; returns the open devices, the bus of the sim
    sensors (None without them; its far side plugs in the chips) and the sim sensors' configs."""
    devices, served, sim = [], None, []
    for cfg in site.sections["i2c"]:
        if cfg.source not in ctrl.sources:
            raise DeviceError(f"[i2c.{cfg.name}] source {cfg.source!r} is not a source of this site", "ERR_CONFIG_VALUE")
        reg, scale = SENSORS[cfg.sensor][cfg.quantity], lsb(cfg) * cfg.gain
        if cfg.backend == "sim":
            if served is None:
                served = ServedBus()
                ctrl.add_served_sensors(SECTION, served)
            served.sensors.append(ServedSensor(cfg, reg, scale, ctrl.device_writer(cfg.source, SECTION)))
            sim.append(cfg)
            continue
        bus, mode = open_bus(cfg)
        if cfg.sensor == "ina228":
            configure_ina228(bus, cfg)
        devices.append(I2cDevice(bus, cfg))
        ctrl.add_i2c_sensor(bus.fd, cfg.address, mode, reg.reg, reg.nbytes, reg.decode, cfg.source, scale,
                            cfg.period_s, invalid_raw=reg.invalid_raw, offset=cfg.offset)
    return devices, served, sim


# calibration: a temperature channel's references (a dry-block calibrator), the answers' range and the tolerance
TEMPERATURE_POINTS_C = (10.0, 40.0)
TEMPERATURE_RANGE_C = (-40.0, 125.0)
TEMPERATURE_TOLERANCE = (1.0, 0.02)        # |offset| in C, |gain - 1|


def calibration_fingerprint(cfg: I2cConfig) -> str:
    """What the channel is, as configured: calibration's gain and offset apply to this only."""
    return f"bus={cfg.bus} address=0x{cfg.address:02x} sensor={cfg.sensor} quantity={cfg.quantity} scale={cfg.scale:g}"


def read_identity(cfg: I2cConfig, bench) -> int:
    """The chip's identity register, through the device attach() opened (the far side's registers
    for a sim sensor, /dev/i2c-N for a real one)."""
    reg, _ = IDENTITY[cfg.sensor]
    if cfg.backend == "sim":
        data = bench.ctrl.served(SECTION).transfer(cfg.address, reg, 2)
        return int.from_bytes(data, "big")
    dev = next(d for d in bench.devices.i2c if d.cfg.name == cfg.name)
    word = dev.handle.read_word_data(cfg.address, reg)
    return ((word & 0xFF) << 8) | (word >> 8)


def calibration_steps(site, bench) -> list:
    """Per sensor: its chip identity; per temperature channel: zero and span against references."""
    from ..calibrate import Step, Verdict, analog_zero_span

    steps = []
    for cfg in site.sections["i2c"]:
        reg, want = IDENTITY[cfg.sensor]
        where = f"0x{cfg.address:02x} on {'the sim bus' if cfg.backend == 'sim' else f'/dev/i2c-{cfg.bus}'}"

        def identity(b, cfg=cfg, reg=reg, want=want, where=where) -> Verdict:
            try:
                got = read_identity(cfg, b)
            except OSError as e:
                return Verdict.fail("ERR_CALIBRATION_IDENTITY", f"no answer from {where} ({e.strerror or e})")
            if got != want:
                return Verdict.fail("ERR_CALIBRATION_IDENTITY", f"the chip at {where} is not a {cfg.sensor}: register "
                                                                f"0x{reg:02x} reads 0x{got:04x}, expected 0x{want:04x}")
            return Verdict(True, f"register 0x{reg:02x} = 0x{got:04x}", result={f"i2c.{cfg.name}": {"identity": got}})
        steps.append(Step(f"i2c.{cfg.name}.identity", f"I2C {cfg.name}: a {cfg.sensor} at {where}", identity))
        if cfg.quantity in ("temperature", "die_temperature"):
            peer = bench.devices.i2c_peer if cfg.backend == "sim" else None
            hold = (lambda v, src=cfg.source, peer=peer: peer.hold(src, v)) if peer is not None else None
            steps.append(analog_zero_span(f"i2c.{cfg.name}.span", f"I2C {cfg.name} ({cfg.source})", cfg.source, "°C",
                                          TEMPERATURE_POINTS_C, TEMPERATURE_RANGE_C, cfg.period_s,
                                          TEMPERATURE_TOLERANCE, hold=hold, section=f"i2c.{cfg.name}"))
    return steps
