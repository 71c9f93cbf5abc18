"""Smoke run of bench/mqtt_latency.py: a few commands reach the loop's image and a small outbox
replays (the times are the benchmark's to report, not a test's to assert); both encodings' sizes."""
import importlib.util
import json
import pathlib


def test_mqtt_latency_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("mqtt_latency", pathlib.Path(__file__).with_name("mqtt_latency.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "m.json"
    bench.main(["--commands", "20", "--backlog", "200", "--json", str(out)])
    r = json.loads(out.read_text())
    assert r["command_to_image"]["commands"] == 20 and r["replay"]["messages"] == 200
    for sizes in (r, r["idle"]):
        for name in ("state_bytes", "evse_bytes"):
            assert 0 < sizes[name]["protobuf"] < sizes[name]["json"]
