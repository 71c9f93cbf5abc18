"""Fuzz target: Controller.measure() and measure_many() with values of any type.

Contract: measure(source, value, t_ns) never raises and returns a Submission;
measure_many(index, value, t_ns) never raises and returns an int from 0 to the
number of values (a malformed call is counted and accepts nothing). Nothing outside a source's physical range
(controller.SOURCE_RANGES) is ever visible in the next snapshot.

Each input is a short session on a fresh controller (virtual time) over a site
that has every kind of source: a few measure()/measure_many() calls, one cycle
after each, and the snapshot checked field by field.

    python tests/fuzz/fuzz_measure.py -runs=N -seed=S [new-corpus-dir] tests/fuzz/corpus/measure
"""
import math
import sys
import warnings

import atheris

import _dedup

with atheris.instrument_imports(include=["v2g_rt"]):
    import numpy as np

    from v2g_rt import Controller, Submission, config
    from v2g_rt.site import port_source

warnings.simplefilter("ignore")          # numpy's casting and deprecation warnings are not findings
S = 1_000_000_000
SITE = config.parse("""
[site]
name = "fuzz-measure"
period_ms = 10
[rt]
priority = 0
lock_memory = false
cpu_dma_latency_us = -1
[control]
session_max_age_s = 3600
[upstream.dms]
timeout_s = 30
[node.grid]
kind = "grid"
import_limit_w = 1e6
export_limit_w = 1e6
meter_max_age_s = 60
[node.tx]
kind = "transformer"
parent = "grid"
import_limit_w = 5e5
export_limit_w = 5e5
[node.tx.thermal]
top_oil_max_age_s = 60
[node.e1]
kind = "evse"
parent = "tx"
ports = 2
port_max_charge_w = 11000
port_max_discharge_w = 11000
heatsink_derate_c = [70, 90]
heatsink_max_age_s = 60
contactor_feedback = true
iso15118 = true
""", "fuzz-measure.toml")

DTYPES = (np.float64, np.float32, np.float16, np.longdouble, np.int8, np.int16, np.int32, np.int64, np.uint8,
          np.uint16, np.uint32, np.uint64, np.bool_, np.complex64, np.complex128, object, "U8", "S8",
          "datetime64[ns]", "timedelta64[s]")
SPECIAL = (0, 1, -1, 0.5, 2**31, 2**31 - 1, -2**31 - 1, 2**63, 2**64, -2**63 - 1, 10**400, -10**400,
           1e300, -1e300, 1e7, 1e7 + 1, 1e9, 1e9 + 1, -1e9 - 1, 40.0, 70.0, 70.0000001, 250.0, 250.1, -60.0, -60.5,
           math.nan, math.inf, -math.inf, True, False, None, "", "50", "nan", "1e999", b"50", [], [1.0], (1,), {},
           {"a": 1}, 1 + 0j, np.float64(60.0), np.float32(1e39), np.float16(65504), np.int64(-1),
           np.uint64(2**64 - 1), np.longdouble("1e4000"), np.datetime64(1, "ns"), object())


def pick(fdp: atheris.FuzzedDataProvider, seq):
    return seq[fdp.ConsumeIntInRange(0, len(seq) - 1)]


def scalar(fdp: atheris.FuzzedDataProvider, lo: float, hi: float):
    """A value of any type, weighted towards the range edges of the source being fed."""
    choice = fdp.ConsumeIntInRange(0, 9)
    if choice == 0:
        return fdp.ConsumeFloatInRange(lo, hi)
    if choice == 1:
        return pick(fdp, (lo, hi, math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf), (lo + hi) / 2))
    if choice == 2:
        return fdp.ConsumeFloat()
    if choice == 3:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 200))
    if choice == 4:
        return pick(fdp, SPECIAL)
    if choice == 5:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12))
    if choice == 6:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
    if choice == 7:
        return np.array([fdp.ConsumeFloatInRange(lo, hi)] * fdp.ConsumeIntInRange(0, 2))
    if choice == 8:
        return array(fdp, 1, lo, hi)[0] if fdp.ConsumeBool() else array(fdp, 1, lo, hi)
    return fdp.ConsumeIntInRange(int(lo) - 2, int(hi) + 2)


def array(fdp: atheris.FuzzedDataProvider, n: int, lo: float, hi: float):
    """n values as a numpy array of any dtype (or a list)."""
    dtype = pick(fdp, DTYPES)
    raw = [scalar_plain(fdp, lo, hi) for _ in range(n)]
    try:
        a = np.array(raw, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        a = np.array(raw, dtype=object)
    if fdp.ConsumeIntInRange(0, 7) == 0:
        return raw
    if fdp.ConsumeIntInRange(0, 7) == 0 and a.size:
        return a.reshape((1, -1)) if fdp.ConsumeBool() else a[::-1][::2]     # 2-D or non-contiguous
    return a


def scalar_plain(fdp: atheris.FuzzedDataProvider, lo: float, hi: float):
    choice = fdp.ConsumeIntInRange(0, 3)
    if choice == 0:
        return fdp.ConsumeFloatInRange(lo, hi)
    if choice == 1:
        return fdp.ConsumeFloat()
    if choice == 2:
        return pick(fdp, SPECIAL[:30])
    return fdp.ConsumeIntInRange(-2**40, 2**40)


def stamp(fdp: atheris.FuzzedDataProvider, now: int):
    choice = fdp.ConsumeIntInRange(0, 6)
    if choice == 0:
        return None
    if choice == 1:
        return now - fdp.ConsumeIntInRange(0, 10**10)
    if choice == 2:
        return now + fdp.ConsumeIntInRange(1, 10)
    if choice == 3:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 80))
    if choice == 4:
        return pick(fdp, (float(now), math.nan, math.inf, -math.inf, 1e300, str(now), np.int64(now), np.float64(now),
                          2**63, -2**63 - 1, 10**400, True, [now], b"1", 0.5))
    if choice == 5:
        return fdp.ConsumeFloat()
    return now


def known_indices(index, n_sources: int) -> bool:
    """Every element names a source: an integral number (of any type) from 0 to n_sources - 1."""
    try:
        items = np.asarray(index, dtype=object).ravel().tolist()
    except Exception:                                    # noqa: BLE001
        return False
    return all(not isinstance(i, (bool, np.bool_)) and isinstance(i, (int, float, np.integer, np.floating))
               and math.isfinite(i) and i == int(i) and 0 <= i < n_sources for i in items)


def check_snapshot(ctrl: Controller, where) -> None:
    """Every snapshot field that shows a measured source holds nan (none/stale) or a value in its range."""
    snap = ctrl.snapshot()
    rng = {name: r for name, (_, r) in ctrl._sources.items()}
    shown = [(snap.site["frequency_hz"], rng["grid/frequency_hz"], "site.frequency_hz"),
             (snap.node("grid")["measured_w"], rng["node/grid/power_w"], "grid.measured_w"),
             (snap.node("e1")["temperature_c"], rng["node/e1/heatsink_c"], "e1.temperature_c")]
    for pid in ctrl.port_ids:
        row = snap.port(pid)
        shown += [(row["soc"], rng[port_source(pid, "soc")], f"{pid}.soc"),
                  (row["measured_w"], rng[port_source(pid, "power_w")], f"{pid}.measured_w")]
    for v, (lo, hi), field in shown:
        v = float(v)
        assert math.isnan(v) or lo <= v <= hi, (field, v, lo, hi, where)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    ctrl = Controller(SITE, clock="virtual")
    t = S
    ctrl.step(t)
    names = ctrl.sources
    n_sources = len(names)
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        now = ctrl.now_ns()
        if fdp.ConsumeBool():
            k = fdp.ConsumeIntInRange(0, n_sources - 1)
            lo, hi = ctrl._sources[names[k]][1]
            choice = fdp.ConsumeIntInRange(0, 5)
            source = (names[k] if choice < 3 else k if choice == 3 else
                      pick(fdp, (-1, n_sources, 2**32, 2**63, 10**400, 1.0, True, np.int64(k), np.int8(-1), None,
                                 b"grid/frequency_hz", [k], (k,), {}, "", "grid/frequency_hz\0", names[k].upper())))
            value, t_ns = scalar(fdp, lo, hi), stamp(fdp, now)
            call = f"measure({source!r}, {value!r}, {t_ns!r}) at now_ns={now}"
            verdict = _dedup.call(f"fuzz_measure: {call}", ctrl.measure, source, value, t_ns)
            assert isinstance(verdict, Submission), (verdict, call)
            assert verdict.accepted or (isinstance(verdict.code, str) and verdict.code.startswith("ERR_MEAS_")), call
        else:
            n = fdp.ConsumeIntInRange(0, 6)
            if fdp.ConsumeIntInRange(0, 3):
                index = np.array([fdp.ConsumeIntInRange(0, n_sources - 1) for _ in range(n)], dtype=pick(
                    fdp, (np.int32, np.int64, np.uint8, np.int16, np.float64, object)))
            else:
                index = array(fdp, n, -2, n_sources + 2)
            k = int(index[0]) if fdp.ConsumeBool() and len(index) and isinstance(index, np.ndarray) and \
                index.ndim == 1 and index.dtype.kind in "iu" and 0 <= index[0] < n_sources else 0
            lo, hi = ctrl._sources[names[k]][1]
            value = array(fdp, n if fdp.ConsumeIntInRange(0, 7) else fdp.ConsumeIntInRange(0, 6), lo, hi)
            t_ns = stamp(fdp, now)
            call = f"measure_many({index!r}, {value!r}, {t_ns!r}) at now_ns={now}"
            accepted = _dedup.call(f"fuzz_measure: {call}", ctrl.measure_many, index, value, t_ns)
            assert isinstance(accepted, int) and 0 <= accepted <= np.size(value), (accepted, call)
            assert not accepted or known_indices(index, n_sources), f"accepted {accepted} for {call}"
        t += fdp.ConsumeIntInRange(1, S)
        ctrl.step(t)
        check_snapshot(ctrl, call)


def main() -> None:
    atheris.Setup(sys.argv, _dedup.wrap(TestOneInput))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
