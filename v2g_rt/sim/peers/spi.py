"""The far side of the SPI sim backend: ADS8688 ADCs and the signals on their inputs.

The controller reads a sim ADC on the Python side (v2g_rt.devices.spi.ServedAdcs), sending
the frames the native I/O thread sends; this answers them as the chip does: each frame's
command selects the channel converted next, and the result of the previous selection comes
back in bytes 2-3 of the frame, MSB first. What the inputs carry is set per source: an
engineering value (through the channel's own range, shunt and divider), a loop current, a
voltage, a control pilot's levels and duty, a vehicle or test box plugged into a pilot (its
levels follow the EVSE's PWM), a broken wire; an ADC can also stop answering (a stuck transfer:
ETIMEDOUT).
"""
from __future__ import annotations

import errno
import threading

from ...devices.spi import BIPOLAR, UNIPOLAR, signal_of

CP_LEVELS = {"A": 12.0, "B": 9.0, "C": 6.0, "D": 3.0, "E": 0.0, "F": -12.0}   # IEC 61851-1, at the EVSE


class SimAdcs:
    def __init__(self, configs=()):
        self.channels: dict[tuple[str, int], object] = {}      # (adc, channel) -> SpiChannelConfig
        self.by_source: dict[str, object] = {}
        self.levels: dict[tuple[str, int], tuple[float, float, float]] = {}   # ADC volts: high, low, duty
        self.selected: dict[str, int] = {}
        self.stuck: set[str] = set()                             # ADCs whose transfers time out
        self.held: set[str] = set()          # sources a reference (loop calibrator, voltage source) drives
        self.dead: set[str] = set()          # sources whose wire is cut (fault injection): nothing moves them
        self.plugged: dict[str, tuple] = {}  # CP source -> (state, the EVSE's duty %, the levels found)
        self.lock = threading.Lock()
        for cfg in configs:
            self.channels[cfg.adc, cfg.channel] = cfg
            self.by_source[cfg.source] = cfg
            if cfg.kind == "cp":
                self.set_cp(cfg.source, 12.0)                   # state A: no vehicle
            else:
                self.set_value(cfg.source, cfg.at_lo)

    def _set(self, source: str, high_v: float, low_v: float, duty: float) -> None:
        cfg = self.by_source[source]
        with self.lock:
            self.levels[cfg.adc, cfg.channel] = (high_v, low_v, duty)

    def set_current_ma(self, source: str, ma: float) -> None:
        """A 4-20 mA input's loop current (0: the wire is broken)."""
        v = ma * 1e-3 * self.by_source[source].ratio
        self._set(source, v, v, 1.0)

    def set_volts(self, source: str, volts: float) -> None:
        """A voltage input's terminal voltage (before the divider)."""
        v = volts / self.by_source[source].ratio
        self._set(source, v, v, 1.0)

    def set_value(self, source: str, value: float) -> None:
        """The signal that carries an engineering value through the channel's range; nothing
        while a reference holds the input or its wire is cut."""
        if source in self.held or source in self.dead:
            return
        cfg = self.by_source[source]
        if cfg.kind == "4-20mA":
            self.set_current_ma(source, signal_of(cfg, value))
        else:
            self.set_volts(source, signal_of(cfg, value))

    def set_cp(self, source: str, high_v: float, low_v: float | None = None, duty: float = 1.0) -> None:
        """A control pilot: high level, low level and the fraction of a period spent high (a
        steady level: duty 1). The low level is -12 V through a vehicle's diode."""
        r = self.by_source[source].ratio
        self._set(source, high_v / r, (high_v if low_v is None else low_v) / r, duty)

    def plug(self, source: str, state: str | None, duty=None) -> None:
        """A vehicle or test box on a control pilot in IEC 61851-1 state (A-F); None unplugs it and
        the levels it found come back. Its high level is the state's; in B, C or D, while duty()
        (the duty in % the EVSE's PWM runs, None when off) is below 100, the rest of each period
        is at -12 V through its diode."""
        cfg = self.by_source[source]
        with self.lock:
            if state is None:
                if source in self.plugged:
                    self.levels[cfg.adc, cfg.channel] = self.plugged.pop(source)[2]
                return
            found = self.plugged[source][2] if source in self.plugged else self.levels[cfg.adc, cfg.channel]
            self.plugged[source] = (state, duty, found)

    def _pilot_levels(self, cfg) -> tuple[float, float, float]:
        state, duty, _ = self.plugged[cfg.source]
        high = CP_LEVELS[state] / cfg.ratio
        pct = duty() if duty is not None and state in "BCD" else None
        if pct is None or not 0.0 < pct < 100.0:
            return high, high, 1.0
        return high, -12.0 / cfg.ratio, pct / 100.0

    def break_wire(self, source: str) -> None:
        self.set_current_ma(source, 0.0)

    def cut(self, source: str) -> None:
        """The input's wire cut for good: 0 mA or 0 V whatever drives it."""
        self.dead.add(source)
        self._set(source, 0.0, 0.0, 1.0)

    def hold(self, source: str, reference: float | None) -> None:
        """A reference on the input, in the channel's mA or V; None takes it away (the plant's
        signal returns at its next step)."""
        if reference is None:
            self.held.discard(source)
            return
        if source in self.dead:
            return
        self.held.add(source)
        if self.by_source[source].kind == "4-20mA":
            self.set_current_ma(source, reference)
        else:
            self.set_volts(source, reference)

    def code(self, cfg, volts: float) -> int:
        rng = cfg.adc_range
        if rng in BIPOLAR:
            raw = volts / (2 * BIPOLAR[rng]) * 65536 + 32768
        else:
            raw = volts / UNIPOLAR[rng] * 65536
        return min(max(round(raw), 0), 65535)

    def transfer(self, adc: str, tx: bytes) -> bytes:
        """The chip's answer to frames tx (4 bytes each)."""
        if adc in self.stuck:
            raise OSError(errno.ETIMEDOUT, f"SPI transfer to {adc} timed out")
        n = len(tx) // 4
        rx = bytearray(len(tx))
        with self.lock:
            for src in self.plugged:
                cfg = self.by_source[src]
                if cfg.adc == adc:
                    self.levels[adc, cfg.channel] = self._pilot_levels(cfg)
            for k in range(n):
                prev = self.selected.get(adc)
                cfg = self.channels.get((adc, prev)) if prev is not None else None
                if cfg is not None:
                    high, low, duty = self.levels[adc, prev]
                    v = high if (k - 0.5) / max(n - 1, 1) < duty else low
                    rx[4 * k + 2:4 * k + 4] = self.code(cfg, v).to_bytes(2, "big")
                cmd = (tx[4 * k] << 8) | tx[4 * k + 1]
                if cmd & 0xC000 == 0xC000:
                    self.selected[adc] = (cmd >> 10) & 0x7
        return bytes(rx)

    def close(self) -> None:
        with self.lock:
            self.stuck = set(a for a, _ in self.channels)
