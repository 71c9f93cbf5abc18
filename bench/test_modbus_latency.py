"""Smoke run of bench/modbus_latency.py: a few meter changes reach the loop's image at both poll
periods (the times are the benchmark's to report, not a test's to assert)."""
import importlib.util
import json
import pathlib


def test_modbus_latency_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("modbus_latency", pathlib.Path(__file__).with_name("modbus_latency.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "m.json"
    bench.main(["--changes", "3", "--periods", "100,10", "--json", str(out)])
    runs = json.loads(out.read_text())["runs"]
    assert [r["period_ms"] for r in runs] == [100.0, 10.0]
    assert all(r["changes"] == 3 and r["errors"] == {} for r in runs)
