"""I2C sensors: exact register values, failures counted, stale.

The dev backend is read by the native I/O thread with real i2c-dev ioctls, in the kernel-test
guest on i2c-stub, its registers set by i2cset (i2c-tools) as a TMP117 and an INA228 would hold
them. The sim backend, everywhere, is a sensor served on the Python side: the same decoder and
scaling, the same gate, the same counters, over the simulated chips' register files.
"""
import errno
import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers import BACKENDS, IN_GUEST
from v2g_rt import Controller, config
from v2g_rt.devices import DeviceError
from v2g_rt.sim.peers import attach
from v2g_rt.devices.i2c import I2C_SLAVE

S = 1_000_000_000
SITE = """
[site]
name = "i2c-test"
[rt]
priority = 0
lock_memory = false
cpu_dma_latency_us = -1
[node.grid]
kind = "grid"
import_limit_w = 1e6
export_limit_w = 1e6
meter_max_age_s = 5
[node.tx1]
kind = "transformer"
parent = "grid"
import_limit_w = 1e6
export_limit_w = 1e6
[node.tx1.thermal]
rated_w = 500000
ambient_max_age_s = 5
[node.e1]
kind = "evse"
parent = "tx1"
port_max_charge_w = 11000
[i2c.ambient]
backend = "{backend}"
bus = {bus}
address = 0x48
sensor = "tmp117"
source = "node/tx1/ambient_c"
period_ms = 100
[i2c.meter]
backend = "{backend}"
bus = {bus}
address = 0x40
sensor = "ina228"
quantity = "power"
source = "node/grid/power_w"
period_ms = 100
max_current_a = 100
shunt_ohms = 0.002
scale = 1000
"""
TMP117_C = 25.5          # 0x0CC0 at 7.8125 mC/LSB
POWER_RAW = 0x01E240     # INA228 POWER register: 123456 LSB


def stub_bus() -> int:
    for name in sorted(Path("/sys/class/i2c-dev").glob("i2c-*/name")):
        if "SMBus stub" in name.read_text():
            return int(name.parent.name.removeprefix("i2c-"))
    raise AssertionError("no i2c-stub adapter in the guest")


def i2cset(bus, addr, reg, value, mode):
    subprocess.run(["i2cset", "-y", str(bus), hex(addr), hex(reg), *value, mode], check=True)


def expected_power_w():
    return POWER_RAW * 3.2 * (100 / 2**19) * 1000


def setup_far_side(backend, bus):
    """Chip registers as the real chips hold them (MSB first)."""
    if backend == "dev":
        i2cset(bus, 0x48, 0x0F, ["0x1701"], "w")          # TMP117 device ID 0x0117, sent MSB first
        i2cset(bus, 0x48, 0x00, ["0xC00C"], "w")          # 25.5 C = 0x0CC0
        i2cset(bus, 0x40, 0x3E, ["0x4954"], "w")          # INA228 manufacturer "TI"
        i2cset(bus, 0x40, 0x08, ["0x01", "0xE2", "0x40"], "i")


@pytest.fixture(params=BACKENDS["i2c"])
def rig(request):
    backend = request.param
    bus = stub_bus() if backend == "dev" else 1
    setup_far_side(backend, bus)
    site = config.parse(SITE.format(backend=backend, bus=bus), "i2c-test.toml")
    yield backend, bus, site


def far_values(devices):
    if devices.i2c_peer:
        devices.i2c_peer.set_value("node/tx1/ambient_c", TMP117_C)
        devices.i2c_peer.set_value("node/grid/power_w", expected_power_w())


def stepped(site):
    """A virtual-time controller with its sensors attached, stepped once and read once."""
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    far_values(devices)
    ctrl.step(S)
    ctrl.poll_io()
    return ctrl, devices


def test_virtual_time_reads_exact_register_values(rig):
    backend, bus, site = rig
    ctrl, devices = stepped(site)                      # the schedule spreads the two sensors
    ctrl.step(S + 60_000_000)                          # over their 100 ms period
    ctrl.poll_io()
    ctrl.step(S + 60_001_000)
    snap = ctrl.snapshot()
    assert snap.node("grid")["measured_w"] == pytest.approx(expected_power_w(), rel=1e-12)
    stats = ctrl.device_stats()["i2c"]
    assert [s["errors"] for s in stats] == [0, 0] and all(s["reads"] >= 1 for s in stats)
    assert {s["mode"] for s in stats} == {"smbus" if backend == "dev" else "python"}   # i2c-stub: SMBus only
    # the ambient feeds the transformer model: 10 K warmer air, a 10 K warmer hot spot
    before = snap.node("tx1")["temperature_c"]
    assert TMP117_C < before < TMP117_C + 20
    if backend == "dev":
        i2cset(bus, 0x48, 0x00, ["0xC011"], "w")          # 35.5 C = 0x11C0
    else:
        devices.i2c_peer.set_value("node/tx1/ambient_c", TMP117_C + 10)
    ctrl.step(S + 160_000_000)
    ctrl.poll_io()
    ctrl.step(S + 160_000_001)
    assert ctrl.snapshot().node("tx1")["temperature_c"] == pytest.approx(before + 10, abs=1e-3)
    devices.close()


def test_io_thread_reads_on_schedule_while_the_loop_runs(rig):
    backend, bus, site = rig
    ctrl = Controller(site)
    devices = attach(ctrl, site)
    far_values(devices)
    ctrl.start()
    try:
        time.sleep(0.5)
        snap = ctrl.snapshot()
        stats = ctrl.device_stats()
    finally:
        ctrl.stop()
        devices.close()
    assert snap.node("grid")["measured_w"] == pytest.approx(expected_power_w(), rel=1e-12)
    if backend == "dev":
        assert stats["io_thread_tid"] not in (0, ctrl.rt_report["loop_tid"])
    else:                                                # served on the Python side: no native I/O thread
        assert stats["io_thread_tid"] == 0
    reads = [s["reads"] for s in stats["i2c"]]
    assert all(2 <= r <= 8 for r in reads), reads        # 100 ms periods over 0.5 s: on schedule, no burst


def test_failed_transfers_are_counted_and_the_value_goes_stale(rig):
    backend, bus, site = rig
    ctrl, devices = stepped(site)
    if backend == "sim":
        devices.i2c_peer.nack.add(0x40)                    # the meter stops answering
    else:  # point the meter's fd at an address where no chip answers
        fcntl.ioctl(devices.i2c[1].handle.fd, I2C_SLAVE, 0x51)
    for k in range(1, 70):
        ctrl.step(S + k * 100_000_000)
        ctrl.poll_io()
    snap = ctrl.snapshot()
    meter = ctrl.device_stats()["i2c"][1]
    # a NACK is ENXIO or EREMOTEIO on real adapters, ENODEV on i2c-stub; ENXIO from the sim chips
    assert meter["errors"] >= 60
    assert meter["last_errno"] in ((errno.ENXIO, errno.EREMOTEIO, errno.ENODEV) if backend == "dev" else (errno.ENXIO,))
    assert snap.node("grid")["measured_w"] != snap.node("grid")["measured_w"]   # stale: NaN
    assert snap.site["binding"] == "stale_meter" or snap.node("grid")["binding"] != 0
    devices.close()


def test_missing_bus_names_the_device_and_the_remedy():
    site = config.parse(SITE.format(backend="dev", bus=99), "t.toml")
    with pytest.raises(DeviceError) as e:
        attach(Controller(site, clock="virtual"), site)
    assert "/dev/i2c-99 does not exist" in str(e.value) and "modprobe i2c-dev" in str(e.value)


if IN_GUEST:
    def test_wrong_chip_is_refused():
        bus = stub_bus()
        i2cset(bus, 0x48, 0x0F, ["0x3412"], "w")
        site = config.parse(SITE.format(backend="dev", bus=bus), "t.toml")
        with pytest.raises(DeviceError) as e:
            attach(Controller(site, clock="virtual"), site)
        assert "is not a tmp117" in str(e.value) and "0x1234" in str(e.value)

    def test_preempt_rt_kernel_is_reported():
        site = config.parse(SITE.format(backend="sim", bus=1), "t.toml")
        ctrl = Controller(site)
        devices = attach(ctrl, site)
        report = ctrl.start()
        ctrl.stop()
        devices.close()
        assert report["preempt_rt"] is True and os.uname().release.endswith("-rt-amd64")


def test_a_tmp117_that_has_not_converted_yet_is_not_a_temperature(rig):
    """0x8000 (-256 C) is the TMP117's power-on value: it once became the transformer ambient and
    held the hot-spot derate off. Counted as not ready, never published; the ambient stays stale."""
    backend, bus, site = rig
    if backend == "dev":
        i2cset(bus, 0x48, 0x00, ["0x0080"], "w")          # 0x8000, MSB first
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    if devices.i2c_peer:
        with devices.i2c_peer.lock:
            devices.i2c_peer.regs[0x48][0x00] = b"\x80\x00"
    for k in range(1, 4):
        ctrl.step(k * S)
        ctrl.poll_io()
    tmp117 = next(s for s in ctrl.device_stats()["i2c"] if s["address"] == 0x48)
    devices.close()
    assert tmp117["reads"] >= 3 and tmp117["not_ready"] == tmp117["reads"] and tmp117["gate_rejected"] == 0
    assert ctrl.snapshot().node("tx1")["faults"], "the ambient is stale: worst case assumed"


def test_virtual_time_reads_each_sensor_once_per_period(rig):
    """Polled every 10 ms for 1 s, each 100 ms sensor is read exactly 10 times, and the same
    counts come again: the reads follow virtual time, not the machine."""
    backend, bus, site = rig
    counts = []
    for _ in range(2):
        ctrl, devices = stepped(site)                  # read once at S: the first sensor is due at once
        for k in range(1, 101):
            ctrl.step(S + k * 10_000_000)
            ctrl.poll_io()
        counts.append([s["reads"] for s in ctrl.device_stats()["i2c"]])
        devices.close()
    assert counts[0] == counts[1] == [11, 10]


def test_a_sensor_owns_its_source(rig):
    """measure() cannot overwrite what the sensor reads: refused and counted by the gate."""
    backend, bus, site = rig
    ctrl, devices = stepped(site)
    ctrl.step(S + 60_000_000)                          # the meter's first read is half a period in
    ctrl.poll_io()
    verdict = ctrl.measure("node/grid/power_w", 1.0)
    assert verdict.code == "ERR_MEAS_DEVICE_OWNED" and "read directly from i2c" in verdict.reason
    ctrl.step(S + 60_001_000)
    assert ctrl.snapshot().node("grid")["measured_w"] == pytest.approx(expected_power_w(), rel=1e-12)
    assert ctrl.stats()["rejected_by_source"]["node/grid/power_w"] == {"ERR_MEAS_DEVICE_OWNED": 1}
    devices.close()


def test_below_zero_the_tmp117_reads_twos_complement(rig):
    backend, bus, site = rig
    if backend == "dev":
        i2cset(bus, 0x48, 0x00, ["0xC0F9"], "w")          # -12.5 C = -1600 LSB = 0xF9C0, MSB first
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    if devices.i2c_peer:
        devices.i2c_peer.set_value("node/tx1/ambient_c", -12.5)
        assert devices.i2c_peer.regs[0x48][0x00] == b"\xf9\xc0"
    ctrl.step(S)
    ctrl.poll_io()
    ctrl.step(S + 1000)
    devices.close()
    tmp117 = next(s for s in ctrl.device_stats()["i2c"] if s["address"] == 0x48)
    assert tmp117["reads"] == 1 and tmp117["gate_rejected"] == tmp117["not_ready"] == 0
    assert -12.5 <= ctrl.snapshot().node("tx1")["temperature_c"] < 10  # a cold transformer, not -256 C or +499 C


def test_the_native_core_makes_only_real_transfers():
    """I2C_RDWR and SMBus ioctls; there is no simulated wire protocol in the native core."""
    site = config.parse(SITE.format(backend="sim", bus=1), "t.toml")
    ctrl = Controller(site, clock="virtual")
    with pytest.raises(ValueError, match="bad I2C sensor"):
        ctrl.add_i2c_sensor(0, 0x48, 2, 0x00, 2, 0, "node/tx1/ambient_c", 0.0078125, 0.1)


def test_a_reading_the_gate_refuses_is_counted(rig):
    """100 C is no ambient air (its range ends at 80 C): read, decoded, refused by the gate, counted."""
    backend, bus, site = rig
    if backend == "dev":
        i2cset(bus, 0x48, 0x00, ["0x0032"], "w")          # 100 C = 12800 LSB = 0x3200, MSB first
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    if devices.i2c_peer:
        devices.i2c_peer.set_value("node/tx1/ambient_c", 100.0)
    ctrl.step(S)
    ctrl.poll_io()
    devices.close()
    tmp117 = next(s for s in ctrl.device_stats()["i2c"] if s["address"] == 0x48)
    assert tmp117["reads"] == tmp117["gate_rejected"] == 1
    assert ctrl.stats()["rejected_by_source"]["node/tx1/ambient_c"] == {"ERR_MEAS_BAD_VALUE": 1}
