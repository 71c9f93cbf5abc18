"""Smoke run of bench/journal_latency.py: two welds reach the journal on disk (the times are
the benchmark's to report, not a test's to assert)."""
import importlib.util
import json
import pathlib


def test_journal_latency_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("journal_latency",
                                                  pathlib.Path(__file__).with_name("journal_latency.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "j.json"
    assert bench.main(["--trials", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["latch_to_disk"]["n"] == 2 and result["writes"] >= 2
