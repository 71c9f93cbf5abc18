"""calibration.toml: what `v2g-rt calibrate` measured on a site, and how `run` uses it.

Written only when every step passed, atomically as the latched-fault journal is (a unique
temporary file in the same directory, fsync, rename, fsync of the directory; 0600 in a 0700
directory), to $STATE_DIRECTORY/calibration.toml by default (v2g_rt.faults.state_dir: the
unit's StateDirectory, /var/lib/v2g-rt). `run` loads the default file when it exists.

Where calibration and the site config overlap, this decides:
  analog channels ([i2c.NAME], later [spi.NAME])  both apply: the config says what the channel
      is (sensor, address, scale: the nominal conversion), calibration corrects it:
      value = raw * lsb * scale * gain + offset. Each entry keeps the config it was measured
      with (`configured`); if the config changed since, `run` refuses the file
      (ERR_CALIBRATION_FILE) instead of applying a correction measured for another channel.
  port phases ([node.ID] phases)  the config wins: it is the wiring plan, calibration verifies it
      (a port found on another phase fails calibration, ERR_CALIBRATION_PHASE) and records it;
      a file whose recorded phase disagrees with the config is refused as stale.
  the grid meter's sign  never corrected in software: a reversed CT fails calibration
      (ERR_CALIBRATION_CT_REVERSED) and is fixed on site; the file records sign = 1 and the
      measured gain (meter change / port power), for the record.
  CAN addresses heard, I2C identities, PWM duty errors, contactors cycled  for the record; nothing
      to apply.
A site config with a device or port that the file does not mention runs with the config alone.
"""
from __future__ import annotations

import time
import tomllib
from dataclasses import replace
from pathlib import Path

from .config import ConfigError, ConfigProblem
from .faults import state_dir
from .journal import replace_file
from .site import PHASES, Site

VERSION = 1
FILE_NAME = "calibration.toml"
MAX_BYTES = 1 << 20
PHASE_NAMES = ("L1", "L2", "L3")


def default_path() -> Path:
    return state_dir() / FILE_NAME


def channel_kinds() -> dict:
    """Device kinds with analog channels that calibration corrects: SECTION -> module. Such a
    module defines calibration_fingerprint(cfg) (what the channel is, as configured: a correction
    measured for it applies to that only); its channels' configs have the fields gain and offset.
    Where site.sections[SECTION] is not a flat tuple of channels with a name each (an SPI ADC holds
    its channels), the module also defines calibration_channels(configs) -> {name: channel} and
    calibration_replace(configs, {name: channel}) -> configs."""
    from .devices import kinds
    return {m.SECTION: m for m in kinds() if hasattr(m, "calibration_fingerprint")}


def document(site: Site, result: dict, answers: dict) -> dict:
    doc = {"calibration": {"version": VERSION, "site": site.name, "config": site.source,
                           "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    channels = channel_kinds()
    for section, values in sorted(result.items()):
        kind, _, name = section.partition(".")
        values = dict(values)
        cfg = _channels(channels[kind], site.sections.get(kind) or ()).get(name) if kind in channels else None
        if cfg is not None:
            values["configured"] = channels[kind].calibration_fingerprint(cfg)
        (doc.setdefault(kind, {}).__setitem__(name, values) if name else doc.__setitem__(kind, values))
    if answers:
        doc["answers"] = answers
    return doc


def dumps(doc: dict) -> str:
    """TOML for calibration documents: tables of tables of numbers, strings and lists."""
    lines = ["# written by `v2g-rt calibrate`; see v2g_rt/calibration.py for what `run` does with it"]

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return "[" + ", ".join(value(x) for x in v) + "]"

    def table(header: str, body: dict) -> None:
        plain = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if plain or not body:
            lines.append(f"\n[{header}]")
            lines.extend(f"{_key(k)} = {value(v)}" for k, v in plain.items())
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{header}.{_key(k)}", v)

    for k, v in doc.items():
        table(_key(k), v)
    return "\n".join(lines) + "\n"


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else f'"{k}"'


def write(path: Path, doc: dict) -> None:
    """Atomically replace path with doc; OSError on failure, leaving the previous file as it was."""
    replace_file(path, dumps(doc))


def load(path: Path, site: Site, required: bool = False) -> Site:
    """The site with path's calibration applied (the site itself when there is no file and it is
    not required); ConfigError naming file, section and option for a file that is not this
    site's calibration."""
    f = str(path)

    def problem(section, option, message) -> ConfigProblem:
        return ConfigProblem(f, section, option, message, "ERR_CALIBRATION_FILE")

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError([problem("calibration", None, "no such file; `v2g-rt calibrate` writes it")]) from None
        return site
    except OSError as e:
        raise ConfigError([problem("calibration", None, f"cannot read it: {e.strerror}")]) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError([problem("calibration", None, f"{len(raw)} bytes, more than {MAX_BYTES}")])
    try:
        doc = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError([problem("calibration", None, f"not TOML: {e}")]) from None
    problems: list[ConfigProblem] = []
    head = doc.get("calibration")
    if not isinstance(head, dict) or head.get("version") != VERSION:
        problems.append(problem("calibration", "version", f"expected {VERSION}, found "
                                f"{head.get('version') if isinstance(head, dict) else 'no [calibration] table'}"))
    elif head.get("site") != site.name:
        problems.append(problem("calibration", "site", f"expected {site.name!r} (this site), found {head.get('site')!r}: "
                                                       f"a calibration of another site"))
    channels = channel_kinds()
    known = {"calibration", "answers", "can", "meter", "port", "pwm", "gpio", *channels}
    for name in sorted(set(doc) - known):
        problems.append(problem(name, None, f"unknown section; known: {', '.join(sorted(known))}"))
    sections = dict(site.sections)
    for kind, module in channels.items():
        if kind in doc:
            sections[kind] = _apply_channels(kind, module, doc[kind], site, problems, problem)
    _check_ports(doc.get("port", {}), site, problems, problem)
    if problems:
        raise ConfigError(problems)
    return replace(site, sections=sections)


def _number(values: dict, option: str, section: str, problems, problem, lo: float, hi: float) -> float | None:
    v = values.get(option)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        problems.append(problem(section, option, f"expected a number {lo:g} .. {hi:g}, found {v!r}"))
        return None
    return float(v)


def _channels(module, configs) -> dict:
    if hasattr(module, "calibration_channels"):
        return module.calibration_channels(configs)
    return {c.name: c for c in configs}


def _flat(table: dict, names) -> dict:
    """A TOML table of channels, with "adc1.ch" names read back as nested tables, flattened."""
    out = {}
    for key, values in table.items():
        if key not in names and isinstance(values, dict) and values and all(isinstance(v, dict) for v in values.values()):
            out.update({f"{key}.{k}": v for k, v in _flat(values, {n.partition(".")[2] for n in names}).items()})
        else:
            out[key] = values
    return out


def _apply_channels(kind: str, module, table, site: Site, problems, problem) -> tuple:
    fingerprint = module.calibration_fingerprint
    given = site.sections.get(kind) or ()
    configs = _channels(module, given)
    if not isinstance(table, dict):
        problems.append(problem(kind, None, "expected a table per channel"))
        return given
    out = dict(configs)
    for name, values in _flat(table, set(configs)).items():
        section = f"{kind}.{name}"
        cfg = configs.get(name)
        if cfg is None:
            problems.append(problem(section, None, f"the site has no [{section}]; it has: {', '.join(configs) or 'none'}"
                                                   f" (a stale calibration: run `v2g-rt calibrate`)"))
            continue
        if not isinstance(values, dict):
            problems.append(problem(section, None, "expected a table"))
            continue
        unknown = sorted(set(values) - {"identity", "offset", "gain", "configured"})
        for option in unknown:
            problems.append(problem(section, option, "unknown option; known: configured, gain, identity, offset"))
        if values.get("configured") != fingerprint(cfg):
            problems.append(problem(section, "configured", f"measured for {values.get('configured')!r}, the site config "
                                    f"now says {fingerprint(cfg)!r}: calibrate again"))
            continue
        gain = _number(values, "gain", section, problems, problem, 0.5, 2.0) if "gain" in values else 1.0
        offset = _number(values, "offset", section, problems, problem, -1e6, 1e6) if "offset" in values else 0.0
        if gain is not None and offset is not None:
            out[name] = replace(cfg, gain=gain, offset=offset)
    if hasattr(module, "calibration_replace"):
        return module.calibration_replace(given, out)
    return tuple(out.values())


def _check_ports(table, site: Site, problems, problem) -> None:
    evses = {p.id: site.node(p.evse) for p in site.ports}
    if not isinstance(table, dict):
        problems.append(problem("port", None, "expected a table per port"))
        return
    for pid, values in table.items():
        section = f'port."{pid}"'
        if pid not in evses:
            problems.append(problem(section, None, "not a port of this site (a stale calibration)"))
            continue
        got = values.get("phase") if isinstance(values, dict) else None
        if got not in PHASE_NAMES:
            problems.append(problem(section, "phase", f"expected one of {', '.join(PHASE_NAMES)}, found {got!r}"))
            continue
        evse = evses[pid]
        if PHASE_NAMES.index(got) != min(k for k in range(3) if PHASES[evse.phases] >> k & 1):
            problems.append(problem(section, "phase", f"calibrated on {got}, but [node.{evse.id}] phases = "
                                    f"{evse.phases!r} now: calibrate again"))
