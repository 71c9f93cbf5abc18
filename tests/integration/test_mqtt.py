"""The MQTT service against a real Mosquitto on loopback (tests/mosquitto.py): mutual TLS with a
generated CA, the aggregator played by a paho client with its own certificate. The controller runs
in virtual time, stepped here; Safe State is asserted in virtual time, wall-clock waits only guard
against a hang (broker delivery)."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from importlib import resources

import pytest

from mosquitto import CA, Broker
from v2g_rt import Controller, config
from v2g_rt.faults import FaultWatch
from v2g_rt.services.mqtt import MqttService

STEP_NS = 10_000_000
S = 1_000_000_000
HANG_S = 30.0
PREFIX = "v2g/mqtt-test"

SITE = """
[site]
name = "mqtt-test"
period_ms = 10
[control]
safe_exit_s = 2
session_max_age_s = 3600
[upstream.agg]
timeout_s = 3
[node.grid]
kind = "grid"
import_limit_w = 100000
export_limit_w = 100000
[node.evse01]
kind = "evse"
parent = "grid"
ports = 2
port_max_charge_w = 11000
port_max_discharge_w = 11000
"""


def mqtt_section(broker, ca=None, cert=None, key=None, extra=""):
    if cert is None:
        cert, key = broker.ca.issue("controller")
    return (f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nca = "{ca or broker.ca.path}"\ncert = "{cert}"\n'
            f'key = "{key}"\nupstream = "agg"\n{extra}')


def until(pred, what, step=None):
    end = time.monotonic() + HANG_S
    while not pred():
        assert time.monotonic() < end, f"hung waiting for {what}"
        time.sleep(0.005)
        if step:
            step()


class Rig:
    """A virtual-time controller with its MQTT service, the outbox in tmp_path."""

    def __init__(self, tmp_path, section, site=SITE):
        path = tmp_path / "site.toml"
        path.write_text(site + section)
        self.site = config.load(path)
        self.outbox = tmp_path / "outbox.sqlite"
        self.ctrl = Controller(self.site, clock="virtual")
        self.t = STEP_NS
        self.ctrl.step(self.t)
        self.service = MqttService(self.ctrl, self.site.sections["mqtt"], self.outbox)

    def __enter__(self):
        self.service.start()
        return self

    def __exit__(self, *exc):
        self.service.stop()

    def step(self, n=1):
        for _ in range(n):
            self.t += STEP_NS
            self.ctrl.step(self.t)

    def stats(self):
        return self.service.stats()


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def aggregator(broker):
    c = broker.client()
    c.subscribe(f"{PREFIX}/#", qos=1)
    yield c
    c.loop_stop()
    c.disconnect()


def messages(client, topic):
    return [json.loads(p) for t, p, _ in list(client.received) if t == f"{PREFIX}/{topic}" and p]


def reply_to(client, cmd_id, count=1):
    until(lambda: len([m for m in messages(client, "cmd/reply") if m["id"] == cmd_id]) >= count, f"reply to {cmd_id}")
    return [m for m in messages(client, "cmd/reply") if m["id"] == cmd_id][count - 1]


def send(client, cmd, retain=False):
    payload = cmd if isinstance(cmd, (bytes, str)) else json.dumps(cmd)
    client.publish(f"{PREFIX}/cmd", payload, qos=1, retain=retain).wait_for_publish(10)


def test_commands_are_answered_applied_once_and_bad_ones_rejected(tmp_path, broker, aggregator):
    with Rig(tmp_path, mqtt_section(broker)) as rig:
        until(lambda: rig.stats()["subscribed"], "the subscription")
        send(aggregator, {"id": "sp-1", "kind": "setpoint", "value_w": 6000, "expires_in_s": 600})
        assert reply_to(aggregator, "sp-1") == {**reply_to(aggregator, "sp-1"), "accepted": True, "code": None,
                                                 "reason": None}
        rig.step()
        snap = rig.ctrl.snapshot().site
        assert snap["setpoint_w"] == 6000 and snap["commands_applied"] == 1

        send(aggregator, {"id": "sp-1", "kind": "setpoint", "value_w": -9000, "expires_in_s": 600})    # a replay
        again = reply_to(aggregator, "sp-1", 2)
        assert again["accepted"] is True and again["seq"] > reply_to(aggregator, "sp-1")["seq"]
        rig.step(2)
        assert rig.ctrl.snapshot().site["setpoint_w"] == 6000 and rig.ctrl.snapshot().site["commands_applied"] == 1

        bad = {"bad-kind": {"kind": "discharge_all", "value_w": 1, "expires_in_s": 60},
               "bad-type": {"kind": "setpoint", "value_w": "lots", "expires_in_s": 60},
               "too-big": {"kind": "import_limit", "value_w": 5e12, "expires_in_s": 60},
               "expired": {"kind": "setpoint", "value_w": 1000, "expires_in_s": -5},
               "own-clock": {"kind": "setpoint", "value_w": 1000, "expires_ns": 10**12}}
        for cmd_id, cmd in bad.items():
            send(aggregator, {"id": cmd_id, **cmd})
        codes = {cmd_id: reply_to(aggregator, cmd_id)["code"] for cmd_id in bad}
        assert codes == {"bad-kind": "ERR_CMD_UNKNOWN_KIND", "bad-type": "ERR_CMD_BAD_FIELD",
                         "too-big": "ERR_CMD_BAD_FIELD", "expired": "ERR_CMD_EXPIRED", "own-clock": "ERR_CMD_BAD_FIELD"}
        assert all(reply_to(aggregator, cmd_id)["reason"] for cmd_id in bad)

        send(aggregator, b"{not json")
        send(aggregator, json.dumps({"id": "huge", "kind": "setpoint", "pad": "x" * 10_000}))
        until(lambda: len([m for m in messages(aggregator, "cmd/reply") if m["id"] in (None, "huge")]) >= 2, "2 replies")
        odd = [m for m in messages(aggregator, "cmd/reply") if m["id"] in (None, "huge")]
        assert [m["code"] for m in odd] == ["ERR_MQTT_BAD_MESSAGE"] * 2 and not any(m["accepted"] for m in odd)

        send(aggregator, {"id": "kept", "kind": "setpoint", "value_w": -11000, "expires_in_s": 600}, retain=True)
        assert reply_to(aggregator, "kept")["code"] == "ERR_MQTT_RETAINED_CMD"
        rig.step(2)
        assert rig.ctrl.snapshot().site["setpoint_w"] == 6000
        counts = rig.stats()["commands"]
        assert counts["accepted"] == 2 and counts["ERR_MQTT_BAD_MESSAGE"] == 2 and counts["ERR_MQTT_RETAINED_CMD"] == 1
        aggregator.publish(f"{PREFIX}/cmd", b"", qos=1, retain=True).wait_for_publish(10)   # clear it
        # the reply topic's seq is strictly increasing
        seqs = [m["seq"] for m in messages(aggregator, "cmd/reply")]
        assert seqs == sorted(set(seqs))


def test_a_schedule_sent_ahead_opens_in_its_windows_and_is_cancelled_by_id(tmp_path, broker, aggregator):
    with Rig(tmp_path, mqtt_section(broker)) as rig:
        until(lambda: rig.stats()["subscribed"], "the subscription")
        period_s = STEP_NS / 1e9                         # Rig.step: one cycle
        for k, w in enumerate((3000, -4000, 5000)):     # windows of 2 cycles, the first opening in 3 cycles
            send(aggregator, {"id": f"plan-{k}", "kind": "setpoint", "value_w": w,
                              "starts_in_s": (3 + 2 * k) * period_s, "expires_in_s": (5 + 2 * k) * period_s})
        assert all(reply_to(aggregator, f"plan-{k}")["accepted"] for k in range(3))
        send(aggregator, {"id": "drop-2", "kind": "cancel", "of_id": "plan-2", "expires_in_s": 60})
        assert reply_to(aggregator, "drop-2")["accepted"]
        seen = []
        for _ in range(9):
            rig.step()
            seen.append(rig.ctrl.snapshot().site["setpoint_w"])
        seen = [None if w != w else w for w in seen]
        assert seen == [None, None, 3000, 3000, -4000, -4000, None, None, None]


def test_with_protobuf_commands_replies_and_reports_are_the_schemas_messages(tmp_path, broker, aggregator):
    from v2g_rt.services.mqtt import v2g_rt_pb2 as pb

    def received(topic, cls):
        return [cls.FromString(p) for t, p, _ in list(aggregator.received) if t == f"{PREFIX}/{topic}" and p]

    def answer(cmd_id):
        until(lambda: any(r.id == cmd_id for r in received("cmd/reply", pb.CommandReply)), f"reply to {cmd_id}")
        return next(r for r in received("cmd/reply", pb.CommandReply) if r.id == cmd_id)

    from v2g_rt.services.mqtt import reports
    from v2g_rt.services.mqtt.outbox import Outbox

    box = Outbox(tmp_path / "outbox.sqlite", 1 << 20)      # queued by the site while it spoke JSON
    box.add("events", lambda seq, _: reports.encode({"code": "ERR_OLD", "level": "error", "message": "m"}, seq, 0.0))
    box.close()
    with Rig(tmp_path, mqtt_section(broker, extra='encoding = "protobuf"\n')) as rig:
        until(lambda: rig.stats()["subscribed"] and received("state", pb.State), "the connection and a state")
        until(lambda: received("events", pb.Event), "the queued event")
        assert (received("events", pb.Event)[0].code, received("events", pb.Event)[0].seq) == ("ERR_OLD", 1)
        first = received("state", pb.State)[0]
        assert first.ports.unplugged == 2 and list(first.safe_state) == ["upstream"] and not first.HasField("soc")
        assert abs(first.ts / 1e3 - time.time()) < 60 and first.seq >= 1
        assert received("availability", pb.Availability)[-1].status == "online"
        until(lambda: received("evse/evse01", pb.Evse), "an evse report")   # its own message, maybe after the state
        evse = received("evse/evse01", pb.Evse)
        assert evse and set(evse[0].ports) == {"evse01.1", "evse01.2"} and not evse[0].ports["evse01.1"].connected

        send(aggregator, pb.Command(id="pb-1", kind="setpoint", value_w=5000, expires_in_s=600).SerializeToString())
        reply = answer("pb-1")
        assert reply.accepted and not reply.HasField("code") and reply.seq >= 1
        rig.step()
        assert rig.ctrl.snapshot().site["setpoint_w"] == 5000
        until(lambda: any(m.HasField("setpoint_w") and m.setpoint_w == 5000 for m in received("state", pb.State)),
              "the state with the new setpoint")
        send(aggregator, pb.Command(id="pb-2", kind="setpoint", value_w=1).SerializeToString())
        assert answer("pb-2").code == "ERR_CMD_BAD_FIELD"          # no expiry: the controller's own check
        send(aggregator, json.dumps({"id": "pb-3", "kind": "setpoint", "value_w": 1, "expires_in_s": 60}))
        until(lambda: any(r.code == "ERR_MQTT_BAD_MESSAGE" for r in received("cmd/reply", pb.CommandReply)),
              "the JSON command's rejection")
        bad = next(r for r in received("cmd/reply", pb.CommandReply) if r.code == "ERR_MQTT_BAD_MESSAGE")
        assert not bad.accepted and not bad.HasField("id") and "not a Command protobuf" in bad.reason
        assert rig.stats()["commands"] == {"accepted": 1, "ERR_CMD_BAD_FIELD": 1, "ERR_MQTT_BAD_MESSAGE": 1}
        rig.step(2)
        assert rig.ctrl.snapshot().site["setpoint_w"] == 5000 and rig.ctrl.snapshot().site["commands_applied"] == 1
    until(lambda: received("availability", pb.Availability)[-1].status == "offline", "offline at the stop")


def test_a_replay_after_a_restart_gets_the_first_verdict_and_is_not_applied(tmp_path, broker, aggregator):
    with Rig(tmp_path, mqtt_section(broker)) as rig:
        until(lambda: rig.stats()["subscribed"], "the subscription")
        send(aggregator, {"id": 41, "kind": "export_limit", "value_w": 2000, "expires_in_s": 600})
        assert reply_to(aggregator, 41)["accepted"] is True
    with Rig(tmp_path, mqtt_section(broker)) as rig:      # a new controller: its own id memory is empty
        until(lambda: rig.stats()["subscribed"], "the subscription")
        send(aggregator, {"id": 41, "kind": "export_limit", "value_w": 2000, "expires_in_s": 600})
        assert reply_to(aggregator, 41, 2)["accepted"] is True
        rig.step(2)
        assert rig.ctrl.snapshot().site["commands_applied"] == 0 and rig.ctrl.stats()["commands"] == {}


def test_heartbeats_feed_the_upstream_and_their_loss_is_safe_state(tmp_path, broker, aggregator):
    with Rig(tmp_path, mqtt_section(broker)) as rig:
        until(lambda: rig.stats()["subscribed"], "the subscription")
        site = lambda: rig.ctrl.snapshot().site  # noqa: E731
        assert "upstream" in site()["safe_state"]           # not heard yet since start

        def beat_for(seconds):
            for _ in range(int(seconds * 2)):
                n = rig.stats()["heartbeats"]
                aggregator.publish(f"{PREFIX}/heartbeat", b"{}", qos=1).wait_for_publish(10)
                until(lambda: rig.stats()["heartbeats"] > n, "the heartbeat")
                rig.step(50)                                 # 0.5 s of virtual time
        beat_for(3)                                          # past safe_exit_s = 2
        assert site()["safe_state"] == [] and site()["upstreams_lost"] == 0
        rig.step(350)                                        # 3.5 s without: past timeout_s = 3
        assert "upstream" in site()["safe_state"] and site()["upstreams_lost"] == 1
        # a retained heartbeat proves nothing about the aggregator being alive
        aggregator.publish(f"{PREFIX}/heartbeat", b"{}", qos=1, retain=True).wait_for_publish(10)
        time.sleep(0.2)
        assert rig.stats()["heartbeats"] == 6
        beat_for(1)
        assert "upstream" in site()["safe_state"]            # heard again, not yet healthy for safe_exit_s
        beat_for(2.5)
        assert site()["safe_state"] == []
        aggregator.publish(f"{PREFIX}/heartbeat", b"", qos=1, retain=True).wait_for_publish(10)


def iso(ts):
    import datetime
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_state_and_evse_reports_are_retained_and_follow_the_deadband(tmp_path, broker, aggregator):
    with Rig(tmp_path, mqtt_section(broker, extra="max_interval_s = 1\nstate_deadband_w = 500\n")) as rig:
        until(lambda: messages(aggregator, "state") and messages(aggregator, "evse/evse01"), "the first reports")
        first = messages(aggregator, "state")[0]
        assert {"fleet_w", "setpoint_w", "setpoint_source", "fleet_min_w", "fleet_max_w", "soc", "ports",
                "safe_state", "binding", "seq", "ts"} <= first.keys()
        assert first["ts"].endswith("Z") and len(first["ts"]) == len("2026-01-01T00:00:00.000Z")
        assert first["ports"]["unplugged"] == 2 and first["safe_state"] == ["upstream"]
        assert rig.ctrl.submit({"id": "x", "kind": "setpoint", "value_w": 4000, "expires_in_s": 600})
        rig.step()
        until(lambda: any(m["setpoint_w"] == 4000 for m in messages(aggregator, "state")), "the changed state")
        n = len(messages(aggregator, "state"))
        assert rig.ctrl.submit({"id": "y", "kind": "setpoint", "value_w": 4300, "expires_in_s": 600})  # < deadband
        rig.step()
        until(lambda: len(messages(aggregator, "state")) > n + 1, "two periodic states")   # every max_interval_s
        periodic = messages(aggregator, "state")[n - 1:]
        # the 300 W move waited for the next periodic message (about max_interval_s), not the next tick (0.25 s)
        gaps = [(iso(b["ts"]) - iso(a["ts"])) for a, b in zip(periodic, periodic[1:])]
        assert all(g >= 0.9 for g in gaps) and periodic[-1]["setpoint_w"] == 4300
        seqs = [m["seq"] for m in messages(aggregator, "state")]
        assert seqs == sorted(set(seqs))
        late = broker.client("late-reader")                 # retained: a new reader gets the latest at once
        late.subscribe(f"{PREFIX}/state", qos=1)
        until(lambda: late.received, "the retained state")
        assert late.received[0][2] is True
        late.loop_stop()
        late.disconnect()


def port_events(ctrl, watch, n, t):
    """n faults the operator would see (a port taken out of service and back), each logged with
    its ERR code by the FaultWatch: the events topic's material."""
    for k in range(n):
        for action in ("disable_port", "enable_port"):
            assert ctrl.submit({"id": f"{action}-{t}-{k}", "kind": action, "port": "evse01.1", "expires_in_s": 60})
            t += STEP_NS
            ctrl.step(t)
            watch.poll()
    return t


def test_a_broker_outage_loses_no_event_and_coalesces_state(tmp_path):
    # the aggregator's persistent session outlives the broker's kill -9: what the controller
    # replays before the aggregator is back is queued for it, as a real aggregator would have it
    with Broker(tmp_path / "broker", persistent=True) as broker, Rig(tmp_path, mqtt_section(broker)) as rig:
        agg = broker.client(persistent=True)
        agg.subscribe(f"{PREFIX}/#", qos=1)
        until(lambda: rig.stats()["subscribed"] and messages(agg, "state"), "the connection")
        watch = FaultWatch(rig.ctrl)
        rig.t = port_events(rig.ctrl, watch, 3, rig.t)
        until(lambda: len(messages(agg, "events")) >= 3, "events before the outage")

        broker.kill()
        agg.loop_stop()
        until(lambda: rig.stats().get("errors", {}).get("ERR_MQTT_DISCONNECTED", 0) >= 2, "two failed reconnects")
        rig.t = port_events(rig.ctrl, watch, 20, rig.t)
        for k in range(6):                                   # states pile up, and coalesce
            assert rig.ctrl.submit({"id": f"s{k}", "kind": "setpoint", "value_w": 2000 * k, "expires_in_s": 600})
            rig.step()
            time.sleep(0.3)
        until(lambda: rig.stats()["queued"] >= 20, "the outbox")
        with sqlite3.connect(rig.outbox) as db:
            assert db.execute("SELECT count(*) FROM outbox WHERE topic = 'state'").fetchone()[0] == 1

        broker.start()
        received = agg.received
        agg = broker.client(persistent=True)                  # the same session
        agg.received[:0] = received
        until(lambda: rig.stats()["queued"] == 0 and rig.stats()["connected"], "the replay")
        until(lambda: len([e for e in messages(agg, "events") if e["code"] == "ERR_PORT_OUT_OF_SERVICE"]) >= 20,
              "the events of the outage")
        unique = {}
        for e in messages(agg, "events"):                    # QoS 1 may deliver twice: the first counts
            unique.setdefault(e["seq"], e)
        seqs = list(unique)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "in order, no gap"
        assert "ERR_MQTT_DISCONNECTED" in [e["code"] for e in unique.values()]
        # replayed, not necessarily delivered yet: the outbox is empty once the broker has it
        until(lambda: any("replaced" in m for m in messages(agg, "state")), "the coalesced state")
        coalesced = [m for m in messages(agg, "state") if "replaced" in m]
        assert len(coalesced) == 1 and coalesced[0]["replaced"] >= 1 and coalesced[0]["setpoint_w"] == 10000
        assert messages(agg, "availability")[-1]["status"] == "online"
        agg.loop_stop()
        agg.disconnect()


def test_refused_tls_is_named(tmp_path, broker):
    stranger = CA(tmp_path / "stranger", "stranger CA")
    with Rig(tmp_path, mqtt_section(broker, ca=stranger.path)) as rig:      # the broker's CA is not trusted
        until(lambda: rig.stats().get("errors", {}).get("ERR_MQTT_TLS"), "the TLS failure")
        assert "CERTIFICATE_VERIFY_FAILED" in rig.stats()["last_error"]
    cert, key = stranger.issue("intruder")
    (tmp_path / "outbox.sqlite").unlink()
    with Rig(tmp_path, mqtt_section(broker, cert=cert, key=key)) as rig:     # our certificate is not accepted
        until(lambda: rig.stats().get("errors", {}).get("ERR_MQTT_TLS"), "the refused certificate")
        assert "client certificate" in rig.stats()["last_error"] and not rig.stats()["connected"]


def test_a_refusing_connack_is_named_with_its_reason_code(tmp_path):
    with Broker(tmp_path / "broker", anonymous=False) as broker, Rig(tmp_path, mqtt_section(broker)) as rig:
        until(lambda: rig.stats().get("errors", {}).get("ERR_MQTT_CONN_REFUSED"), "the refusal")
        assert "reason code 135 (Not authorized)" in rig.stats()["last_error"] and not rig.stats()["connected"]


def test_a_peer_that_never_answers_the_handshake_is_a_named_timeout(tmp_path):
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)                                     # accepts (the kernel does) and never answers
    ca = CA(tmp_path / "pki")

    class Silent:
        port = server.getsockname()[1]
    Silent.ca = ca
    try:
        with Rig(tmp_path, mqtt_section(Silent)) as rig:
            until(lambda: rig.stats().get("errors", {}).get("ERR_MQTT_DISCONNECTED"), "the handshake timeout")
            assert "no answer within 5 s to the TCP connect or the TLS handshake" in rig.stats()["last_error"] and not rig.stats()["connected"]
    finally:
        server.close()


def test_a_controller_killed_while_offline_loses_nothing(tmp_path):
    """`v2g-rt run` with the broker down, killed with SIGKILL, started again with the broker back:
    every committed events and evse message arrives, and seq goes on increasing."""
    broker = Broker(tmp_path / "broker")
    cert, key = broker.ca.issue("controller")
    site = tmp_path / "site.toml"
    site.write_text(resources.files("v2g_rt.data").joinpath("default-site.toml").read_text()
                    .replace("priority = 80", "priority = 0").replace("lock_memory = true", "lock_memory = false")
                    .replace("period_ms = 1.0", f'period_ms = 1.0\nstatus_socket = "{tmp_path}/s.sock"')
                    + f'\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nca = "{broker.ca.path}"\n'
                      f'cert = "{cert}"\nkey = "{key}"\nprefix = "{PREFIX}"\n')
    env = dict(os.environ, STATE_DIRECTORY=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path))
    outbox = tmp_path / "mqtt-outbox-sim-depot-50.sqlite"

    def run():
        return subprocess.Popen([sys.executable, "-P", "-m", "v2g_rt.cli", "run", "--config", str(site)], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "run.log", "ab"))

    def kept():
        if not outbox.exists():
            return []
        try:
            with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
                return [(t, json.loads(p)["seq"]) for t, p in db.execute(
                    "SELECT topic, payload FROM outbox WHERE topic = 'events' OR topic LIKE 'evse/%' ORDER BY id")]
        except sqlite3.OperationalError:           # not created yet
            return []

    proc = run()
    try:
        until(lambda: len(kept()) >= 10 and any(t == "events" for t, _ in kept()), "reports in the outbox")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    before = kept()
    with broker:
        agg = broker.client()
        agg.subscribe(f"{PREFIX}/#", qos=1)
        proc = run()
        try:
            def arrived():
                got = {(t[len(PREFIX) + 1:], json.loads(p)["seq"]) for t, p, _ in list(agg.received) if p}
                return set(before) <= got
            until(arrived, "every message kept before the kill")
            until(lambda: len(messages(agg, "events")) > len([1 for t, _ in before if t == "events"]) or
                  any(m["seq"] > max(s for t, s in before if t == "evse/evse01") for m in messages(agg, "evse/evse01")),
                  "a message produced after the restart")
        finally:
            proc.terminate()
            proc.wait(30)
        for topic in {t for t, _ in before}:
            seqs = [m["seq"] for m in messages(agg, topic)]
            assert seqs == sorted(seqs), topic
        agg.loop_stop()
        agg.disconnect()


def test_a_full_outbox_drops_new_reports_with_its_code_and_counts_them(tmp_path, caplog):
    nowhere = Broker(tmp_path / "broker")                # configured, never started
    with Rig(tmp_path, mqtt_section(nowhere, extra="outbox_max_mb = 0.002\n")) as rig:
        watch = FaultWatch(rig.ctrl)
        end = time.monotonic() + HANG_S
        while rig.stats().get("outbox_full_drops", 0) == 0:
            assert time.monotonic() < end, "hung waiting for a full outbox"
            rig.t = port_events(rig.ctrl, watch, 1, rig.t)
            time.sleep(0.01)
        assert rig.stats()["errors"]["ERR_MQTT_OUTBOX_FULL"] >= 1 and rig.stats()["queued_bytes"] <= 0.002 * 2**20
        assert any(r.getMessage().startswith("ERR_MQTT_OUTBOX_FULL: [mqtt]") for r in caplog.records)


def test_a_flood_of_commands_is_bounded_by_the_rate_limit(tmp_path, broker, aggregator):
    with Rig(tmp_path, mqtt_section(broker)) as rig:
        until(lambda: rig.stats()["subscribed"], "the subscription")
        for k in range(600):
            aggregator.publish(f"{PREFIX}/cmd", json.dumps({"id": f"f{k}", "kind": "setpoint", "value_w": k,
                                                            "expires_in_s": 60}), qos=0)
        until(lambda: sum(rig.stats().get("commands", {}).values()) + rig.stats()["rate_limited"] >= 600, "the flood")
        answered = sum(rig.stats()["commands"].values())
        assert rig.stats()["rate_limited"] > 0 and answered < 600
        assert rig.stats()["errors"]["ERR_MQTT_RATE_LIMITED"] == rig.stats()["rate_limited"]


def test_a_frozen_broker_holds_only_the_window_in_flight_and_then_gets_everything(tmp_path, broker, aggregator):
    from v2g_rt.services.mqtt import WINDOW
    with Rig(tmp_path, mqtt_section(broker)) as rig:
        until(lambda: rig.stats()["subscribed"] and messages(aggregator, "state"), "the connection")
        watch = FaultWatch(rig.ctrl)
        broker.proc.send_signal(signal.SIGSTOP)          # the connection stays, nothing is acknowledged
        try:
            rig.t = port_events(rig.ctrl, watch, 150, rig.t)
            until(lambda: rig.stats()["queued"] >= 150 and rig.stats()["in_flight"] == WINDOW, "a full window")
            time.sleep(0.3)                              # a dozen ticks later: still the window, no more
            assert rig.stats()["connected"] and rig.stats()["in_flight"] == WINDOW
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        until(lambda: rig.stats()["queued"] == 0, "the delivery")
        until(lambda: len({e["seq"] for e in messages(aggregator, "events")}) >= 150, "every event")
