"""The direct-wired control pilot (IEC 61851-1): a port's current limit becomes a duty through the
one map, written to a pwmchip through the PWM sysfs interface by the native I/O thread (here a
sysfs-shaped directory whose far side plays the chip: no guest here has a PWM chip), read back;
the CP voltage sampled by the SPI ADC gates the PWM and the contactor. Virtual time, except the
last tests (the real-time I/O thread and safe-outputs)."""
import errno
import logging
import subprocess
import sys
from importlib import resources

import pytest

from helpers import MS, NORMAL_PRIORITY
from v2g_rt import _core, config
from v2g_rt.controller import Controller
from v2g_rt.faults import FaultWatch
from v2g_rt.pilot import pilot_current, pilot_duty
from v2g_rt.sim.peers import attach

LEVELS = {"A": 12.0, "B": 9.0, "C": 6.0, "D": 3.0, "E": 0.0, "F": -12.0}
PERIOD = 1_000_000


def example_text():
    return resources.files("v2g_rt.data").joinpath("examples/direct-wired.toml").read_text()


class Rig:
    """The example site in virtual time; the test plays the vehicles: each step it puts on each
    CP the level of its state, and while the chip drives a PWM, the low level its diode gives.
    The ports' contactors are the GPIO far side's, polled each step."""

    def __init__(self, text=None):
        self.site = config.parse(text or example_text(), "direct-wired.toml")
        self.ctrl = Controller(self.site, clock="virtual")
        self.devices = attach(self.ctrl, self.site)
        self.adcs, self.chips, self.contactors = self.devices.spi_peer, self.devices.pwm_peer, self.devices.gpio_peer
        self.chips.by_hand()                 # the chips answer when the test says (deterministic)
        self.state = {p.id: "A" for p in self.site.ports}
        self.diode = {p.id: True for p in self.site.ports}

    def step(self, n=1, dt=10 * MS):
        for _ in range(n):
            for pid, state in self.state.items():
                duty = self.chips.duty(pid)
                high = LEVELS[state]
                if duty is None or duty >= 100.0 or state in "AEF":
                    self.adcs.set_cp(f"port/{pid}/cp_v", high)
                else:
                    self.adcs.set_cp(f"port/{pid}/cp_v", high, -12.0 if self.diode[pid] else -high, duty / 100)
            t = self.ctrl.now_ns() + dt
            self.ctrl.step(t)
            self.ctrl.poll_io()
            self.chips.serve()
            self.contactors.poll(t)              # the ports' GPIO contactors follow their coils

    def port(self, pid):
        return self.ctrl.snapshot().port(pid)

    def pwm(self, pid):
        return next(d for d in self.ctrl.device_stats()["pwm"] if d["port"] == pid)

    def close(self):
        self.devices.close()


@pytest.fixture
def rig():
    r = Rig()
    r.step(20)
    yield r
    r.close()


def faults(rig, pid):
    bits = int(rig.port(pid)["faults"])
    return {name for name, bit in _core.FAULTS.items() if bits & bit}


def test_no_vehicle_the_pilot_is_a_steady_12_v_and_read_back(rig):
    for p in rig.site.ports:
        assert rig.chips.exported(p.id) and rig.chips.duty(p.id) == 100.0
        d = rig.pwm(p.id)
        assert d["readback_ns"] == PERIOD and d["exports"] == 1 and d["write_errors"] == d["mismatches"] == 0
        assert not rig.port(p.id)["connected"] and not rig.port(p.id)["contactor_closed"] and not faults(rig, p.id)


def test_a_vehicle_in_b_gets_a_pwm_and_in_c_its_contactor(rig):
    rig.state["wb1.1"] = "B"
    rig.step(50)
    row = rig.port("wb1.1")
    assert row["connected"] and row["setpoint_w"] > 0 and not row["contactor_closed"]   # B: never closed
    amps = row["setpoint_w"] / 690.0
    assert rig.pwm("wb1.1")["readback_ns"] == _core.pilot_duty_to_ns(pilot_duty(amps), PERIOD)
    assert rig.chips.duty("wb1.1") < 100.0 and not faults(rig, "wb1.1")
    rig.state["wb1.1"] = "C"
    rig.step(100)
    row = rig.port("wb1.1")
    assert row["contactor_closed"] and 22000 - 0.06 * 690 <= row["setpoint_w"] <= 22000     # a 0.1 % step: 0.06 A
    ns = rig.pwm("wb1.1")["readback_ns"]
    assert pilot_current(100.0 * ns / PERIOD) <= row["setpoint_w"] / 690.0 + 1e-9     # never more than given
    assert rig.chips.duty("wb2.1") == 100.0 and not rig.port("wb2.1")["connected"]      # the others untouched
    rig.state["wb1.1"] = "B"                                                          # the EV pauses
    rig.step(2)
    assert not rig.port("wb1.1")["contactor_closed"]


@pytest.mark.parametrize("state", ["E", "F"])
def test_states_e_and_f_stop_the_port(rig, state):
    rig.state["wb1.1"] = "C"
    rig.step(100)
    assert rig.port("wb1.1")["contactor_closed"]
    rig.state["wb1.1"] = state
    rig.step(3)                               # one CP read (20 ms) and the cycle that follows
    assert "pilot" in faults(rig, "wb1.1")
    row = rig.port("wb1.1")
    assert not row["contactor_closed"] and row["setpoint_w"] == 0.0
    assert rig.chips.duty("wb1.1") == 100.0


def test_a_pwm_without_the_diode_stops_the_port_for_the_session(rig):
    rig.diode["wb1.2"] = False
    rig.state["wb1.2"] = "B"
    rig.step(60)
    assert "cp_diode" in faults(rig, "wb1.2")
    assert rig.chips.duty("wb1.2") == 100.0 and rig.port("wb1.2")["setpoint_w"] == 0.0
    rig.state["wb1.2"] = "C"
    rig.step(20)
    assert "cp_diode" in faults(rig, "wb1.2") and not rig.port("wb1.2")["contactor_closed"]
    rig.state["wb1.2"] = "A"                  # the vehicle leaves: the next one starts clean
    rig.diode["wb1.2"] = True
    rig.step(5)
    assert not faults(rig, "wb1.2")


def test_a_voltage_between_states_is_counted_never_data(rig):
    rig.state["wb2.1"] = "C"
    rig.step(100)
    accepted = dict(zip(rig.ctrl.sources, rig.ctrl._core.gate_stats()))["port/wb2.1/cp_v"][0]
    rig.adcs.set_cp("port/wb2.1/cp_v", 10.4)
    for _ in range(70):                       # the test's vehicle no longer drives the CP
        t = rig.ctrl.now_ns() + 10 * MS
        rig.ctrl.step(t)
        rig.ctrl.poll_io()
        rig.chips.serve()
    spi = next(s for s in rig.ctrl.device_stats()["spi"] if s["name"] == "spi.cp.wb2_1")
    assert spi["between_states"] >= 30
    assert dict(zip(rig.ctrl.sources, rig.ctrl._core.gate_stats()))["port/wb2.1/cp_v"][0] == accepted
    assert "pilot" in faults(rig, "wb2.1") and not rig.port("wb2.1")["contactor_closed"]   # stale after 0.5 s


def test_a_stuck_adc_stops_every_pilot_it_samples(rig):
    rig.state["wb1.1"] = "C"
    rig.step(100)
    rig.adcs.stuck.add("cp")
    rig.step(60)
    assert all("pilot" in faults(rig, p.id) for p in rig.site.ports)
    assert not rig.port("wb1.1")["contactor_closed"] and rig.chips.duty("wb1.1") == 100.0


def test_a_refused_write_is_counted_coded_and_retried(rig, caplog):
    watch = FaultWatch(rig.ctrl)
    rig.chips.refuse("wb1.1")
    rig.state["wb1.1"] = "B"
    rig.step(30)
    d = rig.pwm("wb1.1")
    assert d["write_errors"] >= 2 and d["last_errno"] == errno.EISDIR
    with caplog.at_level(logging.ERROR, logger="v2g_rt"):
        watch.poll()
    assert any("ERR_PWM_WRITE" in r.getMessage() and "pwm" in r.getMessage() for r in caplog.records)
    rig.chips.restore("wb1.1")
    rig.step(30)
    assert rig.pwm("wb1.1")["readback_ns"] == rig.pwm("wb1.1")["duty_ns"] < PERIOD


def test_a_missing_file_is_counted_and_the_channel_exported_again(rig):
    rig.chips.lose("wb1.2", "")                # the channel unexported under us
    rig.state["wb1.2"] = "B"
    rig.step(30)
    d = rig.pwm("wb1.2")
    assert d["write_errors"] >= 1 and d["exports"] == 2
    assert d["readback_ns"] == d["duty_ns"] < PERIOD


def test_a_readback_that_disagrees_is_counted_coded_and_written_again(rig, caplog):
    watch = FaultWatch(rig.ctrl)
    rig.chips.hold("wb2.1", 500_000)
    rig.step(3)
    assert rig.pwm("wb2.1")["mismatches"] >= 1
    with caplog.at_level(logging.ERROR, logger="v2g_rt"):
        watch.poll()
    assert any("ERR_PWM_READBACK" in r.getMessage() for r in caplog.records)
    before = rig.pwm("wb2.1")["writes"]
    rig.chips.hold("wb2.1", None)
    rig.step(3)
    assert rig.pwm("wb2.1")["writes"] > before and rig.chips.duty("wb2.1") == 100.0


def test_a_stop_leaves_every_pilot_at_100_percent(rig):
    rig.state["wb1.1"] = "C"
    rig.step(100)
    assert rig.chips.duty("wb1.1") < 100.0
    rig.ctrl.stop()
    assert all(rig.chips.duty(p.id) == 100.0 for p in rig.site.ports)


def test_the_real_time_io_thread_writes_the_pilots_and_their_safe_duty_at_stop():
    import dataclasses
    site = config.parse(example_text(), "direct-wired.toml")
    site = dataclasses.replace(site, rt=NORMAL_PRIORITY)
    ctrl = Controller(site)
    devices = attach(ctrl, site)
    try:
        ctrl.start()
        import time
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(d["readbacks"] for d in ctrl.device_stats()["pwm"]):
            time.sleep(0.02)
        sched = ctrl.io_schedule_stats()
        assert sched["tid"] not in (0, ctrl.rt_report["loop_tid"])
        assert {j["kind"] for j in sched["jobs"]} == {"pwm"} and all(j["runs"] >= 2 for j in sched["jobs"])
        ctrl.stop()
        duties = [devices.pwm_peer.duty(p.id) for p in site.ports]
        assert duties == [100.0] * len(site.ports), (duties, ctrl.device_stats()["pwm"])
    finally:
        if ctrl.running:
            ctrl.stop()
        devices.close()


def test_safe_outputs_names_each_pilot_it_cannot_reach(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(example_text().replace('backend = "sim"\nchip = 1', 'backend = "sysfs"\nchip = 41'))
    r = subprocess.run([sys.executable, "-P", "-m", "v2g_rt.cli", "safe-outputs", "--config", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "ERR_PWM_WRITE" in r.stderr and "[pwm.wb2_1] port wb2.1" in r.stderr and "pwmchip41" in r.stderr
    path.write_text(example_text())
    r = subprocess.run([sys.executable, "-P", "-m", "v2g_rt.cli", "safe-outputs", "--config", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "3 simulated pilots" in r.stdout


def test_a_pwm_port_needs_its_channel_and_a_cp_channel():
    text = example_text()
    cut = text.index("[pwm.wb2_1]")
    text = text[:cut] + text[text.index("# One ADS8688"):]
    text = text.replace('[spi.cp.wb1_2]\nchannel = 1\nkind = "cp"\ndivider = 2.0\nsource = "port/wb1.2/cp_v"\n', "")
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, "dw.toml")
    msg = str(e.value)
    assert "[node.wb2] link" in msg and "port wb2.1 has no PWM channel" in msg
    assert "[node.wb1] link" in msg and "nothing samples port wb1.2's control pilot" in msg


def test_a_pwm_channel_on_a_port_of_another_link_is_refused():
    text = example_text().replace('port = "wb2.1"', 'port = "wb9.1"')
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, "dw.toml")
    assert "[pwm.wb2_1] port" in str(e.value) and "'wb9.1' is not a port" in str(e.value)


def test_a_pwm_link_without_a_pilot_is_refused():
    text = example_text().replace('link = "pwm"                # pilot = true follows', 'link = "pwm"\npilot = false  #', 1)
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, "dw.toml")
    assert "[node.wb1] pilot" in str(e.value) and "ERR_CONFIG_DEVICE" in str(e.value)


def test_the_cycle_never_writes_sysfs_itself(rig):
    """The write stage only stores the duty: with the I/O jobs not polled, nothing reaches the chip."""
    rig.state["wb1.1"] = "B"
    rig.step(30)
    written = rig.pwm("wb1.1")["writes"]
    for _ in range(50):
        rig.ctrl.step(rig.ctrl.now_ns() + 10 * MS)
    assert rig.pwm("wb1.1")["writes"] == written
