"""Modbus TCP: one asyncio service for every [modbus.NAME] device of a site (pymodbus client).

Each device has its own connection and its own task: its requests go one at a time (pymodbus
allows one outstanding request per client), devices run side by side, so a slow or dead device
never delays another. A poll reads the map's high-priority blocks every period and one
low-priority block in turn (OpenEMS's habit). A timeout, a lost connection or a malformed answer
closes the connection and the device is retried after a backoff (0.5 s doubling to 30 s);
exception responses are counted and the device is polled on. Every failure is named (ERR_MODBUS_*),
counted per device and shown in `status`; nothing but a decoded, implemented value reaches the
gate, stamped with the time its request was sent. A meter that stops answering simply stops
feeding its source, which goes stale after its max age, and the interlock assumes the worst case.

Role "meter" only in this version: the meter's active power feeds node/<node>/power_w, and its
frequency feeds grid/frequency_hz when the node is the site's grid connection.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass

from .. import modbus_maps as maps
from ..site import node_source
from . import BACKOFF_FIRST_S, BACKOFF_MAX_S, AsyncService

SECTION = "modbus"            # [modbus.NAME]: one table per device
ROLES = ("meter", "evse")
FREQUENCY_SOURCE = "grid/frequency_hz"
LOG_EVERY_S = 60.0            # a repeating failure is logged once, then once a minute with its count
EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
              5: "acknowledge", 6: "server device busy", 8: "memory parity error",
              0x0A: "gateway path unavailable", 0x0B: "gateway target device failed to respond"}
RETRY_LATER = (5, 6)          # acknowledge, busy: the device is there, ask again at the next poll

log = logging.getLogger("v2g_rt")


@dataclass(frozen=True)
class ModbusConfig:
    name: str
    role: str
    host: str
    port: int
    unit: int
    map: str                      # as written in the config
    where: object                 # maps.SUNSPEC, a path, or "<packaged NAME>"
    period_s: float
    node: str
    register_map: maps.RegisterMap | None = None   # None for sunspec: found at connect

    @property
    def timeout_s(self) -> float:
        """How long one request (or the connect) may take: 3 periods, at least 1 s, at most 10 s."""
        return min(max(1.0, 3 * self.period_s), 10.0)


def check_config(cf, site) -> list[ModbusConfig]:
    out = []
    for sec in cf.tables(SECTION):
        name = sec.name.split(".", 1)[1]
        role = sec.get_str("role", choices=ROLES)
        if role == "evse":
            sec.problem("role", "role = \"evse\" (an EVSE driven by its vendor's register map) is not in this version; "
                                "this version reads grid meters (role = \"meter\")", "ERR_LINK_UNAVAILABLE")
        host = sec.get_str("host")
        port = sec.get_int("port", 502, minval=1, maxval=65535)
        unit = sec.get_int("unit", 1, minval=0, maxval=255)
        map_option = sec.get_str("map")
        period_s = sec.get_float("period_ms", 100.0, minval=1, maxval=60_000, unit="ms") / 1e3
        node = sec.get_str("node")
        if node and all(n.id != node for n in site.nodes):
            sec.problem("node", f"{node!r} is not a node of this site; nodes: {', '.join(n.id for n in site.nodes)}")
        where, register_map = None, None
        if map_option:
            try:
                where = maps.resolve(map_option, cf.path)
                register_map = None if where == maps.SUNSPEC else maps.load(where)
                if register_map is not None and register_map.point(maps.POWER) is None and role == "meter":
                    sec.problem("map", f"{where}: a meter's map needs a value named {maps.POWER!r} (active power, W)")
            except maps.MapError as e:
                sec.problem("map", str(e), "ERR_CONFIG_MODBUS_MAP")
        out.append(ModbusConfig(name, role, host, port, unit, map_option, where, period_s, node, register_map))
    return out


def has_frequency(cfg: ModbusConfig) -> bool:
    return cfg.where == maps.SUNSPEC or (cfg.register_map is not None and cfg.register_map.point(maps.FREQUENCY) is not None)


def feeds_frequency(cfg: ModbusConfig, site) -> bool:
    """The site's one frequency source is fed by the meter at its grid connection, if it measures it."""
    node = next((n for n in site.nodes if n.id == cfg.node), None)
    return node is not None and node.parent is None and node.kind == "grid" and has_frequency(cfg)


def feeds(site) -> list:
    from ..devices import Feed
    out = []
    for cfg in site.sections.get(SECTION) or ():
        if cfg.role != "meter" or not cfg.node:
            continue
        out.append(Feed(node_source(cfg.node, "power_w"), f"{SECTION}.{cfg.name}", "node", ("node_power_w",),
                        f"a meter's active power (a metered node has meter_max_age_s)"))
        if feeds_frequency(cfg, site):
            out.append(Feed(FREQUENCY_SOURCE, f"{SECTION}.{cfg.name}", "map", ("frequency_hz",), "a meter's frequency"))
    return out


class Failure(Exception):
    """A request that gave no data: code is its ERR_MODBUS_* name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Link:
    """One device's connection: requests one at a time, each answer checked (its unit id, its
    register count) before a word of it is used."""

    def __init__(self, cfg: ModbusConfig):
        from pymodbus.client import AsyncModbusTcpClient

        self.cfg = cfg
        self.foreign_unit: int | None = None
        # retries=0 and reconnect_delay=0: timeouts and reconnects are ours, counted and backed off here
        self.client = AsyncModbusTcpClient(cfg.host, port=cfg.port, timeout=cfg.timeout_s + 1.0, retries=0,
                                           reconnect_delay=0, name=f"modbus.{cfg.name}", trace_packet=self._trace)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        # pymodbus skips an answer from another unit id and waits on; note it to name the timeout
        if not sending and len(data) >= 7 and data[6] != self.cfg.unit:
            self.foreign_unit = data[6]
        return data

    async def connect(self) -> None:
        try:
            ok = await asyncio.wait_for(self.client.connect(), self.cfg.timeout_s)
        except asyncio.TimeoutError:
            ok = False
        if not ok:
            raise Failure("ERR_MODBUS_CONNECT", f"cannot connect to {self.cfg.host}:{self.cfg.port}")

    def close(self) -> None:
        self.client.close()

    async def read(self, table: str, address: int, count: int) -> list[int]:
        from pymodbus.exceptions import ModbusException

        fn = self.client.read_holding_registers if table == "holding" else self.client.read_input_registers
        self.foreign_unit = None
        try:
            rr = await asyncio.wait_for(fn(address, count=count, device_id=self.cfg.unit), self.cfg.timeout_s)
        except asyncio.TimeoutError:
            if self.foreign_unit is not None:
                raise Failure("ERR_MODBUS_BAD_RESPONSE", f"answer from unit {self.foreign_unit}, expected unit "
                                                         f"{self.cfg.unit}") from None
            raise Failure("ERR_MODBUS_TIMEOUT", f"no answer within {self.cfg.timeout_s:g} s "
                                                f"({table} {address}+{count})") from None
        except ModbusException as e:
            if not self.client.connected:
                raise Failure("ERR_MODBUS_CONNECT", f"connection lost: {e}") from None
            raise Failure("ERR_MODBUS_BAD_RESPONSE", str(e)) from None
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0))
            if code in EXCEPTIONS:
                raise Failure(f"ERR_MODBUS_EXCEPTION_{code:02X}", f"exception {code:02X} ({EXCEPTIONS[code]}) "
                                                                 f"reading {table} {address}+{count}")
            raise Failure("ERR_MODBUS_BAD_RESPONSE", f"exception code {code} is not a Modbus exception")
        regs = list(getattr(rr, "registers", []))
        if len(regs) != count:
            raise Failure("ERR_MODBUS_BAD_RESPONSE", f"{len(regs)} registers in the answer, asked for {count}")
        return regs


async def discover(link: Link) -> maps.RegisterMap:
    """SunSpec: 'SunS' at 0, 40000 or 50000, then the model chain to the end marker; the first meter
    model (201-204, 211-214) is the map."""
    layout = maps.sunspec_layout()
    for base in maps.SUNSPEC_BASES:
        try:
            marker = await link.read("holding", base, 2)
        except Failure as f:
            if f.code.startswith("ERR_MODBUS_EXCEPTION_"):
                continue
            raise
        if tuple(marker) != maps.SUNSPEC_MARKER:
            continue
        address, seen = base + 2, []
        while address + 2 <= 0x10000 and len(seen) < 256:
            model_id, length = await link.read("holding", address, 2)
            if model_id == maps.SUNSPEC_END:
                break
            seen.append(model_id)
            if model_id in layout:
                try:
                    return maps.sunspec_map(model_id, address + 2, length)
                except maps.MapError as e:
                    raise Failure("ERR_MODBUS_DISCOVERY", str(e)) from None
            address += 2 + length
        raise Failure("ERR_MODBUS_DISCOVERY", f"SunSpec at {base}: models {seen or 'none'} up to the end marker, "
                                              f"no meter model (201-204, 211-214)")
    raise Failure("ERR_MODBUS_DISCOVERY", f"no SunSpec marker 'SunS' at {', '.join(map(str, maps.SUNSPEC_BASES))}")


async def read_block(link: Link, block: maps.Block) -> list[tuple[maps.Point, float | None, str | None]]:
    regs = await link.read(block.table, block.address, block.count)
    words = {block.address + i: w for i, w in enumerate(regs)}
    return [(p, *maps.decode(p, words)) for p in block.points]


async def read_once(cfg: ModbusConfig) -> tuple[maps.RegisterMap | None, list]:
    """Every value of the device's map, read once: (map, [(point, value, ERR code), ...]); a
    Failure before the map is known (connect, SunSpec discovery) is raised."""
    link = Link(cfg)
    try:
        await link.connect()
        rmap = cfg.register_map or await discover(link)
        out = []
        for block in rmap.blocks:
            try:
                out += await read_block(link, block)
            except Failure as f:
                out += [(p, None, f.code) for p in block.points]
        return rmap, out
    finally:
        link.close()


class Device:
    """One device's task and its counters."""

    def __init__(self, cfg: ModbusConfig, ctrl, sources: dict[str, str]):
        self.cfg, self.ctrl = cfg, ctrl
        self.sources = sources                # map value name -> source it feeds
        self.errors: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.polls = self.late = self.accepted = self.reconnects = 0
        self.connected = False
        self.map: maps.RegisterMap | None = cfg.register_map
        self.backoff_s = 0.0
        self.last_error = ""
        self.last: dict[str, float] = {}
        self._logged: dict[str, tuple[float, int]] = {}
        self._turn = 0
        # Python 3.11's wait_for can swallow a cancellation that races a completed request
        # (gh-86296): the loops also check this, so a stop never waits on a lost cancel
        self.running = True

    def stats(self) -> dict:
        out = {"connected": self.connected, "polls": self.polls, "late_polls": self.late, "values": self.accepted,
               "reconnects": self.reconnects, "errors": dict(self.errors), "map": self.map.source if self.map else "-"}
        if self.rejected:
            out["rejected"] = dict(self.rejected)
        if self.backoff_s:
            out["backoff_s"] = self.backoff_s
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    def _failed(self, code: str, message: str) -> None:
        self.errors[code] += 1
        self.last_error = f"{code}: {message}"
        now = time.monotonic()
        at, count = self._logged.get(code, (-LOG_EVERY_S, 0))
        if now - at >= LOG_EVERY_S:
            log.warning("%s: [modbus.%s] %s:%d unit %d: %s%s", code, self.cfg.name, self.cfg.host, self.cfg.port,
                        self.cfg.unit, message, f" ({count} more since the last report)" if count else "")
            self._logged[code] = (now, 0)
        else:
            self._logged[code] = (at, count + 1)

    async def run(self) -> None:
        """Connect, poll until a failure, back off, again; until cancelled."""
        delay = BACKOFF_FIRST_S
        self.running = True
        while self.running:
            link = Link(self.cfg)
            try:
                await link.connect()
                self.connected, self.backoff_s = True, 0.0
                if self.map is None:
                    self.map = await discover(link)
                    log.info("[modbus.%s] %s", self.cfg.name, self.map.source)
                delay = BACKOFF_FIRST_S
                await self._poll(link)
            except Failure as f:
                self._failed(f.code, str(f))
            finally:
                self.connected = False
                link.close()
            self.backoff_s = delay
            await asyncio.sleep(delay)
            self.backoff_s = 0.0
            delay = min(delay * 2, BACKOFF_MAX_S)
            self.reconnects += 1

    async def _poll(self, link: Link) -> None:
        loop = asyncio.get_running_loop()
        period = self.cfg.period_s
        due = loop.time()
        while self.running:
            blocks = list(self.map.high)
            if self.map.low:
                blocks.append(self.map.low[self._turn % len(self.map.low)])
                self._turn += 1
            for block in blocks:
                t_ns = self.ctrl.now_ns()         # the value is at least as fresh as the request
                try:
                    values = await read_block(link, block)
                except Failure as f:
                    if not f.code.startswith("ERR_MODBUS_EXCEPTION_"):
                        raise                      # no answer or a bad one: reconnect after a backoff
                    self._failed(f.code, str(f))   # the device answered: poll on (05/06: ask again next poll)
                    continue
                self._publish(values, t_ns)
            self.polls += 1
            due += period
            now = loop.time()
            if now > due:                          # skip whole periods, as the loop does
                self.late += 1
                due += period * ((now - due) // period + 1)
            await asyncio.sleep(due - now)

    def _publish(self, values, t_ns: int) -> None:
        for point, value, code in values:
            if code is not None:
                self._failed(code, f"{point.name} at register {point.register}: "
                                   f"{'not implemented' if code == 'ERR_MODBUS_NOT_IMPLEMENTED' else 'scale factor out of range'}")
                self.last.pop(point.name, None)
                continue
            self.last[point.name] = value
            source = self.sources.get(point.name)
            if source is None:
                continue
            verdict = self.ctrl.measure(source, value, t_ns)
            if verdict:
                self.accepted += 1
            else:
                self.rejected[verdict.code] += 1


class ModbusService(AsyncService):
    """The asyncio loop (its own thread) running every Modbus device of the site."""

    name = "modbus"

    def __init__(self, ctrl, configs: list[ModbusConfig]):
        super().__init__()
        self.ctrl = ctrl
        site = ctrl.site
        self.devices = []
        for cfg in configs:
            sources = {maps.POWER: node_source(cfg.node, "power_w")}
            if feeds_frequency(cfg, site):
                sources[maps.FREQUENCY] = FREQUENCY_SOURCE
            self.devices.append(Device(cfg, ctrl, sources))

    def run(self) -> None:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)   # every failure is named and counted here
        super().run()

    async def serve(self) -> None:
        tasks = [asyncio.create_task(d.run(), name=f"modbus.{d.cfg.name}") for d in self.devices]
        self._ready.set()
        stop = asyncio.create_task(self._done.wait())
        try:
            await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for d in self.devices:
                d.running = False
            for t in (stop, *tasks):
                t.cancel()
            await asyncio.gather(stop, *tasks, return_exceptions=True)
        died = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
        if died:                                     # a device task that died is the service's failure
            raise died[0]

    def stats(self) -> dict:
        return {"devices": {d.cfg.name: d.stats() for d in self.devices}}
