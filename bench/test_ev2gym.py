"""Smoke run of bench/ev2gym/run.py (ev2gym is in the test extras): the controller
itself, with and without the horizon planner (setpoints sent at their step or scheduled ahead), runs a fixed-seed PublicPST day beside equal share
with no transformer overload and no failed solve (the quality numbers are the benchmark's to report)."""
import json
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).with_name("ev2gym")


def test_ev2gym_smoke(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    import run
    out = tmp_path / "e.json"
    assert run.main(["--scenario", "PublicPST", "--hard", "--seeds", "1", "--ports", "8", "--battery-frame",
                     "--policies", "ctl,ctl_plan,ctl_plan_ahead,equal_share", "--json", str(out)]) == 0
    runs = {r["policy"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"ctl", "ctl_plan", "ctl_plan_ahead", "equal_share"}
    for r in runs.values():
        assert r["tr_overload_kw_steps"] == 0 and r["energy_charged_kwh"] > 0
    for plan in ("ctl_plan", "ctl_plan_ahead"):
        assert runs[plan]["planner_solves"] > 0 and runs[plan]["planner_failures"] == 0
    sys.modules.pop("run", None)


def test_ev2gym_steps_smoke(monkeypatch, capsys):
    """steps.py: the per-step differences add up to the two tracking errors' difference."""
    monkeypatch.syspath_prepend(str(HERE))
    import steps
    out = steps.main(["--scenario", "PublicPST", "--ports", "8", "--seed", "0", "--top", "3"])
    assert out["worse"] - out["better"] == pytest.approx(out["first"] - out["second"], abs=1e-9)
    assert "error difference" in capsys.readouterr().out
    for name in ("steps", "run"):
        sys.modules.pop(name, None)
