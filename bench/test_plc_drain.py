"""Smoke run of bench/plc_drain.py: the drain takes the frames it was given, and loss stops the
port in the cycles devices.plc.trip_cycles() predicts (times are the benchmark's to report)."""
import importlib.util
import json
import pathlib


def test_plc_drain_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("plc_drain", pathlib.Path(__file__).with_name("plc_drain.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "p.json"
    assert bench.main(["--modems", "1", "--frames", "0", "2", "--cycles", "20", "--rounds", "2",
                       "--windows", "20", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    idle, busy = doc["drain"]
    assert idle["frames_sent"] == 0 and busy["frames_sent"] == 80
    assert busy["frames_taken"] >= 70          # the probes' answers share the per-cycle budget
    assert doc["onset"] == [{"window": 20, "interval_cycles": 10, "limit": 0.05, "cycles": 21, "predicted": 21}]
