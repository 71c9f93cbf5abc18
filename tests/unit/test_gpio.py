"""GPIO contactors on the sim backend, in virtual time: config errors, bounce, bad records, a far
side that goes away, the plant leaving GPIO-wired contactors to their far side. The same paths
against a real kernel (gpio-sim) are in tests/kernel/test_native_gpio.py."""
import os

import pytest

from helpers import GPIO_SITE
from v2g_rt import Controller, config
from v2g_rt._core import FAULTS
from v2g_rt.config import ConfigError
from v2g_rt.sim.peers import attach
from v2g_rt.sim.peers.gpio import EVENT

MS = 1_000_000
BASE = GPIO_SITE
LINES = """
[gpio.k1_aux]
backend = "sim"
line = 0
role = "contactor_feedback"
port = "e1.1"
debounce_ms = {debounce}
[gpio.k1_coil]
backend = "sim"
line = 1
role = "contactor_drive"
port = "e1.1"
"""


def rig(debounce=3, settle_s=0.01):
    base = BASE.replace("contactor_settle_s = 0.01", f"contactor_settle_s = {settle_s}")
    site = config.parse(base + LINES.format(debounce=debounce), "gpio-unit.toml")
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    ctrl.step(1000 * MS)
    return ctrl, devices, devices.gpio_peer.contactors["e1.1"]


def latched(ctrl):
    return bool(int(ctrl.snapshot().port("e1.1")["faults"]) & FAULTS["contactor"])


def closed_and_settled(ctrl, contactor):
    ctrl.measure("port/e1.1/connected", 1.0)
    ctrl.run_steps(1)
    contactor.edge(True, 0)
    ctrl.run_steps(20)
    assert not latched(ctrl)


def problems(text):
    with pytest.raises(ConfigError) as e:
        config.parse(BASE + text, "site.toml")
    return str(e.value)


def test_config_errors_name_file_section_and_option():
    out = problems('[gpio.a]\nbackend = "sim"\nline = 0\nrole = "contactor_feedback"\nport = "e9.1"\n')
    assert "site.toml" in out and "[gpio.a]" in out and "port" in out and "'e9.1' is not a port" in out
    out = problems('[gpio.a]\nbackend = "sim"\nline = -1\nrole = "contactor_drive"\nport = "e1.1"\ndebounce_ms = 2\n')
    assert "line offset" in out and "only a contactor_feedback line is debounced" in out
    out = problems('[gpio.a]\nbackend = "sim"\nline = 0\nrole = "contactor_feedback"\nport = "e1.1"\ndrive = "loop"\n'
                   '[gpio.b]\nbackend = "sim"\nline = 1\nrole = "contactor_feedback"\nport = "e1.1"\n')
    assert "only a contactor_drive line is driven" in out and "already has a contactor_feedback line" in out
    out = problems('[gpio.a]\nbackend = "gpiod"\nline = 0\nrole = "relay"\nport = "e1.1"\nspeed = 3\n')
    assert "backend" in out and "role" in out and "speed" in out
    no_fb = BASE.replace("contactor_feedback = true\n", "")
    with pytest.raises(ConfigError, match=r"set \[node.e1\] contactor_feedback = true"):
        config.parse(no_fb + '[gpio.a]\nbackend = "sim"\nline = 0\nrole = "contactor_feedback"\nport = "e1.1"\n', "s")


def test_a_feedback_line_owns_its_source():
    ctrl, devices, _ = rig()
    verdict = ctrl.measure("port/e1.1/contactor", 1.0)
    assert not verdict and verdict.code == "ERR_MEAS_DEVICE_OWNED"
    devices.close()


def test_bounce_is_counted_never_data():
    ctrl, devices, contactor = rig(debounce=3)
    closed_and_settled(ctrl, contactor)
    for _ in range(4):                       # the contact rings open and back inside the debounce time
        contactor.edge(False, 0)
        ctrl.run_steps(1)
        contactor.edge(True, 0)
        ctrl.run_steps(1)
    ctrl.run_steps(5)
    stats = ctrl.device_stats()["gpio"]["inputs"][0]
    assert stats["bounces"] == 4 and stats["level"] == 1
    assert not latched(ctrl)
    devices.close()


def test_a_debounced_drop_latches_within_debounce_plus_two_cycles():
    ctrl, devices, contactor = rig(debounce=3)
    closed_and_settled(ctrl, contactor)
    contactor.edge(False, 0)
    cycles = 0
    while not latched(ctrl) and cycles < 10:
        ctrl.run_steps(1)
        cycles += 1
    assert cycles <= 3 + 2, cycles
    devices.close()


def test_bad_records_are_counted():
    ctrl, devices, contactor = rig()
    closed_and_settled(ctrl, contactor)
    os.write(contactor.feedback_fd, EVENT.pack(0, 7, 0, 99, 99))        # no edge id
    ctrl.run_steps(1)
    os.write(contactor.feedback_fd, b"\x01" * 20)                       # a partial record
    ctrl.run_steps(1)
    os.write(contactor.feedback_fd, EVENT.pack(0, 1, 0, 10, 10))        # a rising edge after 7 lost
    ctrl.run_steps(1)
    stats = ctrl.device_stats()["gpio"]["inputs"][0]
    assert stats["bad_events"] == 2 and stats["level"] == 1
    assert stats["lost"] == 10 - 2 - 1
    assert not latched(ctrl)
    devices.close()


def test_a_far_side_that_goes_away_leaves_the_feedback_stale_and_latches():
    ctrl, devices, contactor = rig()
    closed_and_settled(ctrl, contactor)
    os.close(contactor.feedback_fd)
    contactor.feedback_fd = -1
    devices.gpio_peer.far.lines = [(c, fd) for c, fd in devices.gpio_peer.far.lines if c.feedback is False]
    ctrl.run_steps(1)
    assert ctrl.device_stats()["gpio"]["inputs"][0]["level"] is None
    ctrl.run_steps(60)                                                   # contactor_max_age_s: 50 ms
    assert latched(ctrl)
    devices.close()


def test_the_simulated_contactor_follows_its_coil_and_can_weld():
    ctrl, devices, contactor = rig(debounce=0, settle_s=0.1)
    ctrl.measure("port/e1.1/connected", 1.0)
    t = ctrl.now_ns()
    for k in range(30):                       # the far side polled as the plant does, 1 ms apart
        ctrl.run_steps(1)
        contactor.poll(ctrl.now_ns())
    assert contactor.coil and not contactor.closed      # its 50 ms settle time has not passed
    while ctrl.now_ns() < t + 80 * MS:
        ctrl.run_steps(1)
        contactor.poll(ctrl.now_ns())
    assert contactor.closed and not latched(ctrl)
    contactor.weld()
    ctrl.measure("port/e1.1/connected", 0.0)            # unplugged: the command opens
    while ctrl.now_ns() < t + 300 * MS:
        ctrl.run_steps(1)
        contactor.poll(ctrl.now_ns())
    assert not contactor.coil and contactor.closed and latched(ctrl)
    devices.close()


def test_safe_outputs_on_the_sim_backend_name_each_drive_line():
    from v2g_rt.devices.gpio import safe_outputs
    site = config.parse(BASE + LINES.format(debounce=0), "gpio-unit.toml")
    assert safe_outputs(site) == "1 contactor drive lines opened: k1_coil (sim: opens with the simulated contactor)"


def test_bounces_are_logged_with_their_code(caplog):
    from v2g_rt.faults import FaultWatch
    ctrl, devices, contactor = rig(debounce=3)
    watch = FaultWatch(ctrl)
    closed_and_settled(ctrl, contactor)
    watch.poll()
    assert "ERR_GPIO_BOUNCE" not in caplog.text
    contactor.edge(False, 0)
    contactor.edge(True, 0)
    ctrl.run_steps(1)
    watch.poll()
    watch.poll()
    assert caplog.text.count("ERR_GPIO_BOUNCE: [gpio.k1_aux]: 1 bounces so far") == 1
    devices.close()
