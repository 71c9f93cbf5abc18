"""The SPI ADC ([spi.NAME], ADS8688): config, the frames and their conversion (the native code,
on the real path and for the sim far side), NAMUR NE 43 on 4-20 mA, a stuck transfer, and the
native I/O thread's SPI job against a descriptor that is no spidev (no guest here has an SPI
controller: the ioctl path's success is proven only against the simulated far side)."""
import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import MS, S
from v2g_rt import _core, config
from v2g_rt.config import ConfigError
from v2g_rt.controller import Controller
from v2g_rt.devices import spi
from v2g_rt.sim.peers import attach

SITE = """
[site]
name = "spi-test"
period_ms = 1.0
[node.grid]
kind = "grid"
import_limit_w = 100000
export_limit_w = 100000
[node.tx1]
kind = "transformer"
parent = "grid"
import_limit_w = 100000
export_limit_w = 100000
[node.tx1.thermal]
rated_w = 100000
ambient_max_age_s = 5
top_oil_max_age_s = 5
[node.evse1]
kind = "evse"
parent = "tx1"
port_max_charge_w = 11000
[spi.adc1]
backend = "sim"
period_ms = 100
[spi.adc1.oil]
channel = 0
kind = "4-20mA"
shunt_ohms = 250
range = [-40, 160]
source = "node/tx1/top_oil_c"
{oil_extra}
[spi.adc1.ambient]
channel = 3
kind = "0-10V"
divider = 1.0
range = [-50, 50]
source = "node/tx1/ambient_c"
"""


def site(oil_extra=""):
    return config.parse(SITE.format(oil_extra=oil_extra), "spi-test.toml")


@pytest.fixture
def rig():
    s = site()
    ctrl = Controller(s, clock="virtual")
    devices = attach(ctrl, s)
    yield ctrl, devices.spi_peer
    devices.close()


def run(ctrl, until_ns):
    """Step and poll the I/O jobs every 10 ms up to until_ns."""
    t = max(ctrl.now_ns(), 0)
    while t < until_ns:
        t += 10 * MS
        ctrl.step(t)
        ctrl.poll_io()
    ctrl.step(t + MS)


def values(ctrl):
    stats = ctrl.device_stats()["spi"]
    return {s["name"].rsplit(".", 1)[1]: s for s in stats}


def test_both_channels_read_their_values_through_the_native_conversion(rig):
    ctrl, adcs = rig
    adcs.set_value("node/tx1/top_oil_c", 61.0)
    adcs.set_value("node/tx1/ambient_c", 12.5)
    run(ctrl, S)
    gate = dict(zip(ctrl.sources, ctrl._core.gate_stats()))
    assert gate["node/tx1/top_oil_c"][0] >= 9 and gate["node/tx1/ambient_c"][0] >= 9
    oil, amb = values(ctrl)["oil"], values(ctrl)["ambient"]
    assert oil["reading"] == pytest.approx(4 + 16 * 101 / 200, abs=2e-3)      # mA, 16-bit over 10.24 V
    assert amb["reading"] == pytest.approx(6.25, abs=2e-3)                     # V
    assert oil["errors"] == oil["wire_break"] == oil["over_range"] == 0


@pytest.mark.parametrize("ma,counter", [(0.0, "wire_break"), (3.6, "wire_break"), (21.0, "over_range"),
                                        (23.0, "over_range")])
def test_namur_ne43_faults_leave_the_value_stale_and_are_counted(rig, ma, counter):
    ctrl, adcs = rig
    adcs.set_value("node/tx1/top_oil_c", 61.0)
    run(ctrl, S)
    accepted = dict(zip(ctrl.sources, ctrl._core.gate_stats()))["node/tx1/top_oil_c"][0]
    adcs.set_current_ma("node/tx1/top_oil_c", ma)
    run(ctrl, 2 * S)
    oil = values(ctrl)["oil"]
    assert oil[counter] >= 9
    assert dict(zip(ctrl.sources, ctrl._core.gate_stats()))["node/tx1/top_oil_c"][0] == accepted


def test_just_inside_namur_limits_is_data(rig):
    ctrl, adcs = rig
    for ma in (3.7, 20.9):
        adcs.set_current_ma("node/tx1/top_oil_c", ma)
        before = values(ctrl)["oil"]
        run(ctrl, ctrl.now_ns() + S)
        after = values(ctrl)["oil"]
        assert after["wire_break"] == before["wire_break"] and after["over_range"] == before["over_range"]
        assert after["gate_rejected"] == 0


def test_a_stuck_transfer_is_counted_and_publishes_nothing(rig):
    ctrl, adcs = rig
    adcs.set_value("node/tx1/top_oil_c", 61.0)
    run(ctrl, S)
    accepted = dict(zip(ctrl.sources, ctrl._core.gate_stats()))["node/tx1/top_oil_c"][0]
    adcs.stuck.add("adc1")
    run(ctrl, 2 * S)
    oil = values(ctrl)["oil"]
    assert oil["errors"] >= 9 and oil["last_errno"] == errno.ETIMEDOUT
    assert dict(zip(ctrl.sources, ctrl._core.gate_stats()))["node/tx1/top_oil_c"][0] == accepted
    adcs.stuck.clear()
    run(ctrl, 3 * S)
    assert dict(zip(ctrl.sources, ctrl._core.gate_stats()))["node/tx1/top_oil_c"][0] > accepted


def test_calibration_corrects_the_reading_before_range_and_namur():
    s = site("gain = 1.02\noffset = -0.1")
    ctrl = Controller(s, clock="virtual")
    devices = attach(ctrl, s)
    try:
        devices.spi_peer.set_current_ma("node/tx1/top_oil_c", 12.0)
        code, value, _, _, reading = _core.spi_value(
            _core.SPI_KINDS["4-20mA"], _core.SPI_RANGES["0-10.24V"], 0, 4, 250.0, -40.0, 160.0, 1.02, -0.1,
            devices.spi_peer.transfer("adc1", _core.spi_frames(0, 4)))
        assert code == 0 and reading == pytest.approx(12.0, abs=2e-3)
        assert value == pytest.approx(-40 + (12.0 * 1.02 - 0.1 - 4) / 16 * 200, abs=0.05)
    finally:
        devices.close()


def test_the_frames_select_the_channel_and_each_answer_comes_one_frame_later():
    tx = _core.spi_frames(5, 3)
    assert tx == bytes([0xD4, 0, 0, 0]) * 4           # MAN_Ch_5 = 0xC000 | 5 << 10
    rx = bytearray(16)
    for k, code in enumerate((0x1111, 0x8000, 0x8000, 0x8000)):
        rx[4 * k + 2:4 * k + 4] = code.to_bytes(2, "big")
    # the first frame's result belongs to an earlier selection: never part of the value
    code, value, *_ = _core.spi_value(_core.SPI_KINDS["0-10V"], _core.SPI_RANGES["0-10.24V"], 5, 3, 1.0, 0.0, 100.0,
                                      1.0, 0.0, bytes(rx))
    assert code == 0 and value == pytest.approx(51.2)


@given(st.floats(4.0, 20.0), st.sampled_from([100.0, 250.0, 400.0]))
def test_a_4_20ma_signal_round_trips_within_one_lsb(ma, shunt):
    s = site().sections["spi"][0].channels[0]
    ch = spi.SpiChannelConfig(**{**s.__dict__, "ratio": shunt})
    from v2g_rt.sim.peers.spi import SimAdcs
    adcs = SimAdcs([ch])
    adcs.set_current_ma(ch.source, ma)
    code, value, _, _, reading = _core.spi_value(
        0, _core.SPI_RANGES[ch.adc_range], ch.channel, ch.samples, shunt, ch.at_lo, ch.at_hi, 1.0, 0.0,
        adcs.transfer(ch.adc, _core.spi_frames(ch.channel, ch.samples)))
    lsb_ma = 10.24 / 65536 / shunt * 1e3
    assert abs(reading - ma) <= lsb_ma
    assert code == (1 if reading <= 3.6 else 0)


def test_native_spi_job_on_a_descriptor_that_is_no_spidev_counts_the_errno(tmp_path):
    """The native path's own failure branch: the I/O thread's SPI_IOC_MESSAGE ioctl on /dev/null
    fails (ENOTTY) as a stuck controller's would (ETIMEDOUT): counted, nothing published."""
    import os
    s = site()
    s.sections.pop("spi")
    ctrl = Controller(s, clock="virtual")
    ch = site().sections["spi"][0].channels[0]
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        ctrl.add_spi_channel(fd, ch, 1_000_000)
        run(ctrl, S)
        st_ = ctrl.device_stats()["spi"][0]
        assert st_["errors"] >= 9 and st_["reads"] == 0 and st_["last_errno"] == errno.ENOTTY
        assert dict(zip(ctrl.sources, ctrl._core.gate_stats()))["node/tx1/top_oil_c"][0] == 0
        sched = ctrl.io_schedule_stats()
        assert [j["kind"] for j in sched["jobs"]] == ["spi"] and sched["jobs"][0]["runs"] == st_["errors"]
    finally:
        os.close(fd)


@pytest.mark.parametrize("extra,option,fragment", [
    ("kind = \"4-20mA\"\nchannel = 1\nsource = \"node/tx1/ambient_c\"", "range", "value at 4 mA"),
    ("kind = \"0-20mA\"\nchannel = 1\nrange = [0, 1]\nsource = \"node/tx1/ambient_c\"", "kind", "'4-20mA'"),
    ("kind = \"4-20mA\"\nchannel = 0\nrange = [0, 1]\nsource = \"node/tx1/ambient_c\"", "channel", "also"),
    ("kind = \"4-20mA\"\nchannel = 1\nshunt_ohms = 480\nrange = [0, 1]\nsource = \"node/tx1/ambient_c\"",
     "shunt_ohms", "10.24 V"),
    ("kind = \"cp\"\nchannel = 1\nsource = \"node/tx1/ambient_c\"", "source", "a cp input"),
    ("kind = \"4-20mA\"\nchannel = 1\nrange = [0, 1]\nsource = \"node/tx1/ambient_c\"\nscale = 2", "scale",
     "not valid"),
])
def test_config_errors_name_file_section_and_option(extra, option, fragment):
    ambient = '[spi.adc1.ambient]\nchannel = 3\nkind = "0-10V"\ndivider = 1.0\nrange = [-50, 50]\nsource = "node/tx1/ambient_c"'
    text = SITE.format(oil_extra="").replace(ambient, f"[spi.adc1.bad]\n{extra}")
    assert "[spi.adc1.bad]" in text
    with pytest.raises(ConfigError) as e:
        config.parse(text, "spi-test.toml")
    lines = [line for line in str(e.value).splitlines() if "[spi.adc1.bad]" in line and f"] {option}:" in line]
    assert lines and "spi-test.toml" in lines[0] and fragment in lines[0], str(e.value)


def test_the_packaged_site_has_a_4_20ma_and_a_0_10v_channel_on_real_sources():
    s = config.load()
    kinds = {ch.kind: ch.source for ch in spi.channels(s)}
    assert set(kinds) >= {"4-20mA", "0-10V"}
    assert all(src in s.source_kinds() for src in kinds.values())
