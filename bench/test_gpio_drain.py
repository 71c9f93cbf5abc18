"""Smoke run of bench/gpio_drain.py: every run drains what it was sent, and a dropped contactor
latches within 2 cycles (3 debounce cycles more when debounced); times are the benchmark's to
report."""
import importlib.util
import json
import pathlib


def test_gpio_drain_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("gpio_drain", pathlib.Path(__file__).with_name("gpio_drain.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "g.json"
    assert bench.main(["--lines", "4", "--seconds", "0.2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    idle, busy = result["runs"]
    assert idle["events"] == 4 and busy["events"] == 4 + 4 * 200       # the initial level, then one per cycle
    assert result["edge_to_latch_cycles"]["debounce_0ms"] <= 2
    assert result["edge_to_latch_cycles"]["debounce_3ms"] <= 3 + 2
