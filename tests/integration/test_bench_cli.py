"""Smoke run of `v2g-rt bench` (short windows, normal priority): its JSON, table and plot."""
import json
import os
import shutil
import subprocess
import sys

import pytest

CLI = [sys.executable, "-P", "-m", "v2g_rt.cli", "bench"]
SHORT = ["--duration", "1", "--window", "0.5", "--ports", "16", "--priority", "0"]


def test_bench_smoke_writes_json_table_and_plot(tmp_path):
    if shutil.which("cyclictest") is None:
        pytest.fail("cyclictest missing: tests/run installs rt-tests as root")
    # outside the source tree: every contender ships in the package
    out = subprocess.run([*CLI, *SHORT, "--load", "none,python", "--json", str(tmp_path / "b.json"),
                          "--plot", str(tmp_path / "b.png")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "b.json").read_text())
    for load in ("none", "python"):
        r = doc["loads"][load]
        assert set(r["contenders"]) == {"cyclictest", "native", "python"}
        for name, s in r["contenders"].items():
            assert {"p50_us", "p99_us", "p999_us", "max_us", "cycles", "overruns"} <= set(s)
            assert s["cycles"] > (0 if name == "python" else 300)   # the Python loop starves under load
            assert s["p50_us"] <= s["p99_us"] <= s["p999_us"] <= s["max_us"] + 1
        assert r["ratio_p99_native_cyclictest"] > 0 and r["period_us"] == 1000 and r["ports"] == 16
        assert r["policy"] == "SCHED_OTHER"
    assert "p99_native_python_over_idle" in doc
    assert "NOTE: no RT permission" in out.stdout and "native/cyclictest p99" in out.stdout
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_without_cyclictest_still_runs_the_rest(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = dict(os.environ, PATH=f"{bindir}:/nonexistent")
    out = subprocess.run([*CLI, *SHORT, "--json", str(tmp_path / "b.json"), "--baseline", "/nonexistent.py"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "cyclictest not found (apt-get install rt-tests)" in out.stdout
    assert "the Python baseline given with --baseline was not found" in out.stdout
    doc = json.loads((tmp_path / "b.json").read_text())
    assert set(doc["contenders"]) == {"native"} and doc["ratio_p99_native_cyclictest"] is None


def test_bench_rejects_bad_arguments():
    out = subprocess.run([*CLI, "--load", "gravity"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--load from none,python,stress" in out.stderr
