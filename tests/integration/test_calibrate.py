"""`v2g-rt calibrate` on the packaged simulated site, end to end: clean it passes and writes the
file `run` loads; each injected miswiring is named, nothing is written, the exit is non-zero;
an interrupted calibration leaves the previous file as it was."""
import os
import signal
import stat
import subprocess
import sys
import tomllib
from importlib import resources

import pytest

from v2g_rt import calibration, config

CLI = [sys.executable, "-P", "-m", "v2g_rt.cli"]


def v2g(*args, env=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)


def test_calibrate_on_a_fresh_machine_passes_and_run_loads_the_result(tmp_path):
    state = tmp_path / "state"
    r = v2g("calibrate", env=dict(os.environ, STATE_DIRECTORY=str(state)))     # no --config, no --out
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("step  1/54  CAN: J1939 addresses of 25 EVSEs heard")
    assert lines[-1].startswith("calibration passed: 54 steps") and str(state / "calibration.toml") in lines[-1]
    assert sum(line.strip().startswith("ok:") for line in lines) == 54
    path = state / "calibration.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(state.stat().st_mode) == 0o700
    doc = tomllib.loads(path.read_text())
    assert doc["calibration"]["site"] == "sim-depot-50"
    assert doc["can"]["heard"] == list(range(33, 58))
    assert doc["i2c"]["tx1_ambient"]["identity"] == 0x0117
    assert doc["i2c"]["tx1_ambient"]["gain"] == pytest.approx(1.0, abs=1e-3)
    assert doc["meter"]["grid"] == {"sign": 1, "gain": pytest.approx(1.0, abs=0.01)}
    assert {p["phase"] for p in doc["port"].values()} == {"L1"} and len(doc["port"]) == 50
    site = calibration.load(path, config.load(), required=True)
    assert site.sections["i2c"][0].gain == doc["i2c"]["tx1_ambient"]["gain"]
    site_file = tmp_path / "site.toml"
    site_file.write_text(resources.files("v2g_rt.data").joinpath("default-site.toml").read_text())
    r = v2g("check", str(site_file), "--calibration", str(path))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("inject, code, named", [
    ("reversed-ct", "ERR_CALIBRATION_CT_REVERSED", "meter.grid.sign"),
    ("swapped-phases", "ERR_CALIBRATION_PHASE", "port.evse01.1.phase"),
    ("dead-channel", "ERR_CALIBRATION_DEAD_CHANNEL", "i2c.tx1_ambient.span"),
])
def test_an_injected_miswiring_is_named_and_nothing_is_written(tmp_path, inject, code, named):
    out = tmp_path / "calibration.toml"
    out.write_text("# the previous calibration\n")
    r = v2g("calibrate", "--out", str(out), "--inject", inject)
    assert r.returncode == 1, r.stdout
    failed = [line for line in r.stderr.splitlines() if line.startswith("  ")]
    assert failed and failed[0].strip().startswith(f"{named}: {code}: ")
    assert all(code in line for line in failed)        # the injected fault, no other
    assert "nothing written" in r.stderr
    assert out.read_text() == "# the previous calibration\n" and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_swapped_phases_names_both_ports(tmp_path):
    r = v2g("calibrate", "--out", str(tmp_path / "c.toml"), "--inject", "swapped-phases")
    named = [line.split(":")[0].strip() for line in r.stderr.splitlines() if line.startswith("  ")]
    assert named == ["port.evse01.1.phase", "port.evse02.1.phase"]
    assert "evse01.1's L1 is on site phase L2" in r.stderr


def test_sigterm_mid_calibration_leaves_the_previous_file(tmp_path):
    out = tmp_path / "calibration.toml"
    out.write_text("# the previous calibration\n")
    proc = subprocess.Popen([*CLI, "calibrate", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:
        if line.startswith("step  5/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "ERR_CALIBRATION_INTERRUPTED: calibration interrupted (SIGTERM)" in err
    assert "calibration passed" not in rest
    assert out.read_text() == "# the previous calibration\n" and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_an_unknown_inject_is_refused(tmp_path):
    r = v2g("calibrate", "--out", str(tmp_path / "c.toml"), "--inject", "bogus")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_run_refuses_a_calibration_of_another_site(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "calibration.toml").write_text('[calibration]\nversion = 1\nsite = "elsewhere"\n')
    r = v2g("run", "--duration", "1", env=dict(os.environ, STATE_DIRECTORY=str(state)))
    assert r.returncode == 2
    assert f"ERR_CALIBRATION_FILE: {state / 'calibration.toml'}: [calibration] site: expected 'sim-depot-50'" in r.stderr
