"""The far side of the I2C sim backend: register files of TMP117 and INA228 chips.

The controller reads a sim sensor on the Python side (v2g_rt.devices.i2c.ServedBus);
this plays the chips it reads: transfer(address, register, n) answers as a chip
answers a register read, n bytes MSB first, or a NACK (OSError ENXIO) from an
address where no chip answers.
"""
from __future__ import annotations

import errno
import threading

from ...devices.i2c import IDENTITY, INA228_SHUNT_CAL, SENSORS, lsb


class SimI2cBus:
    def __init__(self, configs=()):
        self.regs: dict[int, dict[int, bytes]] = {}     # address -> register -> bytes
        self.by_source: dict[str, list] = {}
        self.nack: set[int] = set()                     # addresses that do not answer (fault injection)
        self.held: dict[str, float] = {}                # sources whose chip a reference holds (a dry block)
        self.dead: set[str] = set()                     # sources whose chip's reading is stuck (fault injection)
        self.lock = threading.Lock()
        for cfg in configs:
            self.add(cfg)

    def add(self, cfg) -> None:
        regs = self.regs.setdefault(cfg.address, {})
        reg, value = IDENTITY[cfg.sensor]
        regs[reg] = value.to_bytes(2, "big")
        if cfg.sensor == "ina228":
            regs[INA228_SHUNT_CAL] = b"\0\0"
        self.by_source.setdefault(cfg.source, []).append(cfg)
        self.set_value(cfg.source, 0.0)

    def set_value(self, source: str, value: float) -> None:
        """Put a physical value (as the controller will decode it) into the registers feeding source:
        the reference's while one holds it; nothing once the channel is dead (its reading stays)."""
        if source in self.dead:
            return
        value = self.held.get(source, value)
        for cfg in self.by_source.get(source, ()):
            r = SENSORS[cfg.sensor][cfg.quantity]
            raw = round(value / lsb(cfg))
            if r.decode in (2, 3):                       # 20 bits in the top of 24
                raw <<= 4
            raw &= (1 << (8 * r.nbytes)) - 1
            with self.lock:
                self.regs[cfg.address][r.reg] = raw.to_bytes(r.nbytes, "big")

    def hold(self, source: str, value: float | None) -> None:
        """A reference (a dry-block calibrator) holds the sensor at value; None takes it away."""
        if value is None:
            self.held.pop(source, None)
        else:
            self.held[source] = value
            self.set_value(source, value)

    def transfer(self, address: int, register: int, n: int) -> bytes:
        with self.lock:
            data = None if address in self.nack else self.regs.get(address, {}).get(register)
        if data is None:
            raise OSError(errno.ENXIO, f"no answer from 0x{address:02x}")
        return data[:n].ljust(n, b"\0")

    def close(self) -> None:
        """The chips are gone: every later read is a NACK."""
        with self.lock:
            self.regs.clear()
