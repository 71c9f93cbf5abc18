"""calibrate's pilot and contactor steps on the packaged direct-wired site, in process and in
virtual time, with faults the command line cannot inject: a pwmchip that runs a duty of its own,
a vehicle already plugged in, a test box that never reaches state C, a contactor that does not
pull in; and a port without a pilot. The controller, its devices and the sim far sides are the
real ones (SimSite)."""
import tomllib
from importlib import resources

import pytest

from helpers import GPIO_SITE
from v2g_rt import config
from v2g_rt.calibrate import Answers, Bench, calibrate, collect_steps, isolate_ports, settle_s
from v2g_rt.devices import pwm
from v2g_rt.sim.commissioning import SimSite


@pytest.fixture
def rig(tmp_path):
    site = config.parse(resources.files("v2g_rt.data").joinpath("examples/direct-wired.toml").read_text(), "dw.toml")
    sim = SimSite(site)

    def bench(answers=""):
        path = tmp_path / "answers.toml"
        path.write_text(answers)
        b = Bench(sim.site, sim.ctrl, sim.devices, sim.advance, Answers(str(path)), None, None)
        isolate_ports(b)
        b.settle(settle_s(sim.site))
        return b
    sim.bench = bench
    yield sim
    sim.close()


def step(b, step_id):
    return next(s for s in collect_steps(b.site, b) if s.id == step_id)


def drive_sets(sim, k):
    return sim.ctrl.device_stats()["gpio"]["outputs"][k]["sets"]


def test_a_chip_that_runs_a_duty_of_its_own_fails_on_its_read_back(rig):
    b = rig.bench()
    rig.devices.pwm_peer.hold("wb2.1", 400_000)             # 40 % whatever is written
    v = step(b, "pwm.wb2_1.duty").run(b)
    assert not v.ok and v.code == "ERR_CALIBRATION_DUTY" and "commanded 10 %, read back 40 %" in v.detail
    rig.devices.pwm_peer.hold("wb2.1", None)
    v = step(b, "pwm.wb1_1.duty").run(b)                     # the others are fine
    assert v.ok, v.detail


def test_the_duty_step_leaves_the_port_out_of_service_and_the_cp_as_it_was(rig):
    b = rig.bench()
    assert step(b, "pwm.wb1_2.duty").run(b).ok
    b.settle(1.0)
    row = rig.ctrl.snapshot().port("wb1.2")
    assert b.cp_state("wb1.2") == "A" and not row["connected"] and not row["contactor_closed"]
    assert row["setpoint_w"] == 0.0 and rig.devices.pwm_peer.duty("wb1.2") == 100.0


def test_a_vehicle_plugged_in_is_never_switched_unless_confirmed_as_the_test_box(rig):
    b = rig.bench('[gpio.wb1_1_coil.cycle]\ntest_box = "no"\n[pwm.wb1_1.duty]\ntest_box = "no"\n')
    rig.devices.spi_peer.plug("port/wb1.1/cp_v", "B")       # a vehicle, connected, not ready
    b.settle(1.0)
    before = drive_sets(rig, 0)
    v = step(b, "gpio.wb1_1_coil.cycle").run(b)
    assert not v.ok and v.code == "ERR_CALIBRATION_CONTACTOR" and "no test box confirmed (CP state B)" in v.detail
    v = step(b, "pwm.wb1_1.duty").run(b)
    assert not v.ok and v.code == "ERR_CALIBRATION_PILOT" and "(CP state B)" in v.detail
    assert drive_sets(rig, 0) == before and rig.devices.pwm_peer.duty("wb1.1") == 100.0


def test_without_state_c_the_interlock_never_closes_the_contactor(rig):
    b = rig.bench()
    spi = rig.devices.spi_peer
    real_plug = spi.plug

    def stuck_in_b(src, state, duty=None):                   # a test box whose switch stays in B
        real_plug(src, "B" if state == "C" else state, duty)
    spi.plug = stuck_in_b
    before = drive_sets(rig, 1)
    v = step(b, "gpio.wb1_2_coil.cycle").run(b)
    assert not v.ok and v.code == "ERR_CALIBRATION_CONTACTOR" and "CP state B with the test box, expected C" in v.detail
    assert drive_sets(rig, 1) == before and not rig.devices.gpio_peer.closed("wb1.2")


def test_a_contactor_that_does_not_pull_in_fails_and_the_interlock_latches_it(rig):
    b = rig.bench()
    rig.devices.gpio_peer.contactors["wb2.1"].stick()
    v = step(b, "gpio.wb2_1_coil.cycle").run(b)
    assert not v.ok and v.code == "ERR_CALIBRATION_CONTACTOR" and "commanded closed, feedback open" in v.detail
    assert "contactor (ERR_CONTACTOR_MISMATCH)" in v.detail
    assert not rig.ctrl.snapshot().port("wb2.1")["contactor_closed"]


def test_test_currents_stay_within_each_ports_rating():
    site = config.parse(resources.files("v2g_rt.data").joinpath("examples/direct-wired.toml").read_text(), "dw.toml")
    for p in site.ports:
        top = max(a for a in pwm.TEST_CURRENTS_A if a * site.node(p.evse).watts_per_amp <= p.rating_charge_w)
        assert top == 30.0                                   # 32 A ports: 65 A (the upper segment) is not offered


CONTACTOR_LINES = """
[gpio.k1_aux]
backend = "sim"
line = 0
role = "contactor_feedback"
port = "e1.1"
[gpio.k1_coil]
backend = "sim"
line = 1
role = "contactor_drive"
port = "e1.1"
"""


def test_a_port_without_a_pilot_is_cycled_once_no_vehicle_is_confirmed(tmp_path):
    """An EVSE the plant plays (link = "sim": its test load is connected) with GPIO contactors."""
    text = (GPIO_SITE + CONTACTOR_LINES).replace("contactor_settle_s = 0.01", "contactor_settle_s = 0.2")
    site = config.parse(text.replace("contactor_max_age_s = 0.05", "contactor_max_age_s = 1"), "gpio.toml")
    out = tmp_path / "calibration.toml"
    outcome, written = calibrate(site, out, show=lambda line: None)
    assert written == out and not outcome.failed
    assert tomllib.loads(out.read_text())["answers"]["gpio.k1_coil.cycle"] == {"no_vehicle": True}
    answers = tmp_path / "answers.toml"
    answers.write_text('[gpio.k1_coil.cycle]\nno_vehicle = "no"\n')
    outcome, written = calibrate(site, tmp_path / "other.toml", str(answers), show=lambda line: None)
    (step_, verdict), = outcome.failed
    assert written is None and verdict.code == "ERR_CALIBRATION_CONTACTOR"
    assert "not confirmed free of a vehicle" in verdict.detail


def test_a_gpio_wired_ports_test_charge_sees_its_feedback_and_a_weld(tmp_path):
    """The packaged depot with one port's contactor on GPIO lines: the meter step's test charge
    reads the line's level (the loop takes it straight into its input, not through the exchange)."""
    text = resources.files("v2g_rt.data").joinpath("default-site.toml").read_text()
    site = config.parse(text + CONTACTOR_LINES.replace('"e1.1"', '"evse01.1"'), "depot-gpio.toml")
    shown = []
    outcome, written = calibrate(site, tmp_path / "c.toml", show=shown.append)
    assert written is not None, [(s.id, v.detail) for s, v in outcome.failed]
    at = shown.index(next(line for line in shown if "port evse01.1: 2 kW test charge" in line))
    assert "contactor closed and opened with its feedback" in shown[at + 1]
    assert any(line.strip().startswith("ok: open, closed, open: the feedback followed each") for line in shown)
    outcome, written = calibrate(site, tmp_path / "w.toml", inject="welded-contactor", show=lambda line: None)
    failed = {s.id: v for s, v in outcome.failed}
    assert written is None and {k: v.code for k, v in failed.items()} == {
        "gpio.k1_coil.cycle": "ERR_CALIBRATION_CONTACTOR",
        "meter.grid.sign": "ERR_CALIBRATION_METER", "port.evse01.1.phase": "ERR_CALIBRATION_METER"}
    # the latched weld keeps the port from its test charge, and the meter steps say so
    assert failed["port.evse01.1.phase"].detail.endswith("port faults: contactor (ERR_CONTACTOR_MISMATCH)")
