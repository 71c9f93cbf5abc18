"""Site config: a TOML file turned into a validated Site.

Every problem names the file, the section and the option, what was expected and
what was found; unknown sections and options are errors. All problems are
collected, so `v2g-rt check` reports them all at once.
"""
from __future__ import annotations

import difflib
import math
import os
import stat
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

from .devices import check_feeds
from .errors import V2GError
from ._core import NODE_KINDS
from .site import LINK_KINDS, PHASES, RATED_W, Control, Frequency, Node, Port, RealTime, Site, Thermal, Upstream

REQUIRED = object()
DEFAULT_SITE = "default-site.toml"
INT_MIN, INT_MAX = -2**63, 2**63 - 1       # integers must fit the native core's int64
MAX_CONFIG_BYTES = 1 << 20                 # the 50-port depot is 7 KiB; a full build (CAPACITY) < 100 KiB

def section_owners() -> dict:
    """Sections owned by other parts of the controller: name -> check(cf, site), which reads the
    section with the same accessors ([i2c.NAME] style owners read cf.tables(name)) and returns the
    parsed settings, kept in Site.sections[name]. Every device kind, the Modbus, MQTT and OCPP
    services, the planner and the simulated plant."""
    from .services import mqtt, ocpp, planner
    from .sim import plant
    return {m.SECTION: m.check_config for m in (plant, mqtt, ocpp, planner, *feeders())}


def feeders() -> tuple:
    """Owners of sections whose devices feed sources (feeds(site)): the kernel device kinds and
    the Modbus service's meters."""
    from .devices import kinds
    from .services import modbus
    return (*kinds(), modbus)


# Names this version renamed. The old name is refused with the new one in the message, never
# read as an alias: one word means one thing ("link" is how setpoints reach an EVSE).
RENAMED_SECTIONS = {"link": "upstream"}                      # [link.NAME] -> [upstream.NAME]
RENAMED_OPTIONS = {("sim", "dms_link"): "dms_upstream"}      # (section, option) -> option


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
        super().__init__(problems[0].code, "")
        self.args = ("\n".join(str(p) for p in problems),)   # each line carries its own code


def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def is_number(value) -> bool:
    """A finite int or float, not a bool, that converts to a C double (huge ints do not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _show(value, limit: int = 60) -> str:
    """repr() of a found value, cut short: a message must stay one readable line."""
    try:
        text = repr(value)
    except ValueError:           # an int beyond sys.get_int_max_str_digits()
        return f"an integer of about {value.bit_length() * 0.30103:.0f} digits"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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

    def mark_read(self, option: str) -> None:
        self._read.add(option)

    def _get(self, option, default):
        self._read.add(option)
        if option in self.raw:
            return self.raw[option], True
        if default is REQUIRED:
            self.problem(option, "required option is missing")
        return default, False

    def get_float(self, option, default=REQUIRED, *, minval=None, maxval=None, above=None,
                  unit="", allow_inf=False):
        """The option as a float; a wrong type or a value outside the range is reported and
        replaced by the default (NaN if required), so nothing downstream uses it."""
        value, given = self._get(option, default)
        fallback = math.nan if default is REQUIRED else default
        if not given:
            return fallback
        if allow_inf and (value in ("unlimited", "inf") or value == math.inf):
            return math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problem(option, f"expected a number{' of ' + unit if unit else ''}, found {_kind(value)} {_show(value)}")
            return fallback
        rng = _range_text(minval, maxval, above, unit)
        if not is_number(value):
            self.problem(option, f"expected {rng}, found {_show(value)}")
            return fallback
        value = float(value)
        if (minval is not None and value < minval) or (maxval is not None and value > maxval) or \
                (above is not None and value <= above):
            self.problem(option, f"expected {rng}, found {value:g}")
            return fallback
        return value

    def get_int(self, option, default=REQUIRED, *, minval=None, maxval=None):
        """The option as an int within [minval, maxval] (and always within int64); a wrong type
        or a value outside is reported and replaced by the default (minval or 0 if required):
        counts read here may size allocations, so an unchecked value must never escape."""
        value, given = self._get(option, default)
        fallback = (minval if minval is not None else 0) if default is REQUIRED else default
        if not given:
            return fallback
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(option, f"expected an integer, found {_kind(value)} {_show(value)}")
            return fallback
        lo = INT_MIN if minval is None else minval
        hi = INT_MAX if maxval is None else maxval
        if not lo <= value <= hi:
            self.problem(option, f"expected an integer from {lo} to {hi}, found {_show(value)}")
            return fallback
        return value

    def get_bool(self, option, default=REQUIRED):
        value, given = self._get(option, default)
        if given and not isinstance(value, bool):
            self.problem(option, f"expected true or false, found {_kind(value)} {_show(value)}")
            return bool(default) if default is not REQUIRED else False
        return value if value is not REQUIRED else False

    def get_str(self, option, default=REQUIRED, *, choices=None):
        """The option as a string (one of choices if given); a wrong one is reported and
        replaced by the default ("" if required)."""
        value, given = self._get(option, default)
        fallback = "" if default is REQUIRED else default
        if not given:
            return fallback
        if not isinstance(value, str):
            self.problem(option, f"expected a string, found {_kind(value)} {_show(value)}")
            return fallback
        if choices is not None and value not in choices:
            self.problem(option, f"expected one of {', '.join(map(repr, choices))}, found {_show(value)}")
            return fallback
        return value

    def get_pair(self, option, default, *, unit=""):
        """A [low, high] pair of numbers, low <= high."""
        value, given = self._get(option, default)
        if not given:
            return value
        if not (isinstance(value, list) and len(value) == 2 and all(map(is_number, value))):
            self.problem(option, f"expected [low, high] in {unit or 'numbers'}, found {_show(value)}")
            return default
        if value[0] > value[1]:
            self.problem(option, f"expected low <= high, found {_show(value)}")
            return default
        return (float(value[0]), float(value[1]))

    def finish(self) -> None:
        """Every option present must have been read."""
        for option in self.raw:
            if option not in self._read:
                if (self.name, option) in RENAMED_OPTIONS:
                    new = RENAMED_OPTIONS[self.name, option]
                    self.problem(option, f"option {option!r} is now {new!r} (same value): rename it to {new!r}",
                                 "ERR_CONFIG_UNKNOWN_OPTION")
                    continue
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
        except RecursionError:      # tomllib recurses once per nested array or inline table
            self.data = {}
            self.problems.append(ConfigProblem(path, "-", None, "not valid TOML: arrays or inline tables nested "
                                               "too deeply; a site config needs at most 3 levels", "ERR_CONFIG_SYNTAX"))
        except ValueError as e:     # an integer longer than sys.get_int_max_str_digits() (4300)
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
    return parse(read_text(path), str(path))


def read_text(path: str | Path) -> str:
    """The text of a config file: a regular file of at most MAX_CONFIG_BYTES. Opened with
    O_NONBLOCK and checked with fstat before reading, so a FIFO, /dev/zero or a directory is
    refused at once instead of hanging or filling memory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise _file_error(path, f"cannot read the file: {e}", "ERR_CONFIG_UNREADABLE") from None
    try:
        data = _read_regular(path, fd)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise _file_error(path, f"grew beyond {MAX_CONFIG_BYTES} bytes (1 MiB) while being read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _file_error(path, f"is not UTF-8 text ({e}); TOML files are UTF-8", "ERR_CONFIG_UNREADABLE") from None


def _read_regular(path, fd: int) -> bytes:
    """Up to MAX_CONFIG_BYTES + 1 bytes of fd, which must be a regular file no larger than the limit."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _file_error(path, f"is {_file_type(st.st_mode)}, not a regular file; pass the site's TOML file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise _file_error(path, f"is {st.st_size} bytes; a site config is at most {MAX_CONFIG_BYTES} bytes (1 MiB)")
    chunks, total = [], 0
    try:
        while total <= MAX_CONFIG_BYTES and (chunk := os.read(fd, MAX_CONFIG_BYTES + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise _file_error(path, f"cannot read the file: {e}", "ERR_CONFIG_UNREADABLE") from None
    return b"".join(chunks)


def _file_error(path, message: str, code: str = "ERR_CONFIG_FILE") -> ConfigError:
    return ConfigError([ConfigProblem(str(path), "-", None, message, code)])


def _file_type(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((text for test, text in kinds if test(mode)), f"a special file (mode 0o{mode:o})")


def _refuse_renamed(cf: ConfigFile, old: str, new: str) -> None:
    """One problem per [old.NAME] table, naming the [new.NAME] it should be."""
    raw = cf.data[old]
    names = [n for n, body in raw.items() if isinstance(body, dict)] if isinstance(raw, dict) else []
    for where in [f"{old}.{n}" for n in names] or [old]:
        to = new + where[len(old):]
        cf.problems.append(ConfigProblem(cf.path, where, None, f"[{where}] is now [{to}] (same options): rename "
                                         f"the section to [{to}]", "ERR_CONFIG_UNKNOWN_OPTION"))


def parse(text: str, path: str = "<string>") -> Site:
    cf = ConfigFile(path, text)
    if cf.problems:
        raise ConfigError(cf.problems)
    known = {"site", "rt", "control", "upstream", "node", "frequency", *section_owners()}
    for name in cf.data:
        if name in RENAMED_SECTIONS:
            _refuse_renamed(cf, name, RENAMED_SECTIONS[name])
        elif name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean [{close[0]}]?" if close else f"; known sections: {', '.join(sorted(known))}"
            cf.problems.append(ConfigProblem(path, name, None, f"unknown section [{name}]{hint}", "ERR_CONFIG_UNKNOWN_OPTION"))

    s = cf.section("site")
    name = s.get_str("name", "site")
    period_s = s.get_float("period_ms", 1.0, minval=0.01, maxval=10_000.0, unit="ms") / 1e3
    status_socket = s.get_str("status_socket", "")
    operator_group = s.get_str("operator_group", Site.operator_group)

    r = cf.section("rt")
    cpu = r.get_int("cpu", -1, minval=-1, maxval=1023)
    dma = r.get_int("cpu_dma_latency_us", 0, minval=-1, maxval=10**6)
    rt = RealTime(priority=r.get_int("priority", 80, minval=0, maxval=99), cpu=None if cpu < 0 else cpu,
                  lock_memory=r.get_bool("lock_memory", True), cpu_dma_latency_us=None if dma < 0 else dma,
                  watchdog_device=r.get_str("watchdog_device", ""),
                  watchdog_timeout_s=r.get_int("watchdog_timeout_s", 10, minval=1, maxval=3600))

    control = typed(Control, cf.section("control"))

    upstreams = tuple(Upstream(sec.name.split(".", 1)[1], sec.get_float("timeout_s", 30.0, above=0, maxval=86400, unit="s"))
                      for sec in cf.tables("upstream"))

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
        extra = {"phase_limit_a": sec.get_float("phase_limit_a", math.inf, above=0, unit="A", allow_inf=True),
                 "voltage_v": sec.get_float("voltage_v", 230.0, minval=100, maxval=1000, unit="V")}
        if not is_evse:
            extra["meter_phases"] = sec.get_bool("meter_phases", False)
        if is_evse:
            if sec.raw.get("link") == "plc":
                sec.mark_read("link")
                sec.problem("link", "\"plc\" is not a link: the PLC modem is a sensor of link quality (iso15118 = true); "
                                    f"link says how setpoints reach the EVSE: one of {', '.join(LINK_KINDS)}")
            extra.update(
                link=sec.get_str("link", "sim", choices=LINK_KINDS) if sec.raw.get("link") != "plc" else "sim",
                phases=sec.get_str("phases", "L1L2L3", choices=tuple(PHASES)),
                heatsink_c=sec.get_pair("heatsink_derate_c", None, unit="C"),
                heatsink_max_age_s=sec.get_float("heatsink_max_age_s", 5.0, above=0, maxval=3600, unit="s"),
                contactor_feedback=sec.get_bool("contactor_feedback", False),
                iso15118=sec.get_bool("iso15118", False),
                can_address=sec.get_int("can_address", None, minval=0, maxval=253),
                can_signal=sec.get_str("can_signal", "EVSE_Thermal.HeatSinkTemp"))
            extra["pilot"] = sec.get_bool("pilot", extra["link"] == "pwm")
            if extra["pilot"] and p_dis > 0:
                sec.problem("port_max_discharge_w", f"{p_dis:g} W: a control pilot (pilot = true) offers a "
                                                    "charging current only; set port_max_discharge_w = 0")
        elif sec.has("thermal"):
            sec.mark_read("thermal")       # a table, checked as its own section
            extra["thermal"] = thermal_section(cf.section(f"{sec.name}.thermal", sec.raw["thermal"]), imp)
        nodes.append(Node(node_id, kind, parent, imp, exp, meter_age, base, **extra))
        for k in range(n_ports):
            ports.append(Port(f"{node_id}.{k + 1}", node_id, p_ch, p_dis))

    frequency = frequency_section(cf.section("frequency"))
    site = Site(name, period_s, tuple(nodes), tuple(ports), rt=rt, control=control, upstreams=upstreams,
                frequency=frequency, source=path, status_socket=status_socket, operator_group=operator_group)
    reported = {(p.section, p.option) for p in cf.problems}
    for owner, check in section_owners().items():
        if owner in cf.data:
            site.sections[owner] = check(cf, site)
    for problem in site.problems():
        if (problem.section, problem.option) not in reported:
            cf.problems.append(ConfigProblem(path, problem.section, problem.option, problem.message, problem.code))
    for problem in check_feeds(site, feeders()):
        cf.problems.append(ConfigProblem(path, problem.section, problem.option, problem.message, problem.code))
    for sec in cf.sections:
        sec.finish()
    if cf.problems:
        raise ConfigError(cf.problems)
    return site


def typed(cls, sec: Section):
    """Dataclass cls from a section: each field's metadata names the accessor and its range
    (site.option); the dataclass's defaults are the options' defaults."""
    return cls(**{f.name: getattr(sec, f.metadata["accessor"])(f.name, f.default, **f.metadata["limits"])
                  for f in fields(cls)})


def thermal_section(sec: Section, rated_default: float) -> Thermal:
    d = Thermal(rated_w=rated_default)
    hot = sec.get_pair("hot_spot_c", (d.derate_start_c, d.limit_c), unit="C")
    amb = sec.get_float("ambient_max_age_s", d.ambient_max_age_s, above=0, maxval=86400, unit="s")
    oil = sec.get_float("top_oil_max_age_s", -1.0, minval=-1, maxval=86400, unit="s")
    t = Thermal(
        rated_w=sec.get_float("rated_w", rated_default, minval=RATED_W[0], maxval=RATED_W[1], unit="W"),
        top_oil_rise_k=sec.get_float("top_oil_rise_k", d.top_oil_rise_k, above=0, maxval=150, unit="K"),
        hot_spot_gradient_k=sec.get_float("hot_spot_gradient_k", d.hot_spot_gradient_k, above=0, maxval=150, unit="K"),
        loss_ratio=sec.get_float("loss_ratio", d.loss_ratio, above=0, maxval=100),
        oil_exponent=sec.get_float("oil_exponent", d.oil_exponent, above=0, maxval=3),
        winding_exponent=sec.get_float("winding_exponent", d.winding_exponent, above=0, maxval=3),
        tau_oil_s=sec.get_float("tau_oil_s", d.tau_oil_s, above=0, maxval=1e6, unit="s"),
        tau_winding_s=sec.get_float("tau_winding_s", d.tau_winding_s, above=0, maxval=1e5, unit="s"),
        derate_start_c=hot[0], limit_c=hot[1],
        ambient_max_age_s=amb, top_oil_max_age_s=None if oil < 0 else oil)
    return t


def frequency_section(sec: Section) -> Frequency:
    d = Frequency()
    mode = sec.get_str("mode", d.mode, choices=("off", "droop", "curve"))
    curve_raw, given = sec._get("curve", ())
    curve = ()
    if given:
        ok = isinstance(curve_raw, list) and len(curve_raw) <= 16 and all(
            isinstance(p, list) and len(p) == 2 and all(map(is_number, p)) for p in curve_raw)
        if ok:
            curve = tuple((float(h), float(w)) for h, w in curve_raw)
        else:
            sec.problem("curve", f"expected [[Hz, W], ...] with at most 16 points, found {_show(curve_raw)}")
    if mode == "curve" and not given:
        sec.problem("curve", "mode = \"curve\" needs curve = [[Hz, W], ...]")
    return Frequency(
        mode=mode,
        nominal_hz=sec.get_float("nominal_hz", d.nominal_hz, minval=45, maxval=65, unit="Hz"),
        deadband_under_hz=sec.get_float("deadband_under_hz", d.deadband_under_hz, minval=0, maxval=5, unit="Hz"),
        deadband_over_hz=sec.get_float("deadband_over_hz", d.deadband_over_hz, minval=0, maxval=5, unit="Hz"),
        droop_under=sec.get_float("droop_under", d.droop_under, above=0, maxval=1),
        droop_over=sec.get_float("droop_over", d.droop_over, above=0, maxval=1),
        rated_w=sec.get_float("rated_w", d.rated_w, minval=0, maxval=1e9, unit="W"),
        response_time_s=sec.get_float("response_time_s", d.response_time_s, minval=0, maxval=600, unit="s"),
        curve=curve)
