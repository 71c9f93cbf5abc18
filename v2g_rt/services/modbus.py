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

A meter (role "meter") feeds node/<node>/power_w, its phases' node/<node>/power_l1_w .. l3_w when
the node has meter_phases = true, and grid/frequency_hz when the node is the site's grid connection. An EVSE (role "evse", an EVSE node with link = "modbus") is driven through
its vendor's map (hw/modbus/evse/): at each connect the map's setup registers and the charger's own
communication timeout (output_hold_s: its dead-man) are written; then its port's output from the
output mailbox is written on change and every keepalive_ms, between the polls that read its power,
SoC and state back into port/<port>/power_w, soc and connected.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass

from .. import modbus_maps as maps
from ..site import node_source, port_source
from . import BACKOFF_FIRST_S, BACKOFF_MAX_S, AsyncService, outputs_watched

SECTION = "modbus"            # [modbus.NAME]: one table per device
ROLES = ("meter", "evse")
FREQUENCY_SOURCE = "grid/frequency_hz"
LOG_EVERY_S = 60.0            # a repeating failure is logged once, then once a minute with its count
EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
              5: "acknowledge", 6: "server device busy", 8: "memory parity error",
              0x0A: "gateway path unavailable", 0x0B: "gateway target device failed to respond"}
RETRY_LATER = (5, 6)          # acknowledge, busy: the device is there, ask again at the next poll
STOP_WRITE_S = 2.0            # at stop, how long connected chargers are given to take the last output

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
    port_id: str = ""             # role evse: the port it drives
    keepalive_s: float = 1.0      # role evse: the output is written at least this often
    charger_timeout_s: int = 0    # role evse: written to the map's timeout register at connect

    @property
    def timeout_s(self) -> float:
        """How long one request (or the connect) may take: 3 periods, at least 1 s, at most 10 s."""
        return min(max(1.0, 3 * self.period_s), 10.0)


def check_config(cf, site) -> list[ModbusConfig]:
    out = []
    for sec in cf.tables(SECTION):
        name = sec.name.split(".", 1)[1]
        role = sec.get_str("role", choices=ROLES)
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
                metered = next((n for n in site.nodes if n.id == node), None)
                missing = [v for v in maps.PHASE_POWERS if register_map is not None and not register_map.point(v)]
                if role == "meter" and metered is not None and metered.meter_phases and missing:
                    sec.problem("map", f"{where}: [node.{node}] meter_phases = true needs the values "
                                       f"{', '.join(missing)} (active power per phase, W) in the meter's map")
            except maps.MapError as e:
                sec.problem("map", str(e), "ERR_CONFIG_MODBUS_MAP")
        cfg = ModbusConfig(name, role, host, port, unit, map_option, where, period_s, node, register_map)
        if role == "evse":
            cfg = _check_evse(sec, cfg, site)
        elif sec.has("connector") or sec.has("keepalive_ms"):
            sec.problem("connector" if sec.has("connector") else "keepalive_ms", "only an EVSE (role = \"evse\") has it")
        out.append(cfg)
    return out


def _check_evse(sec, cfg: ModbusConfig, site) -> ModbusConfig:
    """An EVSE's section: the node is an EVSE with link = "modbus", `connector` (1-based) picks
    its port, the map has a control part whose setpoint register holds the port's ratings."""
    connector = sec.get_int("connector", 1, minval=1, maxval=256)
    hold_s = site.control.output_hold_s
    keepalive_s = sec.get_float("keepalive_ms", 1000.0, minval=10, maxval=60_000, unit="ms") / 1e3
    if keepalive_s > hold_s / 2:
        sec.problem("keepalive_ms", f"{keepalive_s * 1e3:g} ms: the charger's timeout is output_hold_s = {hold_s:g} s "
                                    f"([control]); keep-alives must come at least twice within it "
                                    f"(keepalive_ms <= {hold_s * 500:g})")
    node = next((n for n in site.nodes if n.id == cfg.node), None)
    ports = [p for p in site.ports if p.evse == cfg.node]
    port_id = ""
    if node is not None and (node.kind != "evse" or node.link != "modbus"):
        sec.problem("node", f"{cfg.node!r} is a {node.kind} node with link = {node.link!r}; an EVSE driven over Modbus "
                            f"is a [node.{cfg.node}] with kind = \"evse\" and link = \"modbus\"")
    elif node is not None and connector > len(ports):
        sec.problem("connector", f"{connector}: EVSE {cfg.node!r} has {len(ports)} port(s)")
    elif node is not None:
        port_id = ports[connector - 1].id
    control = cfg.register_map.control if cfg.register_map else None
    if cfg.where == maps.SUNSPEC or (cfg.register_map is not None and control is None):
        sec.problem("map", f"{cfg.map}: not an EVSE map (no \"control\" part saying what to write); packaged EVSE "
                           f"maps: {', '.join(maps.packaged_maps())}", "ERR_CONFIG_MODBUS_MAP")
    elif control is not None and port_id:
        p = ports[connector - 1]
        lo, hi = control.setpoint.limits()
        if p.rating_charge_w > hi or -p.rating_discharge_w < lo:
            sec.problem("map", f"port {p.id!r} is rated {p.rating_charge_w:g} W charge, {p.rating_discharge_w:g} W "
                               f"discharge; the map's setpoint register {control.setpoint.register} "
                               f"({control.setpoint.type}) holds {lo:g} to {hi:g} W")
    timeout_s = math.ceil(hold_s)
    if control is not None and control.timeout is not None and not control.timeout.encode(timeout_s)[1]:
        sec.problem("map", f"the charger's timeout register {control.timeout.register} cannot hold output_hold_s "
                           f"= {hold_s:g} s")
    return ModbusConfig(cfg.name, cfg.role, cfg.host, cfg.port, cfg.unit, cfg.map, cfg.where, cfg.period_s, cfg.node,
                        cfg.register_map, port_id, keepalive_s, timeout_s)


def evse_ports(site) -> dict[str, str]:
    """Ports driven over Modbus: port id -> the [modbus.NAME] driving it."""
    return {cfg.port_id: cfg.name for cfg in site.sections.get(SECTION) or () if cfg.role == "evse" and cfg.port_id}


def has_frequency(cfg: ModbusConfig) -> bool:
    return cfg.where == maps.SUNSPEC or (cfg.register_map is not None and cfg.register_map.point(maps.FREQUENCY) is not None)


def feeds_frequency(cfg: ModbusConfig, site) -> bool:
    """The site's one frequency source is fed by the meter at its grid connection, if it measures it."""
    node = next((n for n in site.nodes if n.id == cfg.node), None)
    return node is not None and node.parent is None and node.kind == "grid" and has_frequency(cfg)


def evse_sources(cfg: ModbusConfig) -> dict[str, str]:
    """An EVSE's map values that feed its port: value name -> port source."""
    control = cfg.register_map.control
    out = {maps.POWER: "power_w"} if cfg.register_map.point(maps.POWER) else {}
    if cfg.register_map.point(maps.SOC):
        out[maps.SOC] = "soc"
    if control.connected_when:
        out[maps.STATE] = "connected"
    return {name: port_source(cfg.port_id, kind) for name, kind in out.items()}


def meter_phases(cfg: ModbusConfig, site) -> bool:
    """The meter's node takes its per-phase power (meter_phases = true)."""
    node = next((n for n in site.nodes if n.id == cfg.node), None)
    return cfg.role == "meter" and node is not None and node.meter_phases


def feeds(site) -> list:
    from ..devices import Feed
    out = []
    for cfg in site.sections.get(SECTION) or ():
        if cfg.role == "evse" and cfg.port_id and cfg.register_map and cfg.register_map.control:
            out += [Feed(source, f"{SECTION}.{cfg.name}", "map", (source.rsplit("/", 1)[1],), f"a charger's {name}")
                    for name, source in evse_sources(cfg).items()]
        if cfg.role != "meter" or not cfg.node:
            continue
        out.append(Feed(node_source(cfg.node, "power_w"), f"{SECTION}.{cfg.name}", "node", ("node_power_w",),
                        "a meter's active power (a metered node has meter_max_age_s)"))
        if meter_phases(cfg, site):
            out += [Feed(node_source(cfg.node, v), f"{SECTION}.{cfg.name}", "node", (f"node_{v}",),
                         "a meter's active power per phase") for v in maps.PHASE_POWERS]
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
        fn = self.client.read_holding_registers if table == "holding" else self.client.read_input_registers
        rr = await self._request(fn(address, count=count, device_id=self.cfg.unit), f"reading {table} {address}+{count}")
        regs = list(getattr(rr, "registers", []))
        if len(regs) != count:
            raise Failure("ERR_MODBUS_BAD_RESPONSE", f"{len(regs)} registers in the answer, asked for {count}")
        return regs

    async def write(self, address: int, words: list[int]) -> None:
        """Holding registers from address: function 6 for one word, 16 for more."""
        if len(words) == 1:
            request = self.client.write_register(address, words[0], device_id=self.cfg.unit)
        else:
            request = self.client.write_registers(address, words, device_id=self.cfg.unit)
        await self._request(request, f"writing holding {address}+{len(words)}")

    async def _request(self, request, what: str):
        """One request's answer; a Failure for no answer, a foreign or malformed one, an exception."""
        from pymodbus.exceptions import ModbusException

        self.foreign_unit = None
        try:
            rr = await asyncio.wait_for(request, self.cfg.timeout_s)
        except asyncio.TimeoutError:
            if self.foreign_unit is not None:
                raise Failure("ERR_MODBUS_BAD_RESPONSE", f"answer from unit {self.foreign_unit}, expected unit "
                                                         f"{self.cfg.unit}") from None
            raise Failure("ERR_MODBUS_TIMEOUT", f"no answer within {self.cfg.timeout_s:g} s ({what})") from None
        except ModbusException as e:
            if not self.client.connected:
                raise Failure("ERR_MODBUS_CONNECT", f"connection lost: {e}") from None
            raise Failure("ERR_MODBUS_BAD_RESPONSE", str(e)) from None
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0))
            if code in EXCEPTIONS:
                raise Failure(f"ERR_MODBUS_EXCEPTION_{code:02X}", f"exception {code:02X} ({EXCEPTIONS[code]}) {what}")
            raise Failure("ERR_MODBUS_BAD_RESPONSE", f"exception code {code} is not a Modbus exception")
        return rr


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
                await self._connected(link)
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
            await self._until(link, due)

    async def _connected(self, link: Link) -> None:
        """What a device needs written after each connect (a meter: nothing)."""

    async def _until(self, link: Link, due: float) -> None:
        """Wait for the next poll (at loop time due)."""
        await asyncio.sleep(due - asyncio.get_running_loop().time())

    def _value(self, name: str, value: float) -> float:
        """A map value as its source takes it."""
        return value

    def _publish(self, values, t_ns: int) -> None:
        for point, value, code in values:
            if code is not None:
                self._failed(code, f"{point.name} at register {point.register}: "
                                   f"{'not implemented' if code == 'ERR_MODBUS_NOT_IMPLEMENTED' else 'scale factor out of range'}")
                self.last.pop(point.name, None)
                continue
            if value is None:                  # the device says it has none now
                self.last.pop(point.name, None)
                continue
            self.last[point.name] = value
            source = self.sources.get(point.name)
            if source is None:
                continue
            verdict = self.ctrl.measure(source, self._value(point.name, value), t_ns)
            if verdict:
                self.accepted += 1
            else:
                self.rejected[verdict.code] += 1


class EvseDevice(Device):
    """A charger driven through its map's control part: setup and the charger's own timeout at
    connect, then its port's output on change and every keepalive_s, between the polls."""

    def __init__(self, cfg: ModbusConfig, ctrl):
        super().__init__(cfg, ctrl, evse_sources(cfg))
        self.control: maps.Control = cfg.register_map.control
        self.output = None                 # the port's latest row of the output mailbox
        self.wake = asyncio.Event()        # set when the output changed (or the service stops)
        self.sent: tuple[list[int] | None, bool | None] = (None, None)   # setpoint words, enabled
        self.writes = self.keepalives = self.out_of_range = 0
        self.written_w: float | None = None
        self.next_keepalive = 0.0          # loop time

    def stats(self) -> dict:
        out = super().stats()
        out.update(port=self.cfg.port_id, writes=self.writes, keepalives=self.keepalives,
                   setpoint_w=self.written_w, enabled=self.sent[1])
        if self.out_of_range:
            out["setpoint_out_of_range"] = self.out_of_range
        return out

    def offer(self, row) -> None:
        """The mailbox row of this device's port, after each hand-over."""
        if self.output is None or row["sequence"] != self.output["sequence"]:
            self.output = row
            self.wake.set()

    def wanted(self, now_ns: int) -> tuple[float, bool]:
        """(setpoint W, enabled): the output while valid; 0 W and disabled without a valid one."""
        out = self.output
        if out is None or out["valid_until_ns"] < now_ns or not out["contactor_closed"]:
            return 0.0, False
        return float(out["setpoint_w"]), True

    async def _connected(self, link: Link) -> None:
        c = self.control
        for reg, value in c.setup:
            await link.write(reg.address, reg.encode(value)[0])
        if c.timeout is not None:
            await link.write(c.timeout.address, c.timeout.encode(self.cfg.charger_timeout_s)[0])
        self.sent = (None, None)           # a new connection: everything is written again
        self.next_keepalive = 0.0

    async def _until(self, link: Link, due: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            setpoint_w, enabled = self.wanted(self.ctrl.now_ns())
            changed = self.sent != (self.control.setpoint.encode(setpoint_w)[0], enabled)
            if changed or loop.time() >= self.next_keepalive or not self.running:
                self.keepalives += not changed
                await self._write(link, setpoint_w, enabled)
                self.next_keepalive = loop.time() + self.cfg.keepalive_s
            if not self.running or loop.time() >= due:
                return
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), min(due, self.next_keepalive) - loop.time())
            except asyncio.TimeoutError:
                pass

    async def _write(self, link: Link, setpoint_w: float, enabled: bool) -> None:
        """Stop first, then the setpoint, then start: the charger never runs a setpoint it was
        not given. The setpoint is written every time: it is the keep-alive."""
        c = self.control
        words, fits = c.setpoint.encode(setpoint_w)
        if not fits:
            self.out_of_range += 1
            self._failed("ERR_MODBUS_SETPOINT_RANGE", f"{setpoint_w:g} W does not fit register {c.setpoint.register} "
                                                      f"({c.setpoint.type}); clamped to {c.setpoint.limits()}")
        try:
            if c.enable and not enabled and self.sent[1] is not False:
                await link.write(c.enable[0].address, c.enable[0].encode(c.enable[2])[0])
                self.sent = (self.sent[0], False)
            await link.write(c.setpoint.address, words)
            self.sent = (words, self.sent[1])
            self.written_w = setpoint_w
            if c.enable and enabled and self.sent[1] is not True:
                await link.write(c.enable[0].address, c.enable[0].encode(c.enable[1])[0])
            self.sent = (words, enabled)
            self.writes += 1
        except Failure as f:
            if not f.code.startswith("ERR_MODBUS_EXCEPTION_"):
                raise                      # no answer: reconnect, and write everything again
            self._failed(f.code, str(f))   # refused: written again at the next keep-alive

    def _value(self, name: str, value: float) -> float:
        if name == maps.SOC:
            return value / 100.0
        if name == maps.STATE:
            return float(int(value) in self.control.connected_when)
        return value


async def _stop_charger(cfg: ModbusConfig) -> None:
    control = cfg.register_map.control
    link = Link(cfg)
    try:
        await link.connect()
        if control.enable:
            await link.write(control.enable[0].address, control.enable[0].encode(control.enable[2])[0])
        await link.write(control.setpoint.address, control.setpoint.encode(0.0)[0])
    finally:
        link.close()


def safe_outputs(site) -> str:
    """Every Modbus-driven charger told 0 W (and stop, where its map has an enable register),
    all at once; raises DeviceError naming each charger that could not be told."""
    from ..devices import DeviceError

    evses = [cfg for cfg in site.sections.get(SECTION) or () if cfg.role == "evse"]
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)    # each failure is named below

    async def all_of_them():
        return await asyncio.gather(*(_stop_charger(cfg) for cfg in evses), return_exceptions=True)

    results = asyncio.run(all_of_them())
    failed = [f"[modbus.{cfg.name}] {cfg.host}:{cfg.port}: {getattr(r, 'code', type(r).__name__)}: {r}"
              for cfg, r in zip(evses, results) if isinstance(r, BaseException)]
    if failed:
        raise DeviceError(f"{len(failed)} of {len(evses)} chargers not told to stop: {'; '.join(failed)}")
    return f"{len(evses)} chargers told 0 W" + (" and stop" if any(c.register_map.control.enable for c in evses) else "")


class ModbusService(AsyncService):
    """The asyncio loop (its own thread) running every Modbus device of the site."""

    name = "modbus"

    def __init__(self, ctrl, configs: list[ModbusConfig]):
        super().__init__()
        self.ctrl = ctrl
        site = ctrl.site
        self.devices = []
        for cfg in configs:
            if cfg.role == "evse":
                self.devices.append(EvseDevice(cfg, ctrl))
                continue
            sources = {maps.POWER: node_source(cfg.node, "power_w")}
            if meter_phases(cfg, site):
                sources.update({v: node_source(cfg.node, v) for v in maps.PHASE_POWERS})
            if feeds_frequency(cfg, site):
                sources[maps.FREQUENCY] = FREQUENCY_SOURCE
            self.devices.append(Device(cfg, ctrl, sources))
        self.evses = [d for d in self.devices if isinstance(d, EvseDevice)]
        self.port_ids = [d.cfg.port_id for d in self.evses]
        self._rows = [ctrl.port_ids.index(p) for p in self.port_ids]
        for d in self.devices:
            for source in d.sources.values():
                ctrl.claim_source(source, f"{SECTION}.{d.cfg.name}")

    def run(self) -> None:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)   # every failure is named and counted here
        super().run()

    async def serve(self) -> None:
        for d in self.evses:
            d.wake = asyncio.Event()          # of this loop (the service may be restarted)
        watched = outputs_watched(self.ctrl, self._loop, self._outputs) if self.evses else contextlib.nullcontext()
        with watched:
            self._outputs()
            tasks = [asyncio.create_task(d.run(), name=f"modbus.{d.cfg.name}") for d in self.devices]
            self._ready.set()
            stop = asyncio.create_task(self._done.wait())
            try:
                await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._outputs()               # the loop's last outputs (0 W, open) ...
                for d in self.devices:
                    d.running = False
                for d in self.evses:
                    d.wake.set()
                writing = [t for t, d in zip(tasks, self.devices) if d in self.evses and d.connected]
                if writing:                   # ... reach the chargers still connected, in bounded time
                    await asyncio.wait(writing, timeout=STOP_WRITE_S)
                for t in (stop, *tasks):
                    t.cancel()
                await asyncio.gather(stop, *tasks, return_exceptions=True)
        died = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
        if died:                                     # a device task that died is the service's failure
            raise died[0]

    def _outputs(self) -> None:
        """Each charger's port's row of the output mailbox."""
        if not self.evses:
            return
        rows = self.ctrl.outputs(take=self.port_ids)
        for d, j in zip(self.evses, self._rows):
            d.offer(rows[j])

    def stats(self) -> dict:
        return {"devices": {d.cfg.name: d.stats() for d in self.devices}}
