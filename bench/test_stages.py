"""Smoke run of bench/stages.py: both links run, frames go out on can and none is refused (the
times are the benchmark's to report, not a test's to assert)."""
import importlib.util
import json
import pathlib


def test_stages_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("stages", pathlib.Path(__file__).with_name("stages.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "s.json"
    assert bench.main(["--ports", "8", "--seconds", "1", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    can, sim, guided = result["runs"]["can"], result["runs"]["sim"], result["runs"]["sim+guidance"]
    assert can["frames_per_cycle"] > 0 and can["frames_refused"] == 0 and sim["frames_per_cycle"] == 0
    assert set(can["stages"]) == {"read", "update", "write", "publish"} and can["stages"]["write"]["count"] == 1001   # the first step, then 1000
    assert guided["stages"]["update"]["count"] == 1001


def test_stages_ab_smoke(tmp_path):
    """The interleaved A/B: this tree against itself, one round (a ratio near 1 is the run's to
    report, not a test's to assert)."""
    import sys
    spec = importlib.util.spec_from_file_location("stages_ab", pathlib.Path(__file__).with_name("stages_ab.py"))
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    src = pathlib.Path(__file__).resolve().parent.parent
    out = tmp_path / "ab.json"
    assert ab.main(["--base-python", sys.executable, "--base-src", str(src), "--ports", "8", "--seconds", "0.2",
                    "--rounds", "1", "--json", str(out)]) == 0
    (case,) = json.loads(out.read_text())["cases"]
    assert case["ports"] == 8 and set(case["ratio"]) == set(case["median_ratio"]) == {"read", "update", "write", "publish"}
    assert case["this"]["update"]["p99_us"] > 0 and case["base"]["update"]["p99_us"] > 0


def test_cycle_instructions_smoke(tmp_path):
    """Instructions (and L1 misses) per cycle under callgrind: this tree against itself counts the
    same instructions."""
    import sys
    spec = importlib.util.spec_from_file_location("cycle_instructions",
                                                  pathlib.Path(__file__).with_name("cycle_instructions.py"))
    ci = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ci)
    src = pathlib.Path(__file__).resolve().parent.parent
    out = tmp_path / "ci.json"
    assert ci.main(["--base-python", sys.executable, "--base-src", str(src), "--ports", "8", "--seconds", "0.05",
                    "--cache", "--json", str(out)]) == 0
    (case,) = json.loads(out.read_text())["cases"]
    stages = {"read", "update", "publish", "cycle"}
    assert set(case["this"]) == stages | {f"{st}_l1_misses" for st in stages}
    assert case["this"]["update"] > 1000 and case["this"]["cycle"] > case["this"]["update"]
    assert 0 < case["this"]["update_l1_misses"] <= case["this"]["cycle_l1_misses"]
    assert all(abs(case["ratio"][st] - 1) < 0.01 for st in stages), case     # (where the heap lands moves misses)
