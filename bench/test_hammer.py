"""Smoke run of bench/hammer.py: status readers and command threads against a running loop.
The numbers mean nothing at this size; that every client got its answer does."""
import importlib.util
import pathlib


def test_hammer_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("hammer", pathlib.Path(__file__).with_name("hammer.py"))
    hammer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hammer)
    out = tmp_path / "hammer.json"
    assert hammer.main(["--windows", "2", "--window-s", "0.5", "--clients", "20", "--commanders", "2",
                        "--priority", "0", "--json", str(out)]) == 0
    import json
    result = json.loads(out.read_text())
    idle, busy = result["windows"]
    assert idle["load"] == "idle" and idle["status_reads"] == 0 and idle["cycles"] > 0
    assert busy["load"] == "hammer" and busy["status_reads"] > 0 and busy["commands"] > 0
    assert busy["status_errors"] == 0 and result["errors"] == {}
