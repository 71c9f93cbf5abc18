"""Calibration: answers refused with the reason, the generic device steps' verdicts, and
calibration.toml written atomically, loaded by `run` and refused when stale."""
import stat
from dataclasses import replace

import pytest

from v2g_rt import calibration, config, journal
from v2g_rt.calibrate import (Answers, Bench, CalibrationError, Question, Verdict, check_answer, contactor_cycle,
                              duty_readback)
from v2g_rt.config import ConfigError


def bench(answers=None, settle=lambda s: None):
    return Bench(None, None, None, settle, answers or Answers(None), None, None)


def answers_file(tmp_path, text, suffix=".toml"):
    path = tmp_path / f"answers{suffix}"
    path.write_text(text)
    return Answers(str(path))


# ------------------------------------------------------------------ answers

def test_an_answer_out_of_range_is_refused_with_the_range_and_the_question():
    q = Question("span_c", "apply the span reference", "°C", -40.0, 125.0)
    assert check_answer("i2c.a.span", q, 40) == 40.0
    assert check_answer("i2c.a.span", q, "39.5") == 39.5
    with pytest.raises(CalibrationError) as e:
        check_answer("i2c.a.span", q, 400)
    assert e.value.code == "ERR_CALIBRATION_ANSWER"
    assert "[i2c.a.span] span_c: 400 °C is out of range: expected -40 .. 125 °C" in str(e.value)
    for bad in ("warm", float("nan"), True, [1]):
        with pytest.raises(CalibrationError):
            check_answer("i2c.a.span", q, bad)


def test_a_confirmation_takes_yes_or_no_only():
    q = Question("no_vehicle", "no vehicle", confirm=True)
    assert check_answer("s", q, "yes") is True and check_answer("s", q, False) is False
    with pytest.raises(CalibrationError, match="expected yes or no"):
        check_answer("s", q, 1)


def test_answers_file_is_keyed_by_step_id_and_refuses_unknown_steps(tmp_path):
    a = answers_file(tmp_path, '[i2c.tx1_ambient.span]\nzero_c = 10.1\nspan_c = 39.9\n')
    assert a.get("i2c.tx1_ambient.span", "zero_c") == 10.1
    j = answers_file(tmp_path, '{"pwm.p1.duty": {"duty_50_pct": 50.1}}', ".json")
    assert j.get("pwm.p1.duty", "duty_50_pct") == 50.1
    from v2g_rt.calibrate import Step
    with pytest.raises(CalibrationError, match="i2c.tx1_ambient.span: no such step on this site"):
        a.check_ids([Step("can.addresses", "", lambda b: None)])
    with pytest.raises(CalibrationError, match="not TOML"):
        answers_file(tmp_path, "zero_c = = 1")


def test_a_step_without_an_answer_on_hardware_names_the_key_to_give(tmp_path):
    b = bench(answers_file(tmp_path, '[other]\nx = 1\n'))
    with pytest.raises(CalibrationError, match=r"give it in --answers FILE as \[pwm.p1.duty\] duty_10_pct"):
        b.ask("pwm.p1.duty", Question("duty_10_pct", "measure it", "%", 0, 100))


# ------------------------------------------------------------------ generic device steps

class Pwm:
    """A PWM output whose driver reads back what it set, off by `error` percent points."""
    def __init__(self, error=0.0):
        self.error, self.duty = error, None

    def set(self, pct):
        self.duty = pct
        return pct + self.error


def test_duty_readback_takes_the_engineers_reading_and_refuses_a_wrong_one(tmp_path):
    pwm = Pwm()
    good = answers_file(tmp_path, '[pwm.p1.duty]\nduty_10_pct = 10.2\nduty_50_pct = 49.9\nduty_90_pct = 90.0\n')
    v = duty_readback("pwm.p1.duty", "pilot p1", pwm.set, section="pwm.p1").run(bench(good))
    assert v.ok and v.result == {"pwm.p1": {"duty_error_pct": pytest.approx(0.2)}}
    bad = answers_file(tmp_path, '[pwm.p1.duty]\nduty_10_pct = 10.0\nduty_50_pct = 53.0\nduty_90_pct = 90\n')
    v = duty_readback("pwm.p1.duty", "pilot p1", pwm.set).run(bench(bad))
    assert not v.ok and v.code == "ERR_CALIBRATION_DUTY" and "commanded 50 %, measured 53 %" in v.detail
    v = duty_readback("pwm.p1.duty", "pilot p1", Pwm(error=1.0).set, measured=lambda: 10.0).run(bench())
    assert not v.ok and "read back 11 %" in v.detail


class Contactor:
    """A contactor whose auxiliary contact reports its state, or stays where it is (welded)."""
    def __init__(self, stuck=None):
        self.stuck, self.closed, self.commands = stuck, False, []

    def command(self, closed):
        self.commands.append(closed)
        self.closed = closed if self.stuck is None else self.stuck

    def feedback(self):
        return self.closed


def test_contactor_cycle_opens_closes_and_opens_with_its_feedback_and_leaves_it_open():
    c = Contactor()
    v = contactor_cycle("gpio.k1.cycle", "contactor k1", c.command, c.feedback, confirm_sim=lambda: True,
                        section="gpio.k1").run(bench())
    assert v.ok and c.commands == [False, True, False, False] and not c.closed
    assert v.result == {"gpio.k1": {"cycled": True}}
    welded = Contactor(stuck=True)
    v = contactor_cycle("gpio.k1.cycle", "contactor k1", welded.command, welded.feedback,
                        confirm_sim=lambda: True).run(bench())
    assert not v.ok and v.code == "ERR_CALIBRATION_CONTACTOR" and "commanded open, feedback closed" in v.detail
    assert "welded" in v.detail and welded.commands[-1] is False
    stuck = Contactor(stuck=False)
    v = contactor_cycle("gpio.k1.cycle", "contactor k1", stuck.command, stuck.feedback,
                        confirm_sim=lambda: True).run(bench())
    assert not v.ok and "commanded closed, feedback open" in v.detail and stuck.commands == [False, True, False]


def test_contactor_cycle_never_switches_unless_its_precondition_holds(tmp_path):
    c = Contactor()
    refusal = Verdict.fail("ERR_CALIBRATION_CONTACTOR", "contactor k1: CP state B: no test box confirmed")
    v = contactor_cycle("gpio.k1.cycle", "contactor k1", c.command, c.feedback, ready=lambda b: refusal).run(bench())
    assert v is refusal and c.commands == []
    no = answers_file(tmp_path, '[gpio.k1.cycle]\nno_vehicle = "no"\n')
    v = contactor_cycle("gpio.k1.cycle", "contactor k1", c.command, c.feedback, confirm_sim=lambda: True).run(bench(no))
    assert not v.ok and "not confirmed" in v.detail and c.commands == []     # the engineer's answer wins


# ------------------------------------------------------------------ the file

def calibrated_doc(site, **i2c):
    cfg = site.sections["i2c"][0]
    result = {f"i2c.{cfg.name}": {"identity": 0x0117, "offset": 0.25, "gain": 1.01, **i2c},
              "meter.grid": {"sign": 1, "gain": 1.0}, f"port.{site.ports[0].id}": {"phase": "L1"}}
    return calibration.document(site, result, {"i2c.tx1_ambient.span": {"zero_c": 10.0}})


def test_the_file_is_written_0600_in_a_0700_directory_and_run_applies_it(tmp_path):
    site = config.load()
    path = tmp_path / "state" / "calibration.toml"
    calibration.write(path, calibrated_doc(site))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["calibration.toml"]       # no temporary left
    cfg = calibration.load(path, site).sections["i2c"][0]
    assert (cfg.gain, cfg.offset) == (1.01, 0.25)
    assert calibration.load(tmp_path / "none.toml", site) is site                 # no file: the config alone


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    site = config.load()
    path = tmp_path / "calibration.toml"
    calibration.write(path, calibrated_doc(site))
    before = path.read_bytes()
    monkeypatch.setattr(journal.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        calibration.write(path, calibrated_doc(site, gain=1.02))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["calibration.toml"]


def problems(path, site):
    with pytest.raises(ConfigError) as e:
        calibration.load(path, site)
    return [str(p) for p in e.value.problems]


def test_a_stale_or_foreign_calibration_is_refused_naming_file_section_and_option(tmp_path):
    site = config.load()
    path = tmp_path / "calibration.toml"
    calibration.write(path, calibrated_doc(site))
    cfg = site.sections["i2c"][0]
    moved = replace(site, sections={**site.sections, "i2c": (replace(cfg, address=0x49),)})
    [p] = problems(path, moved)
    assert p.startswith(f"ERR_CALIBRATION_FILE: {path}: [i2c.tx1_ambient] configured: measured for") and "0x49" in p
    [p] = problems(path, replace(site, name="other"))
    assert "[calibration] site: expected 'other'" in p
    evse = site.node(site.ports[0].evse)
    rephased = replace(site, nodes=tuple(replace(n, phases="L2") if n is evse else n for n in site.nodes))
    [p] = problems(path, rephased)
    assert f'[port."{site.ports[0].id}"] phase: calibrated on L1' in p
    calibration.write(path, calibrated_doc(site, gain=7.0, bogus=1))
    assert {p.split(": ")[2] for p in problems(path, site)} == {"[i2c.tx1_ambient] bogus", "[i2c.tx1_ambient] gain"}
    path.write_text("[calibration\n")
    assert "not TOML" in problems(path, site)[0]


def test_an_adcs_channels_are_corrected_each_by_its_own_table_written_or_nested(tmp_path):
    site = config.load()
    adc = site.sections["spi"][0]
    oil = next(ch for ch in adc.channels if ch.kind == "4-20mA")
    path = tmp_path / "calibration.toml"
    calibration.write(path, calibration.document(site, {f"{oil.section}": {"offset": -0.05, "gain": 1.002}}, {}))
    [got] = [ch for ch in calibration.load(path, site).sections["spi"][0].channels if ch.name == oil.name]
    assert (got.gain, got.offset) == (1.002, -0.05)
    other = [ch for ch in calibration.load(path, site).sections["spi"][0].channels if ch.name != oil.name]
    assert other and all((ch.gain, ch.offset) == (1.0, 0.0) for ch in other)
    fingerprint = calibration.channel_kinds()["spi"].calibration_fingerprint(oil)
    path.write_text(f'[calibration]\nversion = {calibration.VERSION}\nsite = "{site.name}"\n\n'
                    f'[{oil.section}]\noffset = 0.1\nconfigured = "{fingerprint}"\n')   # as an engineer writes it
    [got] = [ch for ch in calibration.load(path, site).sections["spi"][0].channels if ch.name == oil.name]
    assert got.offset == 0.1
    rewired = replace(site, sections={**site.sections, "spi": (replace(adc, channels=tuple(
        replace(ch, ratio=150.0) if ch is oil else ch for ch in adc.channels)),)})
    [p] = problems(path, rewired)
    assert p.startswith(f"ERR_CALIBRATION_FILE: {path}: [{oil.section}] configured: measured for") and "ratio=150" in p
