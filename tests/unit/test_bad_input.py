"""Bad commands and measurements are rejected with a reason, counted, and change nothing."""
import math

import pytest

from helpers import S, make_site, plug_all
from v2g_rt import Controller, Link


@pytest.fixture
def ctrl():
    c = Controller(make_site(8, links=(Link("dms", 30.0),)), clock="virtual")
    c.step(S)
    plug_all(c, S)
    c.step(2 * S)
    return c


def good(**kw):
    cmd = {"kind": "setpoint", "id": "ok", "value_w": 5000.0, "expires_in_s": 60}
    cmd.update(kw)
    return cmd


BAD_COMMANDS = [
    ({"kind": "discharge_everything", "id": 1, "value_w": 1.0, "expires_in_s": 1}, "ERR_CMD_UNKNOWN_KIND"),
    ({"id": 1, "value_w": 1.0, "expires_in_s": 1}, "ERR_CMD_UNKNOWN_KIND"),
    ("setpoint -5000", "ERR_CMD_BAD_FIELD"),
    (good(value_w=math.nan), "ERR_CMD_BAD_FIELD"),
    (good(value_w=math.inf), "ERR_CMD_BAD_FIELD"),
    (good(value_w=-math.inf), "ERR_CMD_BAD_FIELD"),
    (good(value_w="5000"), "ERR_CMD_BAD_FIELD"),
    (good(value_w=True), "ERR_CMD_BAD_FIELD"),
    (good(value_w=2e9), "ERR_CMD_BAD_FIELD"),
    (good(kind="export_limit", value_w=-10.0), "ERR_CMD_BAD_FIELD"),
    (good(kind="load_shed", value_w=math.nan), "ERR_CMD_BAD_FIELD"),
    (good(id=None), "ERR_CMD_BAD_FIELD"),
    (good(id=-4), "ERR_CMD_BAD_FIELD"),
    (good(id=""), "ERR_CMD_BAD_FIELD"),
    (good(id="x" * 129), "ERR_CMD_BAD_FIELD"),
    (good(id=1.5), "ERR_CMD_BAD_FIELD"),
    (good(colour="red"), "ERR_CMD_BAD_FIELD"),
    ({"kind": "setpoint", "id": 2, "value_w": 1.0}, "ERR_CMD_BAD_FIELD"),          # no expiry
    (good(expires_ns=3 * S), "ERR_CMD_BAD_FIELD"),                                # two expiries
    (good(expires_in_s=math.nan), "ERR_CMD_BAD_FIELD"),
    (good(expires_in_s=30 * 86400), "ERR_CMD_BAD_FIELD"),                         # too far ahead
    (good(expires_in_s=-1), "ERR_CMD_EXPIRED"),
    ({"kind": "setpoint", "id": 3, "value_w": 1.0, "expires_ns": S}, "ERR_CMD_EXPIRED"),
    ({"kind": "setpoint", "id": 3, "value_w": 1.0, "expires_at": 0.0}, "ERR_CMD_EXPIRED"),
    (good(port="evse001.1"), "ERR_CMD_BAD_FIELD"),                                # site-wide kind
    ({"kind": "reset_fault", "id": 4, "port": 99, "expires_in_s": 5}, "ERR_CMD_BAD_PORT"),
    ({"kind": "reset_fault", "id": 4, "port": -1, "expires_in_s": 5}, "ERR_CMD_BAD_PORT"),
    ({"kind": "reset_fault", "id": 4, "port": "evse999.1", "expires_in_s": 5}, "ERR_CMD_BAD_PORT"),
    ({"kind": "reset_fault", "id": 4, "expires_in_s": 5}, "ERR_CMD_BAD_PORT"),
    ({"kind": "cancel", "id": 5, "of": "reset_fault", "expires_in_s": 5}, "ERR_CMD_BAD_FIELD"),
    ({"kind": "cancel", "id": 5, "expires_in_s": 5}, "ERR_CMD_BAD_FIELD"),
]


@pytest.mark.parametrize("cmd,code", BAD_COMMANDS)
def test_bad_command_is_rejected_with_its_code_and_changes_nothing(ctrl, cmd, code):
    before = ctrl.snapshot().site
    verdict = ctrl.submit(cmd)
    assert not verdict and verdict.code == code, verdict
    assert verdict.reason                       # says what was wrong
    ctrl.step(3 * S)
    after = ctrl.snapshot().site
    assert after["commands_applied"] == before["commands_applied"]
    assert ctrl.stats()["commands"] == {code: 1}
    assert ctrl.submit(good(id="after")), "the controller still takes good commands"


def test_replayed_id_is_a_no_op(ctrl):
    assert ctrl.submit(good(id="a", value_w=-20_000.0))
    ctrl.step(3 * S)
    assert ctrl.snapshot().site["setpoint_w"] == -20_000.0
    assert ctrl.submit(good(id="b", value_w=10_000.0))
    ctrl.step(4 * S)
    replay = ctrl.submit(good(id="a", value_w=-20_000.0))
    assert replay.code == "ERR_CMD_REPLAYED"
    ctrl.step(5 * S)
    site = ctrl.snapshot().site
    assert site["setpoint_w"] == 10_000.0      # the replay did not bring the old setpoint back
    assert site["commands_applied"] == 2
    assert ctrl.submit(good(id=7)) and ctrl.submit(good(id="7")), "int 7 and str '7' are different ids"


def test_full_ring_rejects_then_recovers_without_losing_the_id(ctrl):
    ring = 256
    for k in range(ring):
        assert ctrl.submit(good(id=k))
    full = ctrl.submit(good(id="late"))
    assert full.code == "ERR_CMD_QUEUE_FULL"
    ctrl.step(3 * S)                            # the loop drains the ring
    assert ctrl.snapshot().site["commands_applied"] == ring
    assert ctrl.submit(good(id="late")), "a command rejected for a full ring may be sent again"


def test_command_expiring_in_the_ring_is_not_applied(ctrl):
    assert ctrl.submit(good(id="short", value_w=-30_000.0, expires_in_s=0.5))
    ctrl.step(3 * S)                            # 1 s later: expired before the loop saw it
    site = ctrl.snapshot().site
    assert math.isnan(site["setpoint_w"])
    assert site["commands_expired"] == 1


BAD_MEASUREMENTS = [
    ("port/evse999.1/soc", 0.5, None, "ERR_MEAS_UNKNOWN_SOURCE"),
    ("port/evse001.1/colour", 0.5, None, "ERR_MEAS_UNKNOWN_SOURCE"),
    (10_000, 0.5, None, "ERR_MEAS_UNKNOWN_SOURCE"),
    ("port/evse001.1/soc", math.nan, None, "ERR_MEAS_BAD_VALUE"),
    ("port/evse001.1/soc", math.inf, None, "ERR_MEAS_BAD_VALUE"),
    ("port/evse001.1/soc", 1.5, None, "ERR_MEAS_BAD_VALUE"),
    ("port/evse001.1/soc", -0.1, None, "ERR_MEAS_BAD_VALUE"),
    ("port/evse001.1/soc", "half", None, "ERR_MEAS_BAD_VALUE"),
    ("port/evse001.1/capacity_wh", 0.0, None, "ERR_MEAS_BAD_VALUE"),
    ("grid/frequency_hz", 500.0, None, "ERR_MEAS_BAD_VALUE"),
    ("node/grid/power_w", -math.inf, None, "ERR_MEAS_BAD_VALUE"),
    ("port/evse001.1/soc", 0.6, 3 * S, "ERR_MEAS_FUTURE"),
    ("port/evse001.1/soc", 0.6, S // 2, "ERR_MEAS_OUT_OF_ORDER"),
]


@pytest.mark.parametrize("source,value,t_ns,code", BAD_MEASUREMENTS)
def test_bad_measurement_is_rejected_and_the_value_kept(ctrl, source, value, t_ns, code):
    before = ctrl.snapshot()
    verdict = ctrl.measure(source, value, t_ns)
    assert not verdict and verdict.code == code, verdict
    assert verdict.reason
    ctrl.step(2 * S + 1000)
    after = ctrl.snapshot()
    assert after.site["measurements_applied"] == before.site["measurements_applied"]
    assert after.port("evse001.1")["soc"] == 0.5
    assert ctrl.stats()["measurements"][code] == 1


def test_latest_measurement_wins(ctrl):
    src = "port/evse001.1/soc"
    assert ctrl.measure(src, 0.61, 2 * S)
    assert ctrl.measure(src, 0.62, 2 * S)          # same stamp: latest arrival wins
    ctrl.step(3 * S)
    assert ctrl.snapshot().port("evse001.1")["soc"] == 0.62
    assert ctrl.measure(ctrl.source_index(src), 0.63, 3 * S)
    ctrl.step(4 * S)
    assert ctrl.snapshot().port("evse001.1")["soc"] == 0.63
