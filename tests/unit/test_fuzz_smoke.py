"""CI smoke for the atheris targets in tests/fuzz: each runs its seed corpus (regression seeds
included) and a short fixed-seed fuzz in a subprocess, and must exit 0.

New inputs go to a temporary directory listed first, so the repository's corpus is only read.
"""
import importlib.util
import pathlib
import subprocess
import sys

import pytest

FUZZ = pathlib.Path(__file__).resolve().parents[1] / "fuzz"
TARGETS = {"config": 2000, "command": 2000, "measure": 2000, "journal": 500, "control": 2000}     # runs: each well under 20 s here

pytestmark = pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                                reason="atheris is not installed (pip install '.[test]' on x86_64/aarch64 Linux)")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_runs_clean(target, tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    extra = [f"-dict={FUZZ / 'config.dict'}"] if target == "config" else []
    cmd = [sys.executable, str(FUZZ / f"fuzz_{target}.py"), "-seed=1", f"-runs={TARGETS[target]}",
           "-timeout=10", f"-artifact_prefix={tmp_path}/", *extra, str(new), str(FUZZ / "corpus" / target)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stderr[-4000:]}"
