"""Bad commands and measurements are rejected with a reason, counted, and change nothing."""
import math

import numpy as np
import pytest

from helpers import S, make_site, plug_all
from v2g_rt import Controller, Upstream
from v2g_rt.wallclock import FixedClock


@pytest.fixture
def ctrl():
    c = Controller(make_site(8, upstreams=(Upstream("dms", 30.0),)), clock="virtual", wall=FixedClock())
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
    # what escaped as exceptions before: every type, every magnitude
    (good(value_w=10**400), "ERR_CMD_BAD_FIELD"),
    (good(value_w=-10**400), "ERR_CMD_BAD_FIELD"),
    (good(expires_in_s=10**400), "ERR_CMD_BAD_FIELD"),
    (good(expires_in_s=-10**400), "ERR_CMD_BAD_FIELD"),
    ({"kind": "setpoint", "id": 6, "value_w": 1.0, "expires_ns": 10**400}, "ERR_CMD_BAD_FIELD"),
    ({"kind": "setpoint", "id": 6, "value_w": 1.0, "expires_ns": -2**63}, "ERR_CMD_EXPIRED"),
    ({"kind": "setpoint", "id": 6, "value_w": 1.0, "expires_at": 1e300}, "ERR_CMD_BAD_FIELD"),
    (good(kind=[1]), "ERR_CMD_UNKNOWN_KIND"),
    (good(kind={"a": 1}), "ERR_CMD_UNKNOWN_KIND"),
    (good(kind=b"setpoint"), "ERR_CMD_UNKNOWN_KIND"),
    (good(value_w=b"5"), "ERR_CMD_BAD_FIELD"),
    (good(value_w=[5]), "ERR_CMD_BAD_FIELD"),
    (good(value_w=1 + 2j), "ERR_CMD_BAD_FIELD"),
    (good(id=[1]), "ERR_CMD_BAD_FIELD"),
    (good(id=2**63), "ERR_CMD_BAD_FIELD"),
    ({**good(), (1, 2): 3}, "ERR_CMD_BAD_FIELD"),
    (good(latch_seq=3), "ERR_CMD_BAD_FIELD"),                                    # not a reset
    ({"kind": "reset_fault", "id": 4, "port": 0, "latch_seq": -1, "expires_in_s": 5}, "ERR_CMD_BAD_FIELD"),
    ({"kind": "reset_fault", "id": 4, "port": 0, "latch_seq": 1.0, "expires_in_s": 5}, "ERR_CMD_BAD_FIELD"),
    ({"kind": "disable_port", "id": 4, "port": "nope", "expires_in_s": 5}, "ERR_CMD_BAD_PORT"),
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
    # what was let through or escaped before
    ("node/grid/power_w", -1e9, -2**63, "ERR_MEAS_TOO_OLD"),       # pandas' NaT as an integer
    ("port/evse001.1/soc", 0.6, -10**12, "ERR_MEAS_TOO_OLD"),
    ("port/evse001.1/soc", 0.6, 2**64, "ERR_MEAS_BAD_TIME"),
    ("port/evse001.1/soc", 0.6, 1.5e9, "ERR_MEAS_BAD_TIME"),
    ("port/evse001.1/soc", 0.6, "now", "ERR_MEAS_BAD_TIME"),
    ("port/evse001.1/soc", 0.6, True, "ERR_MEAS_BAD_TIME"),
    ("port/evse001.1/soc", "0.5", None, "ERR_MEAS_BAD_VALUE"),
    ("port/evse001.1/soc", b"1", None, "ERR_MEAS_BAD_VALUE"),
    ("port/evse001.1/connected", True, None, "ERR_MEAS_BAD_VALUE"),
    ("port/evse001.1/connected", np.bool_(True), None, "ERR_MEAS_BAD_VALUE"),
    ("port/evse001.1/soc", 10**400, None, "ERR_MEAS_BAD_VALUE"),
    ("port/evse001.1/soc", [0.5], None, "ERR_MEAS_BAD_VALUE"),
    ("port/evse001.1/soc", None, None, "ERR_MEAS_BAD_VALUE"),
    (True, 0.5, None, "ERR_MEAS_UNKNOWN_SOURCE"),
    (1.0, 0.5, None, "ERR_MEAS_UNKNOWN_SOURCE"),
    (2**70, 0.5, None, "ERR_MEAS_UNKNOWN_SOURCE"),
    (["x"], 0.5, None, "ERR_MEAS_UNKNOWN_SOURCE"),
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


def test_rejections_are_counted_per_source(ctrl):
    src = "node/grid/power_w"
    ctrl.measure(src, -1e9, -2**63)
    ctrl.measure(src, math.nan)
    assert ctrl.stats()["rejected_by_source"][src] == {"ERR_MEAS_TOO_OLD": 1, "ERR_MEAS_BAD_VALUE": 1}


def test_a_stale_meter_cannot_be_made_fresh_by_its_timestamp(ctrl):
    """The red team's case: -1 GW stamped NaT. Refused; and a value stamped at a real time
    goes stale after its max age, three hours later as one cycle later."""
    assert not ctrl.measure("node/grid/power_w", -1e9, t_ns=-2**63)
    assert ctrl.measure("node/grid/power_w", 5_000.0, t_ns=2 * S)
    ctrl.step(3 * S)
    assert ctrl.snapshot().node("grid")["measured_w"] == 5_000.0
    ctrl.step(3 * 3600 * S)
    assert math.isnan(ctrl.snapshot().node("grid")["measured_w"])


BAD_BATCHES = [
    # (index, value, t_ns, code counted)
    (np.array([2**32]), np.array([0.5]), None, "ERR_MEAS_UNKNOWN_SOURCE"),       # wrapped to 0 before
    (np.array([-1]), np.array([0.5]), None, "ERR_MEAS_UNKNOWN_SOURCE"),
    (np.array([1.7]), np.array([0.5]), None, "ERR_MEAS_UNKNOWN_SOURCE"),         # truncated before
    (np.array([True]), np.array([0.5]), None, "ERR_MEAS_UNKNOWN_SOURCE"),
    (np.array([1]), np.array(["0.5"]), None, "ERR_MEAS_BAD_VALUE"),
    (np.array([1]), np.array([b"1"]), None, "ERR_MEAS_BAD_VALUE"),
    (np.array([1]), np.array([True]), None, "ERR_MEAS_BAD_VALUE"),
    (np.array([1]), np.array([None]), None, "ERR_MEAS_BAD_VALUE"),
    (np.array([1, 2]), np.array([0.5]), None, "ERR_MEAS_BAD_VALUE"),
    (np.array([[1]]), np.array([[0.5]]), None, "ERR_MEAS_BAD_VALUE"),
    ("abc", [0.5], None, "ERR_MEAS_BAD_VALUE"),
    (np.array([1]), np.array([0.5]), -2**63, "ERR_MEAS_TOO_OLD"),
    (np.array([1]), np.array([0.5]), 2**64, "ERR_MEAS_BAD_TIME"),
    (np.array([1]), np.array([0.5]), 0.5, "ERR_MEAS_BAD_TIME"),
]


@pytest.mark.parametrize("index,value,t_ns,code", BAD_BATCHES)
def test_bad_batch_accepts_nothing_and_never_raises(ctrl, index, value, t_ns, code):
    before = ctrl.snapshot().site["measurements_applied"]
    assert ctrl.measure_many(index, value, t_ns) == 0
    ctrl.step(2 * S + 1000)
    assert ctrl.snapshot().site["measurements_applied"] == before
    assert ctrl.stats()["measurements"].get(code, 0) >= 1


def test_a_batch_takes_only_values_inside_each_sources_range(ctrl):
    soc = ctrl.source_index("port/evse001.1/soc")
    freq = ctrl.source_index("grid/frequency_hz")
    assert ctrl.measure_many(np.array([soc, freq], np.int64), np.array([0.7, 500.0]), 2 * S) == 1
    ctrl.step(3 * S)
    snap = ctrl.snapshot()
    assert snap.port("evse001.1")["soc"] == 0.7
    assert math.isnan(snap.site["frequency_hz"])
    assert ctrl.stats()["rejected_by_source"]["grid/frequency_hz"] == {"ERR_MEAS_BAD_VALUE": 1}


def test_expires_at_is_refused_until_the_clock_is_synchronised(caplog):
    caplog.set_level("INFO", logger="v2g_rt")
    wall = FixedClock(synced=False)
    c = Controller(make_site(2), clock="virtual", wall=wall)
    c.step(S)
    c.check_wall_clock()
    assert "system clock not synchronised" in caplog.text
    cmd = {"kind": "setpoint", "id": 1, "value_w": 1000.0, "expires_at": wall.now() + 60}
    assert c.submit(cmd).code == "ERR_CLOCK_UNSYNCED"
    assert c.submit({"kind": "setpoint", "id": 2, "value_w": 1000.0, "expires_in_s": 60}), "relative expiries work"
    wall.synced = True
    c.check_wall_clock()
    assert "system clock synchronised: commands with expires_at are accepted" in caplog.text
    assert c.submit(cmd)


def test_a_clock_step_re_anchors_wall_clock_expiries(caplog):
    wall = FixedClock()
    c = Controller(make_site(2), clock="virtual", wall=wall)
    c.step(S)
    assert c.submit({"kind": "setpoint", "id": 1, "value_w": -3000.0, "expires_at": wall.now() + 600})
    c.step(2 * S)
    assert c.snapshot().site["setpoint_w"] == -3000.0
    wall.offset_s += 3600                 # NTP steps the clock an hour ahead: the expiry is past
    assert c.check_wall_clock() == pytest.approx(3600, abs=1)
    assert "ERR_CLOCK_STEPPED" in caplog.text
    c.step(3 * S)
    assert math.isnan(c.snapshot().site["setpoint_w"])
    assert c.check_wall_clock() is None   # anchored again: no second report


def test_a_full_id_table_never_locks_out_reset_and_cancel(ctrl, monkeypatch):
    import v2g_rt.controller as controller
    monkeypatch.setattr(controller, "MAX_REMEMBERED_IDS", 50)
    for k in range(50):
        assert ctrl.submit(good(id=f"flood{k}", expires_in_s=7 * 86400), source="mqtt")
    assert ctrl.submit(good(id="one-more"), source="mqtt").code == "ERR_CMD_TOO_MANY_IDS"
    assert ctrl.submit(good(id="other-source"), source="ocpp"), "another source keeps its own quota"
    reset = {"kind": "reset_fault", "id": "r1", "port": 0, "expires_in_s": 60}
    assert ctrl.submit(reset, source="mqtt")
    assert ctrl.submit(reset, source="mqtt").code == "ERR_CMD_REPLAYED"
    assert ctrl.submit({"kind": "cancel", "id": "c1", "of": "setpoint", "expires_in_s": 60}, source="mqtt")
