"""The far side of the simulated I2C bus: register files of TMP117 and INA228 chips.

The native I/O thread writes [address, register, n] and reads back [register] + n
bytes (MSB first), or [register] alone for a NACK, as a chip on a real bus would
answer an I2C_RDWR transfer.
"""
from __future__ import annotations

import threading

from ...devices.i2c import IDENTITY, INA228_SHUNT_CAL, SENSORS, current_lsb


class SimI2cBus(threading.Thread):
    def __init__(self, sock):
        super().__init__(name="v2g-sim-i2c", daemon=True)
        self.sock = sock
        self.regs: dict[int, dict[int, bytes]] = {}     # address -> register -> bytes
        self.by_source: dict[str, list] = {}
        self.nack: set[int] = set()                     # addresses that do not answer (fault injection)
        self.lock = threading.Lock()

    def add(self, cfg) -> None:
        regs = self.regs.setdefault(cfg.address, {})
        reg, value = IDENTITY[cfg.sensor]
        regs[reg] = value.to_bytes(2, "big")
        if cfg.sensor == "ina228":
            regs[INA228_SHUNT_CAL] = b"\0\0"
        self.by_source.setdefault(cfg.source, []).append(cfg)
        self.set_value(cfg.source, 0.0)

    def set_value(self, source: str, value: float) -> None:
        """Put a physical value (as the controller will decode it) into the registers feeding source."""
        for cfg in self.by_source.get(source, ()):
            r = SENSORS[cfg.sensor][cfg.quantity]
            lsb = r.scale * (current_lsb(cfg) if cfg.quantity in ("power", "current") else 1.0) * cfg.scale
            raw = round(value / lsb)
            if r.decode in (2, 3):                       # 20 bits in the top of 24
                raw <<= 4
            raw &= (1 << (8 * r.nbytes)) - 1
            with self.lock:
                self.regs[cfg.address][r.reg] = raw.to_bytes(r.nbytes, "big")

    def run(self) -> None:
        while True:
            try:
                req = self.sock.recv(16)
            except OSError:
                return
            if len(req) != 3:
                return                                   # the controller closed its end
            addr, reg, n = req
            with self.lock:
                data = None if addr in self.nack else self.regs.get(addr, {}).get(reg)
            reply = bytes([reg]) + (data[:n].ljust(n, b"\0") if data is not None else b"")
            try:
                self.sock.send(reply)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
