"""Fuzz target: Controller.submit() with commands of arbitrary shape and types.

Contract: submit() always returns a Submission and never raises, whatever the
command holds (huge ints, nan/inf, lists, bytes, bools, strings, nested
containers, numpy scalars, non-mappings). A command it accepts satisfies the
documented validation (README "Commands", Controller.submit): a public kind, an
id that is an int 0..2^63-1 or a 1..128-character string and not seen before,
only known fields, exactly one finite expiry in (now, now + 7 days], and per kind
a value_w within range, a valid `of`, or a port of the site.

Each input is a short session on a fresh controller (virtual time): a few
commands, one cycle after each, so a crash reproduces from its input alone.

    python tests/fuzz/fuzz_command.py -runs=N -seed=S [new-corpus-dir] tests/fuzz/corpus/command
"""
import math
import numbers
import sys
from collections.abc import Mapping

import atheris

import _dedup

with atheris.instrument_imports(include=["v2g_rt"]):
    import numpy as np

    from v2g_rt import Control, Controller, RealTime, Submission, depot
    from v2g_rt.controller import COMMAND_FIELDS, MAX_COMMAND_HORIZON_S, PUBLIC_COMMANDS
    from v2g_rt.wallclock import FixedClock

S = 1_000_000_000
WALL = FixedClock()
SITE = depot(4, period_s=0.01, rt=RealTime(priority=0, cpu=None, lock_memory=False, cpu_dma_latency_us=None),
             control=Control(port_ramp_w_per_s=math.inf))
GRID_KINDS = ("setpoint", "export_limit", "import_limit", "load_shed")
KINDS = tuple(PUBLIC_COMMANDS) + ("latch_fault", "Setpoint", "")
FIELDS = sorted(COMMAND_FIELDS)
EXPIRIES = ("expires_ns", "expires_in_s", "expires_at")
SPECIAL = (0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -2**63, 2**64, 10**400, -10**400,
           0.0, -0.0, 0.5, 1e9, 1e9 + 1, -1e9, -1e9 - 1, 1e300, -1e300, 5e-324, math.nan, -math.nan, math.inf, -math.inf,
           True, False, None, "", "x" * 128, "x" * 129, b"", b"setpoint", bytearray(b"1"), (), [], {}, [1], {"a": 1},
           np.float64(1.0), np.float32(math.nan), np.int64(5), np.bool_(True), np.uint64(2**64 - 1), 1 + 2j)
ACCEPTED_EXPIRY_SLACK_NS = 5 * S         # expires_at is converted with the wall clock, which moves


def pick(fdp: atheris.FuzzedDataProvider, seq):
    return fdp.PickValueInList(list(seq))


def value(fdp: atheris.FuzzedDataProvider, ports: tuple[str, ...], depth: int = 0):
    """Any Python value, weighted towards the edges of what submit() checks."""
    choice = fdp.ConsumeIntInRange(0, 15 if depth < 2 else 11)
    if choice == 0:
        return fdp.ConsumeIntInRange(-10, 300)
    if choice == 1:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 200))        # up to ~10**480
    if choice == 2:
        return fdp.ConsumeRegularFloat()
    if choice == 3:
        return fdp.ConsumeFloat()                                  # includes nan and +-inf
    if choice == 4:
        return pick(fdp, SPECIAL)
    if choice == 5:
        return fdp.ConsumeBool()
    if choice == 6:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 140))
    if choice == 7:
        return pick(fdp, KINDS + GRID_KINDS + ports)
    if choice == 8:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
    if choice == 9:
        return fdp.ConsumeFloatInRange(-2e9, 2e9)
    if choice == 10:
        return fdp.ConsumeIntInRange(-2 * 10**9, 2 * 10**9)
    if choice == 11:
        return None
    if choice == 12:
        return [value(fdp, ports, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if choice == 13:
        return tuple(value(fdp, ports, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3)))
    if choice == 14:
        return {pick(fdp, FIELDS + ["x", 1]): value(fdp, ports, depth + 1)}
    return np.array([fdp.ConsumeRegularFloat()])


def command(fdp: atheris.FuzzedDataProvider, ports: tuple[str, ...], serial: int):
    """A command-like object: mostly a dict close to a valid command, with fields replaced at random."""
    if fdp.ConsumeIntInRange(0, 15) == 0:
        return value(fdp, ports)                                   # not a mapping at all
    cmd = {"kind": pick(fdp, tuple(PUBLIC_COMMANDS)), "id": serial, "value_w": 1000.0,
           pick(fdp, EXPIRIES): 60}
    if cmd["kind"] == "reset_fault":
        cmd["port"] = pick(fdp, ports)
    if cmd["kind"] == "cancel":
        cmd["of"] = pick(fdp, GRID_KINDS)
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        field = pick(fdp, FIELDS + ["extra", 0, None, ("kind",)])
        if fdp.ConsumeIntInRange(0, 5) == 0:
            cmd.pop(field, None)
        else:
            cmd[field] = value(fdp, ports)
    return cmd


def _real(v) -> bool:
    """A real number, numpy scalars included (documented), bools excluded."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def check_accepted(cmd, now: int, ports: tuple[str, ...], seen: set) -> None:
    """An accepted command satisfies the documented validation (an independent restatement of it)."""
    assert isinstance(cmd, Mapping), cmd
    assert set(cmd) <= COMMAND_FIELDS, cmd
    kind = cmd["kind"]
    assert isinstance(kind, str) and kind in PUBLIC_COMMANDS, cmd
    cid = cmd.get("id")
    assert not isinstance(cid, bool) and (isinstance(cid, int) and 0 <= cid < 2**63
                                          or isinstance(cid, str) and 1 <= len(cid) <= 128), cmd
    key = (type(cid), cid)
    assert key not in seen, f"replayed id accepted: {cmd}"
    seen.add(key)
    given = [k for k in EXPIRIES if k in cmd]
    assert len(given) == 1, cmd
    raw = cmd[given[0]]
    assert _real(raw) and _finite(raw), cmd
    if given[0] == "expires_ns":
        ahead_ns = raw - now
    elif given[0] == "expires_in_s":
        ahead_ns = raw * S
    else:
        ahead_ns = (raw - WALL.now()) * S
    slack = ACCEPTED_EXPIRY_SLACK_NS if given[0] == "expires_at" else 1
    assert -slack < ahead_ns <= MAX_COMMAND_HORIZON_S * S + slack, (cmd, ahead_ns)
    if kind in ("reset_fault", "disable_port", "enable_port"):
        p = cmd.get("port")
        assert isinstance(p, str) and p in ports or (isinstance(p, int) and not isinstance(p, bool)
                                                     and 0 <= p < len(ports)), cmd
        return
    assert "port" not in cmd, cmd
    if kind == "cancel":
        assert cmd.get("of") in GRID_KINDS and isinstance(cmd["of"], str), cmd
        return
    v = cmd.get("value_w")
    assert _real(v) and _finite(v), cmd
    assert (-1e9 if kind == "setpoint" else 0.0) <= v <= 1e9, cmd


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    WALL.synced = fdp.ConsumeBool()
    ctrl = Controller(SITE, clock="virtual", wall=WALL)
    t = S
    ctrl.step(t)
    seen: set = set()
    for serial in range(fdp.ConsumeIntInRange(1, 4)):
        cmd = command(fdp, ctrl.port_ids, serial)
        now = ctrl.now_ns()
        verdict = _dedup.call(f"fuzz_command: submit({cmd!r}) at now_ns={now}", ctrl.submit, cmd)
        assert isinstance(verdict, Submission), verdict
        if verdict.accepted:
            assert verdict.code is None, verdict
            check_accepted(cmd, now, ctrl.port_ids, seen)
        else:
            assert isinstance(verdict.code, str) and (verdict.code.startswith("ERR_CMD_") or
                                                      verdict.code == "ERR_CLOCK_UNSYNCED" and not WALL.synced), verdict
            assert isinstance(verdict.reason, str) and verdict.reason, verdict
        t += fdp.ConsumeIntInRange(1, 10**10)
        ctrl.step(t)
    site = ctrl.snapshot().site          # a grid command in force (nan: none) is one that passed validation
    assert math.isnan(site["setpoint_w"]) or -1e9 <= site["setpoint_w"] <= 1e9, site
    assert math.isnan(site["load_shed_w"]) or 0 <= site["load_shed_w"] <= 1e9, site
    assert 0 <= site["import_limit_w"] and 0 <= site["export_limit_w"], site


def main() -> None:
    atheris.Setup(sys.argv, _dedup.wrap(TestOneInput))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
