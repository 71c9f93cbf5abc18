"""`v2g-rt calibrate` on the packaged direct-wired site (PWM pilots, GPIO contactors, the CPs on an
SPI ADC, all simulated far sides), end to end: clean it passes with no answers and `run` loads
what it wrote; a welded contactor, a logic-analyser reading off the map, an answer out of range
and a refused test box each fail their step with its code and write nothing."""
import os
import subprocess
import sys
import tomllib
from importlib import resources

from v2g_rt import calibration, config

CLI = [sys.executable, "-P", "-m", "v2g_rt.cli"]
SITE = str(resources.files("v2g_rt.data").joinpath("examples/direct-wired.toml"))
PILOTS = ("wb1_1", "wb1_2", "wb2_1")
COILS = ("wb1_1_coil", "wb1_2_coil", "wb2_1_coil")
PREVIOUS = "# the previous calibration\n"


def calibrate(tmp_path, *args, env=None):
    out = tmp_path / "calibration.toml"
    out.write_text(PREVIOUS)
    r = subprocess.run([*CLI, "calibrate", "--config", SITE, "--out", str(out), *args], capture_output=True,
                       text=True, timeout=120, env=env)
    return r, out


def answers(tmp_path, text):
    path = tmp_path / "answers.toml"
    path.write_text(text)
    return str(path)


def failed(r) -> list[str]:
    return [line.strip() for line in r.stderr.splitlines() if line.startswith("  ")]


def test_on_a_fresh_machine_it_passes_without_answers_and_run_loads_the_result(tmp_path):
    state = tmp_path / "state"
    env = dict(os.environ, STATE_DIRECTORY=str(state))
    r = subprocess.run([*CLI, "calibrate", "--config", SITE], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    steps = [line.split("  ", 1)[1] for line in lines if line.startswith("step ")]
    ports = ("wb1.1", "wb1.2", "wb2.1")
    assert [s.split(" (")[0] for s in steps[:6]] == [*(f"contactor of port {p}" for p in ports),
                                                    *(f"pilot of port {p}" for p in ports)]
    assert sum(line.strip().startswith("ok:") for line in lines) == 7
    assert "duty at 6, 18, 30 A with a test box in state C" in r.stdout          # no port is rated for 65 A
    assert r.stdout.count("open, closed, open: the feedback followed each within 0.5 s") == 3
    assert r.stdout.count("duty within 0.00 % at 10, 30, 50 %") == 3
    assert "not checked: no [modbus.NAME] meter on grid" in r.stdout           # the site has no meter
    assert lines[-1].startswith("calibration passed: 7 steps")
    doc = tomllib.loads((state / "calibration.toml").read_text())
    assert doc["gpio"] == {c: {"cycled": True} for c in COILS}
    assert doc["pwm"] == {p: {"duty_error_pct": 0.0} for p in PILOTS}
    for p in PILOTS:           # 6, 18, 30 A: 10, 30, 50 % on the map, as the sim pwmchip ran them
        assert doc["answers"][f"pwm.{p}.duty"] == {"test_box": True, "duty_10_pct": 10.0, "duty_30_pct": 30.0,
                                                   "duty_50_pct": 50.0}
    site = calibration.load(state / "calibration.toml", config.load(SITE), required=True)
    assert site.name == "direct-wired"
    run = subprocess.run([*CLI, "run", "--config", SITE, "--duration", "1"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert run.returncode == 0, run.stderr


def test_a_welded_contactor_fails_its_step_and_nothing_is_written(tmp_path):
    r, out = calibrate(tmp_path, "--inject", "welded-contactor")
    assert r.returncode == 1, r.stdout
    lines = failed(r)
    assert lines[0].startswith("gpio.wb1_1_coil.cycle: ERR_CALIBRATION_CONTACTOR: ")
    assert "commanded open, feedback closed" in lines[0] and "welded" in lines[0]
    assert "contactor (ERR_CONTACTOR_MISMATCH)" in lines[0]                    # the interlock latched it too
    # the port's pilot cannot be checked while the latch holds: said so, not taken for a bad duty
    assert lines[1:] == [line for line in lines[1:] if line.startswith("pwm.wb1_1.duty: ERR_CALIBRATION_PILOT: ")]
    assert "nothing written" in r.stderr and out.read_text() == PREVIOUS


def test_a_logic_analyser_reading_off_the_map_fails_with_the_duty_code(tmp_path):
    r, out = calibrate(tmp_path, "--answers", answers(tmp_path, "[pwm.wb1_2.duty]\nduty_30_pct = 30.6\n"))
    assert r.returncode == 1
    assert failed(r) == ["pwm.wb1_2.duty: ERR_CALIBRATION_DUTY: pilot of port wb1.2 ([pwm.wb1_2]): commanded 30 %, "
                         "measured 30.6 % (tolerance ±0.1 %)"]
    assert out.read_text() == PREVIOUS


def test_a_reading_within_one_quantum_passes(tmp_path):
    r, _ = calibrate(tmp_path, "--answers", answers(tmp_path, "[pwm.wb2_1.duty]\nduty_10_pct = 10.1\n"
                                                              "duty_50_pct = 49.9\n"))
    assert r.returncode == 0, r.stderr
    assert "duty within 0.10 % at 10, 30, 50 %" in r.stdout


def test_a_logic_analyser_answer_out_of_range_is_refused(tmp_path):
    r, out = calibrate(tmp_path, "--answers", answers(tmp_path, "[pwm.wb1_1.duty]\nduty_50_pct = 130\n"))
    assert r.returncode == 1
    assert failed(r) == ["pwm.wb1_1.duty: ERR_CALIBRATION_ANSWER: [pwm.wb1_1.duty] duty_50_pct: 130 % is out of "
                         "range: expected 0 .. 100 % (pilot of port wb1.1 ([pwm.wb1_1]) is commanded to 50 %: enter "
                         "the duty the logic analyser measures)"]
    assert out.read_text() == PREVIOUS


def test_without_a_confirmed_test_box_nothing_is_switched(tmp_path):
    text = "".join(f'[gpio.{c}.cycle]\ntest_box = "no"\n' for c in COILS[:1]) + '[pwm.wb2_1.duty]\ntest_box = false\n'
    r, out = calibrate(tmp_path, "--answers", answers(tmp_path, text))
    assert r.returncode == 1
    assert failed(r) == [
        "gpio.wb1_1_coil.cycle: ERR_CALIBRATION_CONTACTOR: contactor of port wb1.1 ([gpio.wb1_1_coil], "
        "[gpio.wb1_1_aux]): no test box confirmed (CP state A); nothing switched",
        "pwm.wb2_1.duty: ERR_CALIBRATION_PILOT: pilot of port wb2.1 ([pwm.wb2_1]): no test box confirmed "
        "(CP state A); nothing switched"]
    assert out.read_text() == PREVIOUS
