"""The far side of a Modbus TCP meter: a pymodbus server on loopback, in its own thread, playing
a SunSpec meter (common model, then model 203 or 213, then the end marker, at PDU 40000) or the
seed's simple meter (active power at 40001, reactive at 40002). The controller reaches it only
through TCP, as it would a real meter. Tests and benchmarks set what it measures (power_w,
frequency_hz) and how it misbehaves: a delay, an exception code, silence (the connection is
accepted, no request is ever answered), answers from another unit id, answers one register short,
or raw register words (overrides) such as a not-implemented value or a scale factor out of range.
"""
from __future__ import annotations

import asyncio
import struct
import threading
import time

SUNSPEC_BASE = 40000
COMMON_LENGTH = 66
MODEL_LENGTH = {203: 105, 213: 124}


class MeterPeer:
    def __init__(self, layout: str = "sunspec", *, model: int = 203, power_w: float = 0.0, frequency_hz: float = 50.0,
                 reactive_var: float = 0.0, power_sf: int = 0, delay_s: float = 0.0, exception: int | None = None,
                 silent: bool = False, answer_unit: int | None = None, short_answer: bool = False):
        if layout not in ("sunspec", "simple"):
            raise ValueError(f"layout {layout!r}: sunspec or simple")
        self.layout, self.model = layout, model
        self.power_w, self.frequency_hz, self.reactive_var = power_w, frequency_hz, reactive_var
        self.power_sf = power_sf
        self.delay_s, self.exception, self.silent = delay_s, exception, silent
        self.answer_unit, self.short_answer = answer_unit, short_answer
        self.overrides: dict[int, int] = {}           # PDU address -> raw word, applied last
        self.requests = 0
        self.changed_ns: int | None = None            # monotonic time of the last set_power()
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ---------------------------------------------------------------- what the meter holds

    @property
    def start_address(self) -> int:
        return SUNSPEC_BASE if self.layout == "sunspec" else 0

    @property
    def model_start(self) -> int:
        """PDU address of the meter model's first data register."""
        return SUNSPEC_BASE + 2 + 2 + COMMON_LENGTH + 2

    def set_power(self, power_w: float) -> None:
        self.power_w = power_w
        self.changed_ns = time.monotonic_ns()

    def words(self) -> list[int]:
        """Every register of the meter, from start_address."""
        if self.layout == "simple":
            return [_i16(round(self.power_w / 10)), _i16(round(self.reactive_var / 10))]
        common = [1, COMMON_LENGTH] + [0] * COMMON_LENGTH
        common[2:4] = [0x7632, 0x6700]                  # Mn "v2g"
        length = MODEL_LENGTH[self.model]
        data = [0] * length
        if self.model == 203:
            data[16] = _i16(round(self.power_w / 10 ** self.power_sf))
            data[20] = _i16(self.power_sf)
            data[14], data[15] = _i16(round(self.frequency_hz * 100)), _i16(-2)
            data[26], data[30] = _i16(round(self.reactive_var)), 0
            for k in (0, 1, 2, 3, 5):                   # currents and voltage: zero, implemented
                data[k] = 0
        else:
            for offset, value in ((26, self.power_w), (24, self.frequency_hz), (42, self.reactive_var)):
                data[offset:offset + 2] = struct.unpack(">2H", struct.pack(">f", value))
        out = [0x5375, 0x6E53] + common + [self.model, length] + data + [0xFFFF, 0]
        for address, word in self.overrides.items():
            out[address - SUNSPEC_BASE] = word
        return out

    # ---------------------------------------------------------------- the server

    def start(self) -> int:
        """Serve on 127.0.0.1 at an ephemeral port; returns the port."""
        self._thread = threading.Thread(target=self._run, name="modbus-meter-peer", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0) or self._error:
            raise RuntimeError(f"meter peer did not start: {self._error}")
        return self.port

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(10.0)

    def __enter__(self) -> MeterPeer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:      # reported by start()
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        import logging

        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        n = len(self.words())
        device = SimDevice(0, simdata=[SimData(self.start_address, count=n, values=0, datatype=DataType.REGISTERS)],
                           action=self._action)
        server = ModbusTcpServer(device, address=("127.0.0.1", 0), trace_packet=self._trace)
        await server.serve_forever(background=True)
        self.port = server.transport.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        await server.shutdown()

    async def _action(self, func_code, start_address, address, count, registers, values):
        from pymodbus.constants import ExcCodes

        self.requests += 1
        if self.silent:
            await asyncio.Event().wait()                 # never answers
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.exception is not None:
            return ExcCodes(self.exception)
        registers[:len(self.words())] = self.words()
        return None

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending or len(data) < 9:
            return data
        if self.answer_unit is not None:
            data = data[:6] + bytes([self.answer_unit]) + data[7:]
        if self.short_answer and data[7] in (3, 4) and data[8] >= 2:   # one register fewer, consistently
            length = struct.unpack(">H", data[4:6])[0] - 2
            data = data[:4] + struct.pack(">H", length) + data[6:8] + bytes([data[8] - 2]) + data[9:-2]
        return data


def _i16(v: int) -> int:
    return v & 0xFFFF
