"""[mqtt] encoding = "protobuf": the schema (hw/mqtt/v2g_rt.proto), its committed generated module,
and every topic's message against the JSON encoding of the same body."""
import json
import pathlib
import subprocess
import sys

import pytest

from helpers import make_site, plug_all
from v2g_rt import Controller
from v2g_rt.services.mqtt import protobuf, reports
from v2g_rt.services.mqtt import v2g_rt_pb2 as pb
from v2g_rt.services.mqtt.commands import Commands
from v2g_rt.services.mqtt.outbox import Outbox

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO = REPO / "hw" / "mqtt" / "v2g_rt.proto"
GENERATED = REPO / "v2g_rt" / "services" / "mqtt" / "v2g_rt_pb2.py"
T = 1_764_720_000.0426


def test_the_committed_module_is_what_the_schema_generates(tmp_path):
    # the command that made it (README, "MQTT"), run from the repository's root
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={tmp_path}",
                    str(PROTO)], check=True)
    assert (tmp_path / "v2g_rt_pb2.py").read_text() == GENERATED.read_text(), \
        "v2g_rt_pb2.py is stale: regenerate it from hw/mqtt/v2g_rt.proto (README, MQTT)"
    assert pb.__file__.endswith("v2g_rt_pb2.py")     # the installed package carries it


def both(topic, body, seq=7, replaced=0, epoch_s=T):
    """(the JSON message, the protobuf message decoded to the JSON's dict, its size)."""
    payload = protobuf.encode(topic, body, seq, epoch_s, replaced)
    return json.loads(reports.encode(body, seq, epoch_s, replaced)), protobuf.decode(topic, payload), payload


def reports_of_a_busy_site():
    ctrl = Controller(make_site(4, meter=False), clock="virtual")
    plug_all(ctrl, 0)
    assert ctrl.submit({"id": 1, "kind": "setpoint", "value_w": -6000, "expires_in_s": 600})
    assert ctrl.submit({"id": 2, "kind": "disable_port", "port": ctrl.port_ids[3], "expires_in_s": 600})
    for k in range(1, 4):
        ctrl.step(k * 10_000_000)
    snap = ctrl.snapshot()
    return reports.state(snap), reports.evses(snap, ctrl.site)


def test_state_and_evse_say_in_protobuf_what_they_say_in_json():
    state, evses = reports_of_a_busy_site()
    assert state["soc"] is not None and state["setpoint_w"] == -6000 and any(
        p["faults"] for e in evses.values() for p in e["ports"].values())
    idle = Controller(make_site(2, meter=False), clock="virtual")    # nothing plugged: nulls everywhere
    idle.step(10_000_000)
    quiet = reports.state(idle.snapshot())
    assert quiet["soc"] is None
    for topic, body in [("state", state), ("state", quiet), *((f"evse/{k}", v) for k, v in evses.items())]:
        as_json, as_pb, payload = both(topic, body)
        assert as_pb == as_json, topic
        assert len(payload) < len(reports.encode(body, 7, T)) / 2, topic


def test_a_coalesced_state_keeps_its_replaced_count():
    state, _ = reports_of_a_busy_site()
    as_json, as_pb, _ = both("state", state, seq=12, replaced=3)
    assert as_pb == as_json and as_pb["replaced"] == 3 and pb.State.FromString(
        protobuf.encode("state", state, 12, T, 3)).replaced == 3
    assert "replaced" not in both("state", state)[1]


@pytest.mark.parametrize("topic, body", [
    ("events", {"code": "ERR_PORT_OUT_OF_SERVICE", "level": "warning", "message": "ERR_PORT_OUT_OF_SERVICE: port x"}),
    ("availability", {"status": "online"}),
    ("availability", {"status": "offline"}),
    ("cmd/reply", {"id": "sp-1", "accepted": True, "code": None, "reason": None}),
    ("cmd/reply", {"id": None, "accepted": False, "code": "ERR_MQTT_BAD_MESSAGE", "reason": "not a Command"}),
])
def test_every_other_report_round_trips(topic, body):
    as_json, as_pb, _ = both(topic, body, seq=2**40)
    assert as_pb == as_json


def test_text_protobuf_cannot_carry_is_escaped_not_fatal():
    body = {"code": "ERR_X", "level": "error", "message": "open /var/lib/v2g-rt/\udcff.toml"}
    got = protobuf.decode("events", protobuf.encode("events", body, 1, T))
    assert got["message"] == "open /var/lib/v2g-rt/\\udcff.toml"
    state = {"safe_state": ["upstream\udcff"], "binding": "none"}
    assert protobuf.decode("state", protobuf.encode("state", state, 1, T))["safe_state"] == ["upstream\\udcff"]


def test_ts_is_the_json_instant_in_ms():
    for epoch_s in (0.0, T, 1_764_720_000.043, 1_764_720_000.9995, 4_102_444_800.001):
        msg = pb.Availability.FromString(protobuf.encode("availability", {"status": "online"}, 1, epoch_s))
        assert msg.ts == reports.epoch_ms(epoch_s)
        assert reports.timestamp_ms(msg.ts) == json.loads(reports.encode({}, 1, epoch_s))["ts"]
    assert reports.timestamp(1_764_720_000.043) == "2025-12-03T00:00:00.043Z"    # not .042 from the float


def test_the_outbox_coalesces_protobuf_states(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", 1 << 20)
    state, _ = reports_of_a_busy_site()
    for k in range(4):
        box.add("state", lambda seq, replaced: protobuf.encode("state", state, seq, T, replaced), retain=True)
    (row,) = box.after(0, 10)
    assert protobuf.decode("state", row.payload)["replaced"] == 3 and pb.State.FromString(row.payload).seq == 4


def command(**fields):
    return pb.Command(**fields).SerializeToString()


def test_commands_decode_to_the_json_command_and_are_judged_by_the_controller(tmp_path):
    cmd = {"id": "sp-9", "kind": "setpoint", "value_w": 500.0, "expires_in_s": 60.0}
    assert protobuf.command(command(**cmd)) == cmd                 # absent fields are not keys, as in JSON
    reset = {"id": "r", "kind": "reset_fault", "port": "e1.1", "latch_seq": 2**64 - 1, "expires_at": 1e9}
    assert protobuf.command(command(**reset)) == reset
    assert protobuf.command(command(kind="cancel", of="setpoint", value_w=0.0))["value_w"] == 0.0   # present

    ctrl = Controller(make_site(2, meter=False), clock="virtual")
    ctrl.step(1_000_000)
    cmds = Commands(ctrl, Outbox(tmp_path / "o.sqlite", 1 << 20), "mqtt", wall=lambda: 1000.0, decode=protobuf.command)
    assert cmds.handle(command(**cmd), False) == {"id": "sp-9", "accepted": True, "code": None, "reason": None}
    assert cmds.handle(command(**cmd), False)["accepted"] is True and ctrl.stats()["commands"] == {"accepted": 1}
    assert cmds.handle(command(id="k", kind="setpoint", value_w=1.0), False)["code"] == "ERR_CMD_BAD_FIELD"
    assert cmds.handle(command(id="u", kind="fly"), False)["code"] == "ERR_CMD_UNKNOWN_KIND"
    kept = cmds.handle(command(id="kept", kind="setpoint", value_w=1.0, expires_in_s=9.0), True)
    assert kept["id"] == "kept" and kept["code"] == "ERR_MQTT_RETAINED_CMD"
    for bad, why in [(json.dumps(cmd).encode(), "not a Command protobuf"),
                     (b"\xff\xff\xff", "not a Command protobuf"),
                     (command(kind="setpoint") + b"\xa0\x06\x01", "unknown field number(s) 100"),
                     (b"\x0a\x02\xc3\x28", "not a Command protobuf"),                   # id not UTF-8
                     (b"", "an empty message"),
                     (command(id="x" * 5000), "a command is at most 4096 bytes")]:
        answer = cmds.handle(bad, False)
        assert (answer["id"], answer["accepted"], answer["code"]) == (None, False, "ERR_MQTT_BAD_MESSAGE"), bad
        assert why in answer["reason"], answer
    assert cmds.counts["ERR_MQTT_BAD_MESSAGE"] == 6 and cmds.counts["accepted"] == 2


def test_reports_queued_before_a_change_of_encoding_leave_in_the_new_one(tmp_path):
    state, evses = reports_of_a_busy_site()
    queued = [("state", state, 3), ("evse/e1", next(iter(evses.values())), 0),
              ("cmd/reply", {"id": 7, "accepted": True, "code": None, "reason": None}, 0),
              ("events", {"code": "ERR_X", "level": "error", "message": "m"}, 0)]
    box = Outbox(tmp_path / "o.sqlite", 1 << 20)
    for topic, body, replaced in queued:                    # JSON, in a file older than the encoding note
        box.add(topic, lambda seq, _, b=body, r=replaced: reports.encode(b, seq, T + seq, r))
    box.db.execute("DELETE FROM meta")
    box.db.execute("INSERT INTO outbox (topic, payload, retain, replaced) VALUES ('events', x'7b7b', 0, 0)")
    before = [json.loads(r.payload) for r in box.after(0, 4)]

    assert box.recode("protobuf", lambda t, p: protobuf.recode(t, p, "protobuf")) == (4, 1)
    rows = box.after(0, 10)
    as_pb = [protobuf.decode(r.topic, r.payload) for r in rows[:4]]
    assert as_pb == [{**m, "id": "7"} if "id" in m else m for m in before] and rows[4].payload == b"{{"
    assert box.bytes == sum(len(r.payload) for r in rows) and box.bytes < sum(len(json.dumps(m)) for m in before)
    assert box.recode("protobuf", None) == (0, 0)          # noted: nothing to do on the next start

    box.close()
    box = Outbox(tmp_path / "o.sqlite", 1 << 20)           # and back, after a restart
    assert box.recode("json", lambda t, p: protobuf.recode(t, p, "json")) == (4, 1)
    assert [json.loads(r.payload) for r in box.after(0, 4)] == [{**m, "id": "7"} if "id" in m else m for m in before]


def test_scheduled_commands_and_cancel_by_id_arrive_in_either_encoding(tmp_path):
    ahead = {"id": "plan-1", "kind": "setpoint", "value_w": -2000.0, "starts_in_s": 30.0, "expires_in_s": 90.0}
    assert protobuf.command(command(**ahead)) == ahead
    at = {"id": "plan-2", "kind": "load_shed", "value_w": 0.0, "starts_at": 1.8e9 + 60, "expires_at": 1.8e9 + 90}
    assert protobuf.command(command(**at)) == at
    ctrl = Controller(make_site(2, meter=False), clock="virtual")
    ctrl.step(1_000_000)
    box = Outbox(tmp_path / "o.sqlite", 1 << 20)
    binary = Commands(ctrl, box, "mqtt", wall=lambda: 1000.0, decode=protobuf.command)
    text = Commands(ctrl, box, "mqtt", wall=lambda: 1000.0)
    assert binary.handle(command(**ahead), False)["accepted"] is True
    assert text.handle(json.dumps({**ahead, "id": "plan-3", "starts_in_s": 40.0}).encode(), False)["accepted"]
    assert text.handle(json.dumps({**ahead, "id": "own", "starts_ns": 10**12}).encode(), False)["code"] == \
        "ERR_CMD_BAD_FIELD"
    ctrl.step(2_000_000)
    assert [c["id"] for c in ctrl.scheduled()] == ["plan-1", "plan-3"]
    assert binary.handle(command(id="c", kind="cancel", of_id="plan-1", expires_in_s=5.0), False)["accepted"]
    ctrl.step(3_000_000)
    assert [c["id"] for c in ctrl.scheduled()] == ["plan-3"]
