"""Smoke run of bench/ocpp_latency.py: a few setpoint changes reach a station and a small fleet
connects (the times are the benchmark's to report, not a test's to assert)."""
import importlib.util
import json
import pathlib


def test_ocpp_latency_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("ocpp_latency", pathlib.Path(__file__).with_name("ocpp_latency.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "o.json"
    bench.main(["--changes", "5", "--stations", "3", "--window-s", "0.5", "--json", str(out)])
    got = json.loads(out.read_text())
    assert got["latency"]["changes"] == 5 and got["latency"]["errors"] == {}
    assert got["fleet"]["stations"] == 3 and got["fleet"]["errors"] == 0
