"""Modbus register maps: what to read from a device and how a value comes out of its registers.

A map is either `sunspec` (the device describes itself: SunSpec discovery finds a meter model and
hw/modbus/sunspec-meter.json says where each value sits in it) or a JSON file (hw/modbus/*.json:
its address convention, and per value a register, type, word order, scale, sign and unit). Both
become the same list of Points, read in Blocks: each value with the scale-factor register it needs
in one request, so a value is never decoded with another moment's scale factor.

An EVSE's map (hw/modbus/evse/*.json) adds "control": what the controller writes (registers set
once at connect, the charger's own communication timeout, the setpoint, the enable register) and
which read values say that a vehicle is connected.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

SUNSPEC = "sunspec"
SUNSPEC_LAYOUT = "sunspec-meter.json"
EVSE_MAPS = "evse"                           # hw/modbus/evse/: EVSE register maps
SUNSPEC_BASES = (0, 40000, 50000)            # PDU addresses where 'SunS' may start
SUNSPEC_MARKER = (0x5375, 0x6E53)            # "SunS"
SUNSPEC_END = 0xFFFF
SUNSPEC_SF_RANGE = (-10, 10)                 # sunssf: a power of ten; outside is not a scale factor
MAX_REGISTERS = 125                          # per read request (Modbus application protocol 6.3)
BLOCK_GAP = 16                               # registers read across rather than starting a new request

# type -> (registers, struct format of the big-endian word sequence, "not implemented" raw value)
TYPES = {
    "int16": (1, ">h", -0x8000),
    "uint16": (1, ">H", 0xFFFF),
    "int32": (2, ">i", -0x80000000),
    "uint32": (2, ">I", 0xFFFFFFFF),
    "acc32": (2, ">I", 0),
    "float32": (2, ">f", None),            # NaN is its "not implemented"
}
UNITS = ("W", "var", "VA", "Wh", "varh", "Hz", "A", "V", "%", "C", "")
SIGNS = {"import_positive": 1.0, "export_positive": -1.0}
PRIORITIES = ("high", "low")
ADDRESSING = ("pdu", "modicon")
WORD_ORDERS = ("big", "little")
NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
# Values with a meaning for the controller; others are read and shown (`v2g-rt modbus read`) only.
POWER, FREQUENCY, SOC, STATE = "power_w", "frequency_hz", "soc", "state"
PHASE_POWERS = ("power_l1_w", "power_l2_w", "power_l3_w")   # a meter's per phase (meter_phases)
UNIT_OF = {POWER: "W", FREQUENCY: "Hz", SOC: "%", **{v: "W" for v in PHASE_POWERS}}
WRITABLE = ("int16", "uint16", "int32", "uint32")     # setpoint and timeout registers


class MapError(ValueError):
    """A map that cannot be used; the message names the file and the register."""


@dataclass(frozen=True)
class Point:
    name: str
    table: str                    # "holding" (function 3) or "input" (function 4)
    address: int                  # PDU address, 0-based
    type: str
    unit: str
    register: str                 # as the map wrote it (40001, pdu 0, model 203 +16), for people
    scale: float = 1.0
    sf_address: int | None = None   # a SunSpec scale-factor register (sunssf) in the same table
    sign: float = 1.0
    word_order: str = "big"
    priority: str = "high"
    invalid: tuple[int, ...] = ()   # raw values the device uses for "no value" besides the type's own

    @property
    def words(self) -> int:
        return TYPES[self.type][0]


@dataclass(frozen=True)
class Block:
    table: str
    address: int
    count: int
    priority: str
    points: tuple[Point, ...]


def raw_range(typ: str) -> tuple[int, int]:
    """The integers a writable type holds, less its "not implemented" mark (-0x8000, 0xFFFF, ...):
    a device may read that as no value at all."""
    bits = 16 * TYPES[typ][0]
    return (-(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1) if TYPES[typ][1][1].islower() else (0, (1 << bits) - 2)


@dataclass(frozen=True)
class Register:
    """A register the controller writes."""
    address: int                  # PDU address (holding), 0-based
    type: str
    register: str                 # as the map wrote it
    scale: float = 1.0            # engineering value = raw * scale
    word_order: str = "big"

    def encode(self, value: float) -> tuple[list[int], bool]:
        """The words for value, and whether it fit the type (a value outside is clamped)."""
        n, fmt, _ = TYPES[self.type]
        lo, hi = raw_range(self.type)
        raw = round(value / self.scale)
        fits = lo <= raw <= hi
        raw = min(max(raw, lo), hi)
        words = list(struct.unpack(f">{n}H", struct.pack(fmt, raw)))
        return (words[::-1] if self.word_order == "little" else words), fits

    def limits(self) -> tuple[float, float]:
        """The engineering values the register can hold."""
        lo, hi = raw_range(self.type)
        return lo * self.scale, hi * self.scale


@dataclass(frozen=True)
class Control:
    """What an EVSE's map says the controller writes, and how a read value says "connected"."""
    setpoint: Register            # active power, W, + = charge (import)
    setup: tuple[tuple[Register, int], ...] = ()      # written once at each connect
    timeout: Register | None = None                   # the charger's own dead-man, in s
    enable: tuple[Register, int, int] | None = None   # register, value on, value off
    connected_when: tuple[int, ...] = ()              # raw values of "state" meaning a vehicle is there


@dataclass(frozen=True)
class RegisterMap:
    source: str                   # "sunspec model 203 at 40000", or the JSON file
    points: tuple[Point, ...]
    blocks: tuple[Block, ...] = field(default=())
    control: Control | None = None

    def point(self, name: str) -> Point | None:
        return next((p for p in self.points if p.name == name), None)

    @property
    def high(self) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks if b.priority == "high")

    @property
    def low(self) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks if b.priority == "low")


def decode(p: Point, words: dict[int, int]) -> tuple[float | None, str | None]:
    """The point's value in its unit (sign: + = import), or None and the ERR code saying why not:
    the type's "not implemented" value (0x8000, 0xFFFF, 0x80000000, NaN, ...) is never data. A
    value the map lists as the device's "no value" (invalid_values) is None without a code."""
    regs = [words[p.address + i] for i in range(p.words)]
    if p.word_order == "little":
        regs.reverse()
    n, fmt, sentinel = TYPES[p.type]
    raw = struct.unpack(fmt, struct.pack(f">{n}H", *regs))[0]
    if raw == sentinel or not math.isfinite(raw):
        return None, "ERR_MODBUS_NOT_IMPLEMENTED"
    if raw in p.invalid:                         # the device's own "no value now": not a failure
        return None, None
    scale = p.scale
    if p.sf_address is not None:
        sf = struct.unpack(">h", struct.pack(">H", words[p.sf_address]))[0]
        if sf == -0x8000:
            return None, "ERR_MODBUS_NOT_IMPLEMENTED"
        if not SUNSPEC_SF_RANGE[0] <= sf <= SUNSPEC_SF_RANGE[1]:
            return None, "ERR_MODBUS_SCALE_FACTOR"
        scale *= 10.0 ** sf
    return float(raw) * scale * p.sign, None


def plan(source: str, points: list[Point]) -> RegisterMap:
    """Group points into read requests: per table and priority, neighbours (gaps up to BLOCK_GAP)
    in one request of at most MAX_REGISTERS, each with its scale-factor register."""
    blocks = []
    for table in ("holding", "input"):
        for prio in PRIORITIES:
            spans = sorted((p.address, p.address + p.words, p) for p in points if p.table == table and p.priority == prio)
            current: list = []
            for lo, hi, p in spans:
                ends = [hi] + ([p.sf_address + 1] if p.sf_address is not None else [])
                starts = [lo] + ([p.sf_address] if p.sf_address is not None else [])
                if current:
                    a, b = current[0], current[1]
                    na, nb = min(a, *starts), max(b, *ends)
                    if min(starts) <= b + BLOCK_GAP and nb - na <= MAX_REGISTERS:
                        current[:2] = [na, nb]
                        current[2].append(p)
                        continue
                    blocks.append(Block(table, a, b - a, prio, tuple(current[2])))
                current = [min(starts), max(ends), [p]]
            if current:
                blocks.append(Block(table, current[0], current[1] - current[0], prio, tuple(current[2])))
    return RegisterMap(source, tuple(points), tuple(blocks))


# ------------------------------------------------------------------ JSON maps

def packaged(name: str) -> str:
    """The text of a map shipped with the package (hw/modbus/NAME, or hw/modbus/evse/NAME)."""
    return resources.files("v2g_rt.data").joinpath("modbus").joinpath(name).read_text()


def resolve(map_option: str, config_file: str = "") -> Path | str:
    """`map` as written in [modbus.NAME]: "sunspec", a path (relative to the config file), or the
    name of a packaged map ("simple-meter" or "simple-meter.json")."""
    if map_option == SUNSPEC:
        return SUNSPEC
    path = Path(map_option)
    if not path.is_absolute() and config_file and not config_file.startswith("<"):
        path = Path(config_file).parent / path
    if path.exists():
        return path
    name = map_option if map_option.endswith(".json") else f"{map_option}.json"
    for candidate in (name, f"{EVSE_MAPS}/{name}"):
        try:
            packaged(candidate)
            return f"<packaged {candidate}>"
        except (FileNotFoundError, OSError):
            pass
    raise MapError(f"{map_option}: no such map file (looked at {path}) and no packaged map of that name; "
                   f"use \"sunspec\", a JSON map's path, or one of: {', '.join(packaged_maps())}")


def packaged_maps() -> list[str]:
    out = []
    for sub in ("", EVSE_MAPS):
        try:
            folder = resources.files("v2g_rt.data").joinpath("modbus")
            out += [f.name[:-5] for f in (folder.joinpath(sub) if sub else folder).iterdir()
                    if f.name.endswith(".json") and f.name != SUNSPEC_LAYOUT]
        except (FileNotFoundError, OSError):
            pass
    return sorted(out)


def load(where: Path | str) -> RegisterMap:
    """A JSON map (a path, or "<packaged NAME>"), checked; MapError names the file and register."""
    label = str(where)
    try:
        text = packaged(label[len("<packaged "):-1]) if label.startswith("<packaged ") else Path(where).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise MapError(f"{label}: cannot read the map: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise MapError(f"{label}: not valid JSON: {e}") from None
    return parse(doc, label)


def _expect(cond: bool, label: str, where: str, message: str) -> None:
    if not cond:
        raise MapError(f"{label}: {where}: {message}")


def _known(d: dict, allowed: set, label: str, where: str) -> None:
    extra = sorted(set(d) - allowed)
    _expect(not extra, label, where, f"unknown key {extra[0]!r}; known: {', '.join(sorted(allowed))}" if extra else "")


def parse(doc, label: str) -> RegisterMap:
    _expect(isinstance(doc, dict), label, "top level", "expected a JSON object with \"addressing\" and \"values\"")
    _known(doc, {"description", "addressing", "word_order", "values", "source", "control"}, label, "top level")
    addressing = doc.get("addressing")
    _expect(addressing in ADDRESSING, label, "addressing", f"expected one of {', '.join(ADDRESSING)} (0-based PDU "
            f"addresses, or Modicon 3xxxx/4xxxx references), found {addressing!r}")
    order = doc.get("word_order", "big")
    _expect(order in WORD_ORDERS, label, "word_order", f"expected big or little, found {order!r}")
    values = doc.get("values")
    _expect(isinstance(values, list) and values, label, "values", "expected a non-empty list of values")
    points: list[Point] = []
    for i, v in enumerate(values):
        _expect(isinstance(v, dict), label, f"values[{i}]", "expected an object")
        reg = v.get("register")
        where = f"register {reg}" if isinstance(reg, int) and not isinstance(reg, bool) else f"values[{i}]"
        points.append(_point(v, addressing, order, label, where))
    _check_overlaps(points, label)
    rmap = plan(label, points)
    if "control" in doc:
        rmap = RegisterMap(rmap.source, rmap.points, rmap.blocks, _control(doc["control"], addressing, order, rmap, label))
    return rmap


def _control(c, addressing: str, order: str, rmap: RegisterMap, label: str) -> Control:
    _expect(isinstance(c, dict), label, "control", "expected an object with at least \"setpoint\"")
    _known(c, {"setup", "timeout", "setpoint", "enable", "connected_when", "note"}, label, "control")
    _expect("setpoint" in c, label, "control", "an EVSE map needs a \"setpoint\" register (active power, W)")
    setpoint = _register(c["setpoint"], addressing, order, label, "control.setpoint", "W")
    timeout = _register(c["timeout"], addressing, order, label, "control.timeout", "s") if "timeout" in c else None
    setup = []
    for i, w in enumerate(c.get("setup", [])):
        where = f"control.setup[{i}]"
        _expect(isinstance(w, dict), label, where, "expected {\"register\", \"value\"}")
        _known(w, {"register", "value", "type", "note"}, label, where)
        reg = _register({k: v for k, v in w.items() if k not in ("value", "note")} | {"unit": ""}, addressing, order,
                        label, where, "")
        value = w.get("value")
        _expect(isinstance(value, int) and not isinstance(value, bool) and reg.encode(value)[1], label, where,
                f"value: expected an integer a {reg.type} holds, found {value!r}")
        setup.append((reg, value))
    enable = None
    if "enable" in c:
        e = c["enable"]
        _expect(isinstance(e, dict), label, "control.enable", "expected {\"register\", \"on\", \"off\"}")
        _known(e, {"register", "on", "off", "type", "note"}, label, "control.enable")
        reg = _register({k: v for k, v in e.items() if k in ("register", "type")} | {"unit": ""}, addressing, order,
                        label, "control.enable", "")
        for key in ("on", "off"):
            v = e.get(key)
            _expect(isinstance(v, int) and not isinstance(v, bool) and reg.encode(v)[1], label, "control.enable",
                    f"{key}: expected an integer a {reg.type} holds, found {v!r}")
        enable = (reg, e["on"], e["off"])
    when = c.get("connected_when", [])
    _expect(isinstance(when, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in when), label,
            "control.connected_when", f"expected a list of integers (raw values of {STATE!r}), found {when!r}")
    _expect(not when or rmap.point(STATE) is not None, label, "control.connected_when",
            f"needs a value named {STATE!r} among the values")
    written = [r for r, _ in setup] + [r for r in (setpoint, timeout) if r] + ([enable[0]] if enable else [])
    seen: dict[int, Register] = {}
    for r in written:
        for a in range(r.address, r.address + TYPES[r.type][0]):
            _expect(a not in seen or seen[a] is r, label, f"register {r.register}",
                    f"written twice in control (also as register {seen.get(a, r).register})")
            seen[a] = r
    return Control(setpoint, tuple(setup), timeout, enable, tuple(when))


def _register(r, addressing: str, order: str, label: str, where: str, unit: str) -> Register:
    _expect(isinstance(r, dict), label, where, "expected an object with \"register\" and \"type\"")
    _known(r, {"register", "type", "scale", "unit", "word_order", "note"}, label, where)
    reg = r.get("register")
    _expect(isinstance(reg, int) and not isinstance(reg, bool), label, where, "register: expected an integer")
    typ = r.get("type", "uint16")
    _expect(typ in WRITABLE, label, where, f"type {typ!r}: a written register is one of {', '.join(WRITABLE)}")
    table, address = _address(reg, None, addressing, label, where)
    _expect(table == "holding", label, where, f"{reg} is an input register; only holding registers can be written")
    _expect(address + TYPES[typ][0] <= 0x10000, label, where, f"a {typ} at {reg} runs past the last register")
    _expect(r.get("unit", unit) == unit, label, where, f"unit: expected {unit!r}, found {r.get('unit')!r}")
    scale = r.get("scale", 1)
    _expect(isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0,
            label, where, f"scale: expected a positive number, found {scale!r}")
    wo = r.get("word_order", order)
    _expect(wo in WORD_ORDERS, label, where, f"word_order: expected big or little, found {wo!r}")
    return Register(address, typ, str(reg), float(scale), wo)


def _point(v: dict, addressing: str, order: str, label: str, where: str) -> Point:
    _known(v, {"name", "register", "table", "type", "scale", "scale_factor_register", "sign", "unit", "priority",
               "word_order", "invalid_values", "note"}, label, where)
    name = v.get("name")
    _expect(isinstance(name, str) and NAME.fullmatch(name), label, where, f"name: expected lower_case_words, found {name!r}")
    typ = v.get("type")
    _expect(typ in TYPES, label, where, f"type {typ!r} is not one of {', '.join(TYPES)}")
    reg = v.get("register")
    _expect(isinstance(reg, int) and not isinstance(reg, bool), label, where, "register: expected an integer")
    table, address = _address(reg, v.get("table"), addressing, label, where)
    _expect(address + TYPES[typ][0] <= 0x10000, label, where, f"a {typ} at {reg} runs past the last register")
    scale = v.get("scale", 1)
    _expect(isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale != 0,
            label, where, f"scale: expected a non-zero number, found {scale!r}")
    sf = v.get("scale_factor_register")
    sf_address = None
    if sf is not None:
        _expect(isinstance(sf, int) and not isinstance(sf, bool), label, where, "scale_factor_register: expected an integer")
        sf_table, sf_address = _address(sf, v.get("table"), addressing, label, where)
        _expect(sf_table == table, label, where, "scale_factor_register must be in the value's own table")
    sign = v.get("sign", "import_positive")
    _expect(sign in SIGNS, label, where, f"sign: expected one of {', '.join(SIGNS)}, found {sign!r}")
    unit = v.get("unit")
    _expect(unit in UNITS, label, where, f"unit: expected one of {', '.join(repr(u) for u in UNITS)}, found {unit!r}")
    _expect(UNIT_OF.get(name, unit) == unit, label, where, f"{name} is in {UNIT_OF.get(name)}, found unit {unit!r}")
    prio = v.get("priority", "high" if name == POWER or name in PHASE_POWERS else "low")
    _expect(prio in PRIORITIES, label, where, f"priority: expected high or low, found {prio!r}")
    wo = v.get("word_order", order)
    _expect(wo in WORD_ORDERS, label, where, f"word_order: expected big or little, found {wo!r}")
    invalid = v.get("invalid_values", [])
    _expect(isinstance(invalid, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in invalid),
            label, where, f"invalid_values: expected a list of raw integers, found {invalid!r}")
    return Point(name, table, address, typ, unit, str(reg), float(scale), sf_address, SIGNS[sign], wo, prio,
                 tuple(invalid))


def _address(reg: int, table, addressing: str, label: str, where: str) -> tuple[str, int]:
    """(table, 0-based address) of a register as the map writes it."""
    if addressing == "modicon":
        _expect(table is None, label, where, "table: a Modicon reference says its table itself (3xxxx input, 4xxxx "
                                             "holding); leave table out")
        for lo, hi, t in ((40001, 49999, "holding"), (400001, 465536, "holding"),
                          (30001, 39999, "input"), (300001, 365536, "input")):
            if lo <= reg <= hi:
                return t, reg - lo
        raise MapError(f"{label}: {where}: {reg} is not a Modicon register reference (30001-39999 or 300001-365536 "
                       f"input, 40001-49999 or 400001-465536 holding); for 0-based addresses set \"addressing\": \"pdu\"")
    table = table or "holding"
    _expect(table in ("holding", "input"), label, where, f"table: expected holding or input, found {table!r}")
    _expect(0 <= reg <= 0xFFFF, label, where, f"a PDU address is 0-65535, found {reg}")
    return table, reg


def _check_overlaps(points: list[Point], label: str) -> None:
    names: set[str] = set()
    used: dict[tuple[str, int], Point] = {}
    for p in points:
        _expect(p.name not in names, label, f"register {p.register}", f"a second value named {p.name!r}")
        names.add(p.name)
        for a in range(p.address, p.address + p.words):
            other = used.get((p.table, a))
            _expect(other is None, label, f"register {p.register}", f"{p.name} ({p.type}) overlaps {other.name} at "
                    f"register {other.register}" if other else "")
            used[p.table, a] = p
    for p in points:
        if p.sf_address is not None and (p.table, p.sf_address) in used:
            _expect(False, label, f"register {p.register}", f"its scale factor register overlaps the value "
                    f"{used[p.table, p.sf_address].name}")


# ------------------------------------------------------------------ SunSpec

def sunspec_layout() -> dict[int, tuple[int, list[dict]]]:
    """Meter model id -> (model length, its values), from the packaged sunspec-meter.json."""
    doc = json.loads(packaged(SUNSPEC_LAYOUT))
    return {mid: (m["length"], m["values"]) for m in doc["models"] for mid in m["ids"]}


def sunspec_map(model_id: int, start: int, length: int) -> RegisterMap:
    """The map of a meter model whose data begins at PDU address start (after ID and L)."""
    expected, values = sunspec_layout()[model_id]
    if length < expected:
        raise MapError(f"sunspec model {model_id} at {start - 2}: length {length}, the model needs {expected}")
    points = [Point(v["name"], "holding", start + v["offset"], v["type"], v["unit"],
                    f"{start + v['offset']} (model {model_id} +{v['offset']})",
                    sf_address=start + v["scale_factor_offset"] if "scale_factor_offset" in v else None,
                    priority=v["priority"]) for v in values]
    return plan(f"sunspec model {model_id} at {start - 2}", points)
