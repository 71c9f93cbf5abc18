"""GPIO contactors: feedback edges drained by the loop's read stage, drive set by its write stage.

The chardev backend runs in the kernel-test guest against gpio-sim (built out of tree by
hw/vm/build-gpio-sim): a chip made through configfs, its feedback lines pulled through the
gpio-sim sysfs `pull` attribute (the kernel then delivers a real edge event to our line request)
and our drive lines read back through `value`. The sim backend, everywhere, is the contactor far
side of v2g_rt.sim.peers.gpio behind pipes carrying the same records. Deadlines in cycles of
virtual time.
"""
import os
import select
import uuid
from pathlib import Path

import pytest

from helpers import BACKENDS, GPIO_SITE, IN_GUEST
from v2g_rt import Controller, config
from v2g_rt._core import FAULTS as FAULT_BITS
from v2g_rt.devices import DeviceError
from v2g_rt.devices.gpio import request_line
from v2g_rt.sim.peers import attach

MS = 1_000_000
CONFIGFS = Path("/sys/kernel/config/gpio-sim")
FEEDBACK, DRIVE, FEEDBACK2, DRIVE2 = 3, 1, 5, 6       # offsets on the simulated chip
SITE = GPIO_SITE + """
[gpio.k1_feedback]
backend = "{backend}"
chip = "{chip}"
line = "k1-aux"
role = "contactor_feedback"
port = "e1.1"
[gpio.k1_coil]
backend = "{backend}"
chip = "{chip}"
line = 1
role = "contactor_drive"
port = "e1.1"
[gpio.k2_feedback]
backend = "{backend}"
chip = "{chip}"
line = 5
role = "contactor_feedback"
port = "e1.2"
debounce_ms = 3
active_low = true
[gpio.k2_coil]
backend = "{backend}"
chip = "{chip}"
line = 6
role = "contactor_drive"
port = "e1.2"
drive = "io-thread"
active_low = true
"""


class GpioSimChip:
    """A gpio-sim chip made through configfs: 8 lines, line 3 named k1-aux."""

    def __init__(self):
        self.dir = CONFIGFS / f"v2g-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir()
        bank = self.dir / "bank0"
        bank.mkdir()
        (bank / "num_lines").write_text("8")
        (bank / "label").write_text(self.dir.name)
        (bank / f"line{FEEDBACK}").mkdir()
        (bank / f"line{FEEDBACK}" / "name").write_text("k1-aux")
        (self.dir / "live").write_text("1")
        self.label = self.dir.name
        chip = (bank / "chip_name").read_text().strip()
        self.sysfs = Path("/sys/devices/platform") / (self.dir / "dev_name").read_text().strip() / chip

    def pull(self, offset: int, up: bool) -> None:
        (self.sysfs / f"sim_gpio{offset}" / "pull").write_text("pull-up" if up else "pull-down")

    def value(self, offset: int) -> int:
        return int((self.sysfs / f"sim_gpio{offset}" / "value").read_text())

    def remove(self) -> None:
        (self.dir / "live").write_text("0")
        (self.dir / "bank0" / f"line{FEEDBACK}").rmdir()
        (self.dir / "bank0").rmdir()
        self.dir.rmdir()


class Far:
    """The contactor side of either backend: set the auxiliary contact's physical level, read the
    coil's physical level."""

    def __init__(self, backend, devices, chip):
        self.backend, self.devices, self.chip = backend, devices, chip

    def feedback(self, port: str, closed_physical: bool) -> None:
        offset = {"e1.1": FEEDBACK, "e1.2": FEEDBACK2}[port]
        if self.chip:
            self.chip.pull(offset, closed_physical)
            line = next(ln for ln in self.devices.gpio if ln.cfg.port == port and ln.cfg.feedback)
            assert select.select([line.fd], [], [], 5.0)[0], "the kernel delivered no edge event"
        else:
            active_low = port == "e1.2"
            self.devices.gpio_peer.contactors[port].edge(closed_physical != active_low, 0)

    def coil(self, port: str) -> int:
        """The drive line's physical level."""
        if self.chip:
            return self.chip.value({"e1.1": DRIVE, "e1.2": DRIVE2}[port])
        c = self.devices.gpio_peer.contactors[port]
        c.poll(0)
        return int(c.coil != (port == "e1.2"))


@pytest.fixture(params=BACKENDS["gpio"])
def rig(request):
    backend = request.param
    chip = GpioSimChip() if backend == "chardev" else None
    if chip:
        chip.pull(FEEDBACK2, True)             # k2's contact is active low: high is open
    site = config.parse(SITE.format(backend=backend, chip=chip.label if chip else "sim"), "gpio-test.toml")
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    ctrl.step(1000 * MS)
    yield ctrl, Far(backend, devices, chip)
    devices.close()
    if chip:
        chip.remove()


def faults(ctrl, port):
    return int(ctrl.snapshot().port(port)["faults"])


def plug(ctrl, port):
    ctrl.measure(f"port/{port}/connected", 1.0)
    ctrl.run_steps(1)
    assert ctrl.snapshot().port(port)["contactor_closed"]


def test_drive_follows_the_command_and_feedback_keeps_it_closed(rig):
    ctrl, far = rig
    assert far.coil("e1.1") == 0 and far.coil("e1.2") == 1          # requested open (e1.2 active low)
    plug(ctrl, "e1.1")
    assert far.coil("e1.1") == 1                                      # set in the same cycle's write
    far.feedback("e1.1", True)
    ctrl.run_steps(100)                                               # well past the 10 ms settle time
    assert not faults(ctrl, "e1.1") & FAULT_BITS["contactor"]
    inp = ctrl.device_stats()["gpio"]["inputs"][0]
    assert inp["level"] == 1 and inp["events"] >= 1
    assert ctrl.device_stats()["gpio"]["outputs"][0]["sets"] == 1     # only on change


def test_a_contactor_that_drops_open_latches_within_two_cycles(rig):
    ctrl, far = rig
    plug(ctrl, "e1.1")
    far.feedback("e1.1", True)
    ctrl.run_steps(50)
    far.feedback("e1.1", False)                                       # the edge: it opened by itself
    for cycles in (1, 2):
        ctrl.run_steps(1)
        if faults(ctrl, "e1.1") & FAULT_BITS["contactor"]:
            break
    assert faults(ctrl, "e1.1") & FAULT_BITS["contactor"], "no latch within 2 cycles of the edge"
    assert far.coil("e1.1") == 0                                      # and the coil is released


def test_no_feedback_after_closing_latches_at_the_settle_time(rig):
    ctrl, far = rig
    plug(ctrl, "e1.1")                                                # the contactor never follows
    ctrl.run_steps(9)
    assert not faults(ctrl, "e1.1") & FAULT_BITS["contactor"]
    ctrl.run_steps(2)
    assert faults(ctrl, "e1.1") & FAULT_BITS["contactor"]


def test_io_thread_drive_and_active_low_feedback(rig):
    ctrl, far = rig
    plug(ctrl, "e1.2")
    ctrl.poll_io()                                                    # the I/O thread's turn (virtual time)
    assert far.coil("e1.2") == 0                                      # closed = logical 1 = low
    far.feedback("e1.2", False)                                       # active low: closed
    ctrl.run_steps(50)
    assert not faults(ctrl, "e1.2") & FAULT_BITS["contactor"]
    assert ctrl.device_stats()["gpio"]["inputs"][1]["level"] == 1


if IN_GUEST:                 # gpio-sim exists only in the kernel-test guest
    def test_the_level_before_any_edge_is_read_at_start():
        """A contact already closed at start (active high, pulled up) is known in the first cycle and
        disagrees with the open command: latched once the settle time has passed, no edge needed."""
        chip = GpioSimChip()
        try:
            chip.pull(FEEDBACK, True)
            chip.pull(FEEDBACK2, True)
            site = config.parse(SITE.format(backend="chardev", chip=chip.label), "gpio-test.toml")
            ctrl = Controller(site, clock="virtual")
            devices = attach(ctrl, site)
            ctrl.step(1000 * MS)
            inputs = ctrl.device_stats()["gpio"]["inputs"]
            assert inputs[0]["level"] == 1 and inputs[0]["events"] == 0
            assert inputs[1]["level"] == 0                       # active low, high: open
            assert faults(ctrl, "e1.1") & FAULT_BITS["contactor"]
            assert not faults(ctrl, "e1.2") & FAULT_BITS["contactor"]
            devices.close()
        finally:
            chip.remove()


    def test_a_busy_line_is_named():
        chip = GpioSimChip()
        try:
            site = config.parse(SITE.format(backend="chardev", chip=chip.label), "gpio-test.toml")
            cfg = site.sections["gpio"][0]
            fd, initial, _ = request_line(cfg)
            try:
                with pytest.raises(DeviceError, match=r"ERR_GPIO_LINE: \[gpio.k1_feedback\] line 3 .* busy"):
                    request_line(cfg)
            finally:
                os.close(fd)
            missing = config.parse(SITE.format(backend="chardev", chip="no-such-chip"), "gpio-test.toml")
            with pytest.raises(DeviceError, match=r"ERR_GPIO_LINE: \[gpio.k1_feedback\] no GPIO chip 'no-such-chip'"):
                request_line(missing.sections["gpio"][0])
        finally:
            chip.remove()

    def test_safe_outputs_request_each_drive_line_open_and_name_the_ones_not_reached(tmp_path):
        import subprocess
        import sys
        from v2g_rt.devices.gpio import safe_outputs
        chip = GpioSimChip()
        try:
            text = SITE.format(backend="chardev", chip=chip.label)
            site = config.parse(text, "gpio-test.toml")
            coils = [cfg for cfg in site.sections["gpio"] if not cfg.feedback]
            held = [request_line(cfg)[0] for cfg in coils]          # what safe_outputs requests
            assert chip.value(DRIVE) == 0 and chip.value(DRIVE2) == 1     # open; k2 is active low
            (tmp_path / "site.toml").write_text(text)
            r = subprocess.run([sys.executable, "-P", "-m", "v2g_rt.cli", "safe-outputs", "--config",
                                str(tmp_path / "site.toml")], capture_output=True, text=True, timeout=60)
            assert r.returncode == 1
            assert "ERR_GPIO_LINE" in r.stderr and "[gpio.k1_coil]" in r.stderr and "[gpio.k2_coil]" in r.stderr
            assert "busy" in r.stderr
            for fd in held:
                os.close(fd)
            assert safe_outputs(site) == "2 contactor drive lines opened: k1_coil (e1.1), k2_coil (e1.2)"
        finally:
            chip.remove()
