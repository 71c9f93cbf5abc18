"""Site config: a TOML file turned into a validated Site.

Every problem names the file, the section and the option, what was expected and
what was found; unknown sections and options are errors. All problems are
collected, so `v2g-rt check` reports them all at once.
"""
from __future__ import annotations

import difflib
import importlib
import math
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

from .errors import V2GError
from .site import LINK_KINDS, NODE_KINDS, Control, Link, Node, Port, RealTime, Site

REQUIRED = object()
DEFAULT_SITE = "default-site.toml"

# Sections owned by other parts of the controller: name -> "module:function" that
# checks the section with the same accessors (called with the Section and the Site)
# and returns the parsed settings, kept in Site.sections[name].
SECTION_OWNERS = {
    "sim": "v2g_rt.sim.plant:check_config",
}


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    section: str
    option: str | None
    message: str
    code: str = "ERR_CONFIG_VALUE"

    def __str__(self) -> str:
        where = f"[{self.section}]" + (f" {self.option}" if self.option else "")
        return f"{self.code}: {self.file}: {where}: {self.message}"


class ConfigError(V2GError):
    """One or more config problems; .problems lists them all."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__(problems[0].code, "\n".join(str(p) for p in problems))


def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


class Section:
    """Typed access to one config section; tracks which options were read."""

    def __init__(self, file: str, name: str, raw: dict, problems: list[ConfigProblem]):
        self.file, self.name, self.raw = file, name, raw
        self._read: set[str] = set()
        self._problems = problems

    def problem(self, option: str | None, message: str, code: str = "ERR_CONFIG_VALUE") -> None:
        self._problems.append(ConfigProblem(self.file, self.name, option, message, code))

    def has(self, option: str) -> bool:
        return option in self.raw

    def _get(self, option, default):
        self._read.add(option)
        if option in self.raw:
            return self.raw[option], True
        if default is REQUIRED:
            self.problem(option, "required option is missing")
        return default, False

    def get_float(self, option, default=REQUIRED, *, minval=None, maxval=None, above=None,
                  unit="", allow_inf=False):
        value, given = self._get(option, default)
        if not given:
            return value if value is not REQUIRED else math.nan
        if allow_inf and value in ("unlimited", "inf"):
            return math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problem(option, f"expected a number{' of ' + unit if unit else ''}, found {_kind(value)} {value!r}")
            return math.nan if default is REQUIRED else default
        value = float(value)
        rng = _range_text(minval, maxval, above, unit)
        if not math.isfinite(value) or (minval is not None and value < minval) or \
                (maxval is not None and value > maxval) or (above is not None and value <= above):
            self.problem(option, f"expected {rng}, found {value:g}")
        return value

    def get_int(self, option, default=REQUIRED, *, minval=None, maxval=None):
        value, given = self._get(option, default)
        if not given:
            return value if value is not REQUIRED else 0
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(option, f"expected an integer, found {_kind(value)} {value!r}")
            return 0 if default is REQUIRED else default
        if (minval is not None and value < minval) or (maxval is not None and value > maxval):
            self.problem(option, f"expected an integer {_range_text(minval, maxval, None, '')}, found {value}")
        return value

    def get_bool(self, option, default=REQUIRED):
        value, given = self._get(option, default)
        if given and not isinstance(value, bool):
            self.problem(option, f"expected true or false, found {_kind(value)} {value!r}")
            return bool(default) if default is not REQUIRED else False
        return value if value is not REQUIRED else False

    def get_str(self, option, default=REQUIRED, *, choices=None):
        value, given = self._get(option, default)
        if not given:
            return value if value is not REQUIRED else ""
        if not isinstance(value, str):
            self.problem(option, f"expected a string, found {_kind(value)} {value!r}")
            return ""
        if choices is not None and value not in choices:
            self.problem(option, f"expected one of {', '.join(map(repr, choices))}, found {value!r}")
        return value

    def get_pair(self, option, default, *, unit=""):
        """A [low, high] pair of numbers, low <= high."""
        value, given = self._get(option, default)
        if not given:
            return value
        if not (isinstance(value, list) and len(value) == 2 and
                all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            self.problem(option, f"expected [low, high] in {unit or 'numbers'}, found {value!r}")
            return default
        if value[0] > value[1]:
            self.problem(option, f"expected low <= high, found {value!r}")
        return (float(value[0]), float(value[1]))

    def finish(self) -> None:
        """Every option present must have been read."""
        for option in self.raw:
            if option not in self._read:
                close = difflib.get_close_matches(option, sorted(self._read), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; valid options: {', '.join(sorted(self._read))}"
                self.problem(option, f"option {option!r} is not valid in section [{self.name}]{hint}",
                             "ERR_CONFIG_UNKNOWN_OPTION")


def _range_text(minval, maxval, above, unit):
    u = f" {unit}" if unit else ""
    if above is not None and maxval is not None:
        return f"a number > {above:g} and <= {maxval:g}{u}"
    if above is not None:
        return f"a number > {above:g}{u}"
    if minval is not None and maxval is not None:
        return f"a number from {minval:g} to {maxval:g}{u}"
    if minval is not None:
        return f"a number >= {minval:g}{u}"
    if maxval is not None:
        return f"a number <= {maxval:g}{u}"
    return f"a finite number{u}"


class ConfigFile:
    """A parsed TOML file: the sections by their dotted names."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.problems: list[ConfigProblem] = []
        self.sections: list[Section] = []
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            self.data = {}
            self.problems.append(ConfigProblem(path, "-", None, f"not valid TOML: {e}", "ERR_CONFIG_SYNTAX"))

    def section(self, name: str, raw: dict | None = None) -> Section:
        if raw is None:
            raw = self.data.get(name, {})
        s = Section(self.path, name, raw if isinstance(raw, dict) else {}, self.problems)
        if not isinstance(raw, dict):
            s.problem(None, f"expected a table [{name}], found {_kind(raw)}")
        self.sections.append(s)
        return s

    def tables(self, prefix: str) -> list[Section]:
        """Sections [prefix.NAME], in file order."""
        raw = self.data.get(prefix, {})
        if not isinstance(raw, dict):
            self.problems.append(ConfigProblem(self.path, prefix, None, f"expected tables [{prefix}.NAME]"))
            return []
        return [self.section(f"{prefix}.{name}", body) for name, body in raw.items()]


def load(path: str | Path | None = None) -> Site:
    """Read and validate a site config; the packaged simulated depot if path is None."""
    if path is None:
        text = resources.files("v2g_rt.data").joinpath(DEFAULT_SITE).read_text()
        return parse(text, f"<built-in {DEFAULT_SITE}>")
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([ConfigProblem(str(path), "-", None, f"cannot read the file: {e}", "ERR_CONFIG_UNREADABLE")])
    return parse(text, str(path))


def parse(text: str, path: str = "<string>") -> Site:
    cf = ConfigFile(path, text)
    if cf.problems:
        raise ConfigError(cf.problems)
    known = {"site", "rt", "control", "link", "node", *SECTION_OWNERS}
    for name in cf.data:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean [{close[0]}]?" if close else f"; known sections: {', '.join(sorted(known))}"
            cf.problems.append(ConfigProblem(path, name, None, f"unknown section [{name}]{hint}", "ERR_CONFIG_UNKNOWN_OPTION"))

    s = cf.section("site")
    name = s.get_str("name", "site")
    period_s = s.get_float("period_ms", 1.0, minval=0.01, maxval=10_000.0, unit="ms") / 1e3
    status_socket = s.get_str("status_socket", "")

    r = cf.section("rt")
    cpu = r.get_int("cpu", -1, minval=-1, maxval=1023)
    dma = r.get_int("cpu_dma_latency_us", 0, minval=-1, maxval=10**6)
    rt = RealTime(priority=r.get_int("priority", 80, minval=0, maxval=99), cpu=None if cpu < 0 else cpu,
                  lock_memory=r.get_bool("lock_memory", True), cpu_dma_latency_us=None if dma < 0 else dma,
                  watchdog_device=r.get_str("watchdog_device", ""),
                  watchdog_timeout_s=r.get_int("watchdog_timeout_s", 10, minval=1, maxval=3600))

    control = typed(Control, cf.section("control"), CONTROL_OPTIONS)

    links = tuple(Link(sec.name.split(".", 1)[1], sec.get_float("timeout_s", 30.0, above=0, maxval=86400, unit="s"))
                  for sec in cf.tables("link"))

    nodes: list[Node] = []
    ports: list[Port] = []
    for sec in cf.tables("node"):
        node_id = sec.name.split(".", 1)[1]
        kind = sec.get_str("kind", choices=NODE_KINDS)
        parent = sec.get_str("parent", "") or None
        is_evse = kind == "evse"
        n_ports = sec.get_int("ports", 1, minval=1, maxval=8) if is_evse else 0
        p_ch = sec.get_float("port_max_charge_w", minval=0, maxval=1e6, unit="W") if is_evse else 0.0
        p_dis = sec.get_float("port_max_discharge_w", 0.0, minval=0, maxval=1e6, unit="W") if is_evse else 0.0
        default_limit = REQUIRED if not is_evse else n_ports * (p_ch if math.isfinite(p_ch) else 0.0)
        imp = sec.get_float("import_limit_w", default_limit, minval=0, maxval=1e9, unit="W")
        exp_default = REQUIRED if not is_evse else n_ports * p_dis
        exp = sec.get_float("export_limit_w", exp_default, minval=0, maxval=1e9, unit="W")
        meter_age = sec.get_float("meter_max_age_s", None, above=0, maxval=3600, unit="s") if not is_evse else None
        base = sec.get_pair("base_load_w", (0.0, 0.0), unit="W") if not is_evse else (0.0, 0.0)
        link = sec.get_str("link", "sim", choices=LINK_KINDS) if is_evse else None
        nodes.append(Node(node_id, kind, parent, imp, exp, meter_age, base, link))
        for k in range(n_ports):
            ports.append(Port(f"{node_id}.{k + 1}", node_id, p_ch, p_dis))

    site = Site(name, period_s, tuple(nodes), tuple(ports), rt=rt, control=control, links=links,
                source=path, status_socket=status_socket)
    reported = {(p.section, p.option) for p in cf.problems}
    for problem in site.problems():
        if (problem.section, problem.option) not in reported:
            cf.problems.append(ConfigProblem(path, problem.section, problem.option, problem.message, problem.code))
    for owner, target in SECTION_OWNERS.items():
        if owner in cf.data:
            module, func = target.split(":")
            site.sections[owner] = getattr(importlib.import_module(module), func)(cf.section(owner), site)
    for sec in cf.sections:
        sec.finish()
    if cf.problems:
        raise ConfigError(cf.problems)
    return site


def typed(cls, sec: Section, specs: dict):
    """Dataclass cls from a section: specs maps each field to (accessor, its range keywords);
    the dataclass's defaults are the options' defaults."""
    defaults = cls()
    return cls(**{f.name: getattr(sec, specs[f.name][0])(f.name, getattr(defaults, f.name), **specs[f.name][1])
                  for f in fields(cls)})


_S = {"unit": "s"}
CONTROL_OPTIONS = {
    "port_ramp_w_per_s": ("get_float", {"above": 0, "unit": "W/s", "allow_inf": True}),
    "deadband_w": ("get_float", {"minval": 0, "maxval": 1e5, "unit": "W"}),
    "output_hold_s": ("get_float", {"above": 0, "maxval": 3600, **_S}),
    "default_fleet_import_w": ("get_float", {"minval": 0, "unit": "W", "allow_inf": True}),
    "discharge_reserve_s": ("get_float", {"minval": 0, "maxval": 86400, **_S}),
    "discharge_taper_s": ("get_float", {"above": 0, "maxval": 86400, **_S}),
    "overrun_streak_safe": ("get_int", {"minval": 1, "maxval": 10**6}),
    "safe_exit_s": ("get_float", {"minval": 0, "maxval": 86400, **_S}),
    "session_max_age_s": ("get_float", {"above": 0, "maxval": 3600, **_S}),
    "frequency_max_age_s": ("get_float", {"above": 0, "maxval": 3600, **_S}),
}
