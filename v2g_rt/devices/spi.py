"""Analog inputs on an SPI ADC (TI ADS8688) read by the native I/O thread: 4-20 mA loops,
0-10 V sensors and the control pilot's voltage.

Why the ADS8688: 8 channels of 16 bits with a range register per channel (+-10.24 V down to
0-5.12 V) and inputs protected to +-20 V, so a 4-20 mA loop through its shunt, a 0-10 V
transmitter and the CP's +-12 V through a divider all connect without a level shifter; a
12-bit unipolar MCP3208 would need one for the pilot and resolves 4-20 mA in 4 uA steps.

spidev opens /dev/spidevB.C and configures it (mode 1, speed, 8-bit words), then the range
register of each channel; the native I/O thread reads each channel on its period with one
SPI_IOC_MESSAGE ioctl and converts it (native io_spi.pxi). A sim ADC is served on the Python
side: ServedAdcs reads it on its period (poll_io in virtual time, a Python thread beside the
loop in real time) from the far side (v2g_rt.sim.peers.spi, never imported here), which
answers the same frames the I/O thread sends; the answer is converted by the native code.

Config: [spi.NAME] backend, bus, cs, speed_hz, period_ms, and one table per channel,
[spi.NAME.CHANNEL_NAME]: channel (0-7), kind ("4-20mA", "0-10V", "cp"), source, shunt_ohms
(4-20mA), divider (0-10V, cp: input volts per ADC volt), range = [value at 4 mA, at 20 mA]
or [at 0 V, at 10 V], gain and offset (calibration of the reading in mA or V), samples,
period_ms.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, replace

from .. import _core
from ..site import port_source
from . import DeviceError, Served

SECTION = "spi"              # [spi.NAME]: one table per ADC, a sub-table per channel

KINDS = tuple(_core.SPI_KINDS)                   # "4-20mA", "0-10V", "cp"
ANALOG_SOURCES = ("top_oil_c", "ambient_c", "heatsink_c", "node_power_w", "power_w")
FEEDS = {"4-20mA": ANALOG_SOURCES, "0-10V": ANALOG_SOURCES, "cp": ("cp_v",)}
SPI_MODE = 1                 # ADS8688: CPOL 0, CPHA 1
ADS_WRITE = 0x0100           # program register write: (address << 9) | 0x0100 | value
ADS_RANGE_REG = 0x05         # Range_CH0; CHn at 0x05 + n
BIPOLAR = {"+-10.24V": 10.24, "+-5.12V": 5.12, "+-2.56V": 2.56}
UNIPOLAR = {"0-5.12V": 5.12, "0-10.24V": 10.24}
CP_BURST_DELAY_US = 25       # 40 conversions 25 us apart (plus ~3 us each) span one 1 kHz period


@dataclass(frozen=True)
class SpiChannelConfig:
    adc: str                 # the [spi.NAME] it belongs to
    name: str
    channel: int
    kind: str
    source: str
    ratio: float             # 4-20mA: shunt ohms; 0-10V and cp: divider (input V per ADC V)
    at_lo: float             # engineering value at 4 mA or 0 V ...
    at_hi: float             # ... at 20 mA or 10 V
    gain: float
    offset: float
    samples: int
    period_s: float

    @property
    def section(self) -> str:
        return f"spi.{self.adc}.{self.name}"

    @property
    def diode_source(self) -> str | None:
        """A CP channel also reports the EV's diode, on its port's cp_diode source."""
        if self.kind != "cp":
            return None
        return self.source.rsplit("/", 1)[0] + "/cp_diode"

    @property
    def adc_range(self) -> str:
        """The ADS8688 input range that covers what the channel can carry, over-range included."""
        if self.kind == "cp":
            need = 13.0 / self.ratio
            return next((r for r, v in sorted(BIPOLAR.items(), key=lambda kv: kv[1]) if v >= need), "+-10.24V")
        need = 22e-3 * self.ratio if self.kind == "4-20mA" else 11.5 / self.ratio
        return "0-5.12V" if need <= 5.12 else "0-10.24V"

    @property
    def delay_us(self) -> int:
        return CP_BURST_DELAY_US if self.kind == "cp" else 0


@dataclass(frozen=True)
class SpiConfig:
    name: str
    backend: str             # dev | sim
    bus: int
    cs: int
    speed_hz: int
    channels: tuple[SpiChannelConfig, ...]

    @property
    def path(self) -> str:
        return f"/dev/spidev{self.bus}.{self.cs}"


def check_config(cf, site) -> list[SpiConfig]:
    out = []
    for sec in cf.tables("spi"):
        name = sec.name.split(".", 1)[1]
        backend = sec.get_str("backend", "dev", choices=("dev", "sim"))
        bus = sec.get_int("bus", 0, minval=0, maxval=255)
        cs = sec.get_int("cs", 0, minval=0, maxval=255)
        speed = sec.get_int("speed_hz", 1_000_000, minval=10_000, maxval=17_000_000)
        period = sec.get_float("period_ms", 100.0, minval=1, maxval=3.6e6, unit="ms")
        channels = []
        used: dict[int, str] = {}
        for key, raw in sec.raw.items():
            if not isinstance(raw, dict):
                continue
            sec.mark_read(key)
            csec = cf.section(f"{sec.name}.{key}", raw)
            ch = _channel(csec, name, key, period)
            if ch.channel in used:
                csec.problem("channel", f"channel {ch.channel} is also [{sec.name}.{used[ch.channel]}]'s; one table "
                                        "per input", "ERR_CONFIG_DEVICE")
            used.setdefault(ch.channel, key)
            channels.append(ch)
        if not channels:
            sec.problem(None, "an ADC without channels: add a table [%s.NAME] with channel, kind and source" % sec.name)
        out.append(SpiConfig(name, backend, bus, cs, speed, tuple(channels)))
    return out


def _channel(sec, adc: str, name: str, period_ms: float) -> SpiChannelConfig:
    kind = sec.get_str("kind", choices=KINDS)
    if kind == "4-20mA":
        ratio = sec.get_float("shunt_ohms", 250.0, minval=10, maxval=500, unit="ohm")
        # the widest ADS8688 range must still show 22 mA (over-range) across the shunt
        if ratio * 22e-3 > 10.24:
            sec.problem("shunt_ohms", f"{ratio:g} ohm: 22 mA would read {ratio * 22e-3:.2f} V, beyond the ADC's "
                                      "10.24 V; expected at most 465 ohm")
    else:
        ratio = sec.get_float("divider", 2.0 if kind == "cp" else 1.0, minval=1, maxval=100)
    if kind == "cp":
        lo, hi = 0.0, 1.0
    else:
        what = "[value at 4 mA, value at 20 mA]" if kind == "4-20mA" else "[value at 0 V, value at 10 V]"
        lo, hi = sec.get_pair("range", (0.0, 0.0), unit="engineering units")
        if not sec.has("range"):
            sec.problem("range", f"required option is missing: expected {what}")
        elif lo == hi:
            sec.problem("range", f"expected {what} with two different values, found [{lo:g}, {hi:g}]")
    samples = sec.get_int("samples", 40 if kind == "cp" else 4, minval=1, maxval=64)
    if kind == "cp" and samples < 20:
        sec.problem("samples", f"{samples}: a CP read must span a PWM period to see both levels; expected >= 20")
    return SpiChannelConfig(
        adc=adc, name=name, channel=sec.get_int("channel", minval=0, maxval=7), kind=kind, source=sec.get_str("source"),
        ratio=ratio, at_lo=lo, at_hi=hi, gain=sec.get_float("gain", 1.0, minval=0.5, maxval=2.0),
        offset=sec.get_float("offset", 0.0, minval=-2.0, maxval=2.0, unit="mA or V"), samples=samples,
        period_s=sec.get_float("period_ms", 20.0 if kind == "cp" else period_ms, minval=1, maxval=3.6e6,
                               unit="ms") / 1e3)


def feeds(site) -> list:
    from . import Feed
    out = []
    for adc in site.sections.get("spi") or ():
        for ch in adc.channels:
            out.append(Feed(ch.source, ch.section, "source", FEEDS.get(ch.kind, ()), f"a {ch.kind} input"))
    return out


def channels(site) -> list[SpiChannelConfig]:
    return [ch for adc in site.sections.get("spi") or () for ch in adc.channels]


def open_adc(cfg: SpiConfig):
    """spidev: open, mode 1, speed, 8-bit words, then each channel's input range."""
    import spidev
    dev = spidev.SpiDev()
    try:
        dev.open(cfg.bus, cfg.cs)
    except FileNotFoundError as e:
        raise DeviceError(f"[spi.{cfg.name}] {cfg.path} does not exist. Remedy: enable the SPI controller and a "
                          f"spidev node in the board's device tree (or `modprobe spidev`), check bus and cs") from e
    except PermissionError as e:
        raise DeviceError(f"[spi.{cfg.name}] no permission on {cfg.path}. Remedy: add the service user to group "
                          f"spi (hw/udev/90-v2g-rt.rules)") from e
    try:
        dev.mode = SPI_MODE
        dev.max_speed_hz = cfg.speed_hz
        dev.bits_per_word = 8
        for ch in cfg.channels:
            code = _core.SPI_RANGES[ch.adc_range]
            word = ((ADS_RANGE_REG + ch.channel) << 9) | ADS_WRITE | code
            dev.xfer2([word >> 8, word & 0xFF, 0, 0])
    except OSError as e:
        dev.close()
        raise DeviceError(f"[spi.{cfg.name}] cannot configure {cfg.path}: {e.strerror or e}. Remedy: check the "
                          f"ADC's supply and chip select") from e
    return dev


class SpiDevice:
    def __init__(self, handle, cfg: SpiConfig):
        self.handle, self.cfg = handle, cfg

    def close(self) -> None:
        self.handle.close()


def _unplugged(adc: str, tx: bytes) -> bytes:
    raise OSError(errno.ENODEV, "no chip plays this sim ADC")


class ServedChannel:
    """One sim ADC channel, read on the Python side as the I/O thread reads a real one: the same
    frames out, the answer converted by the native code; a failed transfer, a wire break, an
    over-range or a CP between states is counted and publishes nothing."""

    def __init__(self, cfg: SpiChannelConfig, write, write_diode):
        self.cfg, self.write, self.write_diode = cfg, write, write_diode
        self.tx = _core.spi_frames(cfg.channel, cfg.samples)
        self.args = (_core.SPI_KINDS[cfg.kind], _core.SPI_RANGES[cfg.adc_range], cfg.channel, cfg.samples,
                     cfg.ratio, cfg.at_lo, cfg.at_hi, cfg.gain, cfg.offset)
        self.period_ns = round(cfg.period_s * 1e9)
        self.next_ns: int | None = None
        self.reads = self.errors = self.wire_break = self.over_range = self.between_states = 0
        self.gate_rejected = self.last_errno = 0
        self.reading = float("nan")

    def read(self, transfer, t_ns: int) -> None:
        try:
            rx = transfer(self.cfg.adc, self.tx)
            if len(rx) != len(self.tx):
                raise OSError(errno.EIO, f"{len(rx)} bytes for {len(self.tx)}")
        except OSError as e:
            self.errors += 1
            self.last_errno = e.errno or errno.EIO
            return
        self.reads += 1
        code, value, low, pwm, self.reading = _core.spi_value(*self.args, rx)
        if code:
            name = ("wire_break", "over_range", "between_states")[code - 1]
            setattr(self, name, getattr(self, name) + 1)
        elif self.write(value, t_ns) != 0:
            self.gate_rejected += 1
        elif pwm and self.write_diode:
            self.write_diode(1.0 if _core.cp_diode(low) else 0.0, t_ns)

    def stats(self) -> dict:
        return {"reads": self.reads, "errors": self.errors, "wire_break": self.wire_break,
                "over_range": self.over_range, "between_states": self.between_states,
                "gate_rejected": self.gate_rejected, "last_errno": self.last_errno, "reading": self.reading,
                "period_s": self.period_ns / 1e9, "channel": self.cfg.channel, "mode": "python",
                "name": self.cfg.section}


class ServedAdcs(Served):
    """The sim backend: the channels of every sim ADC, served on the Python side. The far side
    plugs in with plug(transfer): transfer(adc, tx) answers the frames tx as the chip [spi.adc]
    would, or raises OSError (a stuck transfer)."""

    def __init__(self):
        super().__init__(_unplugged)


def attach(ctrl, site):
    """Open each ADC and hand its channels to the core; returns the open devices, the sim
    channels' reader (None without them; its far side plugs in) and the sim channels' configs."""
    devices, served, sim = [], None, []
    for adc in site.sections["spi"]:
        for ch in adc.channels:
            for src in (ch.source, ch.diode_source):
                if src is not None and src not in ctrl.sources:
                    raise DeviceError(f"[{ch.section}] source {src!r} is not a source of this site",
                                      "ERR_CONFIG_VALUE")
        if adc.backend == "sim":
            if served is None:
                served = ServedAdcs()
                ctrl.add_served_sensors(SECTION, served)
            for ch in adc.channels:
                diode = ctrl.device_writer(ch.diode_source, SECTION) if ch.diode_source else None
                served.sensors.append(ServedChannel(ch, ctrl.device_writer(ch.source, SECTION), diode))
                sim.append(ch)
            continue
        dev = open_adc(adc)
        devices.append(SpiDevice(dev, adc))
        fd = dev.fileno()
        for ch in adc.channels:
            ctrl.add_spi_channel(fd, ch, adc.speed_hz)
    return devices, served, sim


def cp_channel(site, port_id: str) -> SpiChannelConfig | None:
    """The channel that samples a port's control pilot, if any."""
    src = port_source(port_id, "cp_v")
    return next((ch for ch in channels(site) if ch.source == src), None)



# calibration: each 4-20 mA / 0-10 V channel against a loop calibrator or a voltage reference,
# in the unit its correction (gain, offset) applies to; the answers' range and the tolerance
REFERENCES = {"4-20mA": ("mA", (4.0, 20.0), (0.0, 24.0), (0.2, 0.02)),
              "0-10V": ("V", (0.0, 10.0), (-0.5, 11.0), (0.1, 0.02))}


def calibration_fingerprint(cfg: SpiChannelConfig) -> str:
    """What the channel is, as configured: calibration's gain and offset apply to this only."""
    return f"channel={cfg.channel} kind={cfg.kind} ratio={cfg.ratio:g} range={cfg.at_lo:g}..{cfg.at_hi:g}"


def calibration_channels(adcs) -> dict:
    """The channels calibration corrects, by "ADC.CHANNEL" (their section without "spi.")."""
    return {f"{ch.adc}.{ch.name}": ch for adc in adcs for ch in adc.channels}


def calibration_replace(adcs, corrected: dict) -> tuple:
    return tuple(replace(adc, channels=tuple(corrected.get(f"{ch.adc}.{ch.name}", ch) for ch in adc.channels))
                 for adc in adcs)


def signal_of(ch: SpiChannelConfig, value: float) -> float:
    """The mA or V on a channel's input that carries an engineering value."""
    x = (value - ch.at_lo) / (ch.at_hi - ch.at_lo)
    return 4.0 + 16.0 * x if ch.kind == "4-20mA" else 10.0 * x


def calibration_steps(site, bench) -> list:
    """Per 4-20 mA or 0-10 V channel: zero and span against a reference (a CP channel is checked
    by the pilot's own states, not here)."""
    from ..calibrate import analog_zero_span

    steps = []
    for adc in site.sections["spi"]:
        peer = bench.devices.spi_peer if adc.backend == "sim" else None
        for ch in adc.channels:
            if ch.kind not in REFERENCES:
                continue
            unit, points, valid, tolerance = REFERENCES[ch.kind]
            hold = (lambda v, src=ch.source, peer=peer: peer.hold(src, v)) if peer is not None else None
            steps.append(analog_zero_span(f"{ch.section}.span", f"SPI {adc.name} channel {ch.channel} ({ch.source})",
                                          ch.source, unit, points, valid, ch.period_s, tolerance, hold=hold,
                                          section=ch.section, to_unit=lambda v, ch=ch: signal_of(ch, v)))
    return steps
