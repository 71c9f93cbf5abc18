"""Smoke run of bench/io_schedule.py: every job of the 8 I2C + 8 SPI schedule runs and the
numbers are there (their values are the benchmark's to report, not a test's to assert)."""
import importlib.util
import json
import pathlib


def test_io_schedule_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("io_schedule", pathlib.Path(__file__).with_name("io_schedule.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "io.json"
    assert bench.main(["--seconds", "0.3", "--reads", "200", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    nat = result["native_io_thread"]
    assert nat["i2c"]["jobs"] == nat["spi"]["jobs"] == 8
    assert nat["i2c"]["runs"] >= 8 and nat["spi"]["runs"] >= 8 and nat["passes"] > 0
    assert set(result["served_python_side"]) == {"i2c", "spi"} and len(result["spi_convert_ns"]) == 4
