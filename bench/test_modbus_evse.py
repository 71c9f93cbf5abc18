"""Smoke run of bench/modbus_evse.py: a few chargers, short windows, both conditions measured
(the numbers are the benchmark's to report, not a test's to assert)."""
import importlib.util
import json
import pathlib


def test_modbus_evse_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("modbus_evse", pathlib.Path(__file__).with_name("modbus_evse.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "e.json"
    bench.main(["--chargers", "3", "--windows", "2", "--window-s", "1.5", "--priority", "0", "--json", str(out)])
    result = json.loads(out.read_text())
    assert [w["load"] for w in result["windows"]] == ["idle", "modbus"]
    busy = result["windows"][1]
    assert busy["connected"] == 3 and busy["errors"] == 0 and busy["polls_per_s"] > 0 and busy["writes_per_s"] > 0
    assert result["chargers_saw"]["writes"] > 0
