"""The far side of a Modbus TCP meter: a pymodbus server on loopback, in its own thread, playing
a SunSpec meter (common model, then model 203 or 213, then the end marker, at PDU 40000) or the
seed's simple meter (active power at 40001, reactive at 40002). The controller reaches it only
through TCP, as it would a real meter. Tests and benchmarks set what it measures (power_w,
frequency_hz) and how it misbehaves: a delay, an exception code, silence (the connection is
accepted, no request is ever answered), answers from another unit id, answers one register short,
or raw register words (overrides) such as a not-implemented value or a scale factor out of range.

ChargerFleet plays Modbus-driven chargers (one server per charger, on its own port, all in one
thread), each following its EVSE map (hw/modbus/evse/) as the vendor's firmware would: it runs
the written setpoint while enabled and a vehicle is plugged in, limited by what that vehicle
takes, reports power, SoC and state in the map's registers, and stops by itself when no request
came within the timeout the controller wrote (its dead-man).
"""
from __future__ import annotations

import abc
import asyncio
import struct
import threading
import time

from ... import modbus_maps as maps
from ...modbus_maps import TYPES

SUNSPEC_BASE = 40000
COMMON_LENGTH = 66
MODEL_LENGTH = {203: 105, 213: 124}


class _ServerThread(abc.ABC):
    """pymodbus servers on 127.0.0.1 (ephemeral ports) in one thread with its own event loop."""

    thread_name = "modbus-peer"

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0) or self._error:
            raise RuntimeError(f"{self.thread_name} did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(10.0)

    def __enter__(self):
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

        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        servers = []
        for device, trace in self._devices():
            server = ModbusTcpServer(device, address=("127.0.0.1", 0), trace_packet=trace)
            await server.serve_forever(background=True)
            servers.append(server)
        self._serving([srv.transport.sockets[0].getsockname()[1] for srv in servers])
        self._ready.set()
        await self._stop.wait()
        for server in servers:
            await server.shutdown()

    @abc.abstractmethod
    def _devices(self) -> list:
        """(SimDevice, trace_packet or None) per server."""

    def _serving(self, ports: list[int]) -> None:
        """The servers listen at these ports."""


class MeterPeer(_ServerThread):
    thread_name = "modbus-meter-peer"

    def __init__(self, layout: str = "sunspec", *, model: int = 203, power_w: float = 0.0, frequency_hz: float = 50.0,
                 reactive_var: float = 0.0, power_sf: int = 0, delay_s: float = 0.0, exception: int | None = None,
                 silent: bool = False, answer_unit: int | None = None, short_answer: bool = False):
        if layout not in ("sunspec", "simple"):
            raise ValueError(f"layout {layout!r}: sunspec or simple")
        self.layout, self.model = layout, model
        self.power_w, self.frequency_hz, self.reactive_var = power_w, frequency_hz, reactive_var
        self.phase_w = (power_w / 3,) * 3                 # per phase, L1..L3
        self.power_sf = power_sf
        self.delay_s, self.exception, self.silent = delay_s, exception, silent
        self.answer_unit, self.short_answer = answer_unit, short_answer
        self.overrides: dict[int, int] = {}           # PDU address -> raw word, applied last
        self.requests = 0
        self.changed_ns: int | None = None            # monotonic time of the last set_power()
        self.port = 0
        super().__init__()

    # ---------------------------------------------------------------- what the meter holds

    @property
    def start_address(self) -> int:
        return SUNSPEC_BASE if self.layout == "sunspec" else 0

    @property
    def model_start(self) -> int:
        """PDU address of the meter model's first data register."""
        return SUNSPEC_BASE + 2 + 2 + COMMON_LENGTH + 2

    def set_power(self, power_w: float, phase_w: tuple[float, float, float] | None = None) -> None:
        """What the meter measures: the total and, per phase, its share (default: balanced)."""
        self.power_w = power_w
        self.phase_w = tuple(phase_w) if phase_w is not None else (power_w / 3,) * 3
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
            for k, w in enumerate(self.phase_w):
                data[17 + k] = _i16(round(w / 10 ** self.power_sf))
            data[20] = _i16(self.power_sf)
            data[14], data[15] = _i16(round(self.frequency_hz * 100)), _i16(-2)
            data[26], data[30] = _i16(round(self.reactive_var)), 0
            for k in (0, 1, 2, 3, 5):                   # currents and voltage: zero, implemented
                data[k] = 0
        else:
            for offset, value in ((26, self.power_w), (24, self.frequency_hz), (42, self.reactive_var),
                                  *zip((28, 30, 32), self.phase_w)):
                data[offset:offset + 2] = struct.unpack(">2H", struct.pack(">f", value))
        out = [0x5375, 0x6E53] + common + [self.model, length] + data + [0xFFFF, 0]
        for address, word in self.overrides.items():
            out[address - SUNSPEC_BASE] = word
        return out

    # ---------------------------------------------------------------- the server

    def start(self) -> int:
        """Serve on 127.0.0.1 at an ephemeral port; returns the port."""
        super().start()
        return self.port

    def _devices(self) -> list:
        from pymodbus.simulator import DataType, SimData, SimDevice

        n = len(self.words())
        data = [SimData(self.start_address, count=n, values=0, datatype=DataType.REGISTERS)]
        return [(SimDevice(0, simdata=data, action=self._action), self._trace)]

    def _serving(self, ports: list[int]) -> None:
        self.port = ports[0]

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


# Quasar 1 state codes (hw/modbus/evse/wallbox-quasar.json): the codes a charger reports
QUASAR_STATES = {"unplugged": 0, "charging": 1, "paused": 4, "discharging": 11}


class Charger:
    """One charger's far side: its registers as its map lays them out, its vehicle, its dead-man."""

    def __init__(self, rmap, *, plugged: bool = True, soc: float = 0.5, capacity_wh: float = 60_000.0,
                 ev_max_charge_w: float = 7400.0, ev_max_discharge_w: float = 7400.0, states=QUASAR_STATES):
        self.map, self.control = rmap, rmap.control
        self.plugged, self.soc, self.capacity_wh = plugged, soc, capacity_wh
        self.ev_max_charge_w, self.ev_max_discharge_w = ev_max_charge_w, ev_max_discharge_w
        self.states = states
        self.exception: int | None = None             # answer every request with this exception code
        self.written: dict[int, int] = {}             # PDU address -> last word the controller wrote
        self.reads = self.writes = self.timeouts = 0
        self.power_w = 0.0
        self.last_request: float | None = None        # monotonic s
        self._at = time.monotonic()

    # what the firmware makes of the written registers
    def _word(self, reg, default: int = 0) -> list[int]:
        return [self.written.get(reg.address + i, default) for i in range(TYPES[reg.type][0])]

    def _value(self, reg) -> float:
        n, fmt, _ = TYPES[reg.type]
        words = self._word(reg)
        if reg.word_order == "little":
            words.reverse()
        return struct.unpack(fmt, struct.pack(f">{n}H", *words))[0] * reg.scale

    @property
    def set_up(self) -> bool:
        """Every setup register holds what the map says (remote control, ...)."""
        return all(self._value(reg) == value for reg, value in self.control.setup)

    @property
    def enabled(self) -> bool:
        e = self.control.enable
        return e is None or self._value(e[0]) == e[1]

    @property
    def timeout_s(self) -> float | None:
        t = self.control.timeout
        return self._value(t) if t is not None and t.address in self.written else None

    @property
    def setpoint_w(self) -> float:
        return self._value(self.control.setpoint)

    def advance(self, now: float) -> None:
        """The vehicle takes what it is given (within its limits) from the last step to now."""
        dt = now - self._at
        self._at = now
        self.soc = min(max(self.soc + self.power_w * dt / 3600.0 / self.capacity_wh, 0.0), 1.0)
        timeout = self.timeout_s
        if timeout and self.last_request is not None and now - self.last_request > timeout and self.enabled:
            self.timeouts += 1                          # the dead-man: stop by itself
            e = self.control.enable
            if e is not None:
                self.written[e[0].address] = e[2]
        on = self.plugged and self.set_up and self.enabled and (timeout is None or self.last_request is not None
                                                                and now - self.last_request <= timeout)
        want = self.setpoint_w if on else 0.0
        room_in = self.ev_max_charge_w if self.soc < 1.0 else 0.0
        room_out = self.ev_max_discharge_w if self.soc > 0.0 else 0.0
        self.power_w = min(max(want, -room_out), room_in)

    def words(self) -> dict[int, int]:
        """The registers the controller reads, as the map lays them out."""
        if not self.plugged:
            state = self.states["unplugged"]
        else:
            state = self.states["charging" if self.power_w > 0 else "discharging" if self.power_w < 0 else "paused"]
        values = {maps.POWER: self.power_w, maps.SOC: round(self.soc * 100) if self.plugged else 0, maps.STATE: state}
        out = {}
        for p in self.map.points:
            n, fmt, _ = TYPES[p.type]
            raw = round(values.get(p.name, 0) / p.scale / p.sign)
            words = list(struct.unpack(f">{n}H", struct.pack(fmt, raw)))
            if p.word_order == "little":
                words.reverse()
            out.update(zip(range(p.address, p.address + n), words))
        return out

    async def action(self, func_code, start_address, address, count, registers, values):
        from pymodbus.constants import ExcCodes

        now = time.monotonic()
        self.advance(now)
        self.last_request = now
        if self.exception is not None:
            return ExcCodes(self.exception)
        if values:                                       # a write: the firmware takes it now
            self.writes += 1
            self.written.update(zip(range(address, address + len(values)), values))
            self.advance(now)
        else:
            self.reads += 1
            for a, w in self.words().items():
                registers[a - start_address] = w
        return None


class ChargerFleet(_ServerThread):
    """Chargers on 127.0.0.1, one server (port) each; ports[i] is chargers[i]'s."""

    thread_name = "modbus-charger-peers"

    def __init__(self, chargers: list[Charger]):
        super().__init__()
        self.chargers = chargers
        self.ports: list[int] = []

    def _devices(self) -> list:
        from pymodbus.simulator import DataType, SimData, SimDevice

        out = []
        for c in self.chargers:
            top = max([p.address + p.words for p in c.map.points] +
                      [r.address + TYPES[r.type][0] for r in _written(c.control)])
            data = [SimData(0, count=top, values=0, datatype=DataType.REGISTERS)]
            out.append((SimDevice(0, simdata=data, action=c.action), None))
        return out

    def _serving(self, ports: list[int]) -> None:
        self.ports = ports

    def advance(self) -> None:
        """Bring every charger's vehicle and dead-man up to now (thread-safe: in the servers' loop)."""
        done = threading.Event()

        def step():
            now = time.monotonic()
            for c in self.chargers:
                c.advance(now)
            done.set()

        self._loop.call_soon_threadsafe(step)
        done.wait(5.0)


def _written(control) -> list:
    regs = [control.setpoint] + [r for r, _ in control.setup]
    if control.timeout is not None:
        regs.append(control.timeout)
    if control.enable is not None:
        regs.append(control.enable[0])
    return regs


def main(argv=None) -> int:
    """Serve simulated chargers for a controller in another process: prints their ports as one
    JSON line, serves until stdin closes, then prints what they saw as one JSON line.

        python -m v2g_rt.sim.peers.modbus [--chargers 50] [--map wallbox-quasar]
    """
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    p.add_argument("--chargers", type=int, default=50)
    p.add_argument("--map", default="wallbox-quasar", help="an EVSE map: packaged name or path")
    args = p.parse_args(argv)
    rmap = maps.load(maps.resolve(args.map))
    with ChargerFleet([Charger(rmap) for _ in range(args.chargers)]) as fleet:
        print(json.dumps({"ports": fleet.ports}), flush=True)
        sys.stdin.read()
        fleet.advance()
        seen = {k: sum(getattr(c, k) for c in fleet.chargers) for k in ("reads", "writes", "timeouts")}
        print(json.dumps({**seen, "power_w": sum(c.power_w for c in fleet.chargers)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
