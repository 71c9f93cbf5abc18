"""The MQTT outbox (SQLite), the message encoding, the commands' own checks and the [mqtt] config."""
import datetime
import json

import pytest

from helpers import make_site
from v2g_rt import Controller, cli, config
from v2g_rt.config import ConfigError
from v2g_rt.services.mqtt import expiry_warnings, reports
from v2g_rt.services.mqtt.commands import Commands, RateLimit, keep_until
from v2g_rt.services.mqtt.outbox import Outbox


def body(text):
    return lambda seq, replaced: json.dumps({"seq": seq, "replaced": replaced, "x": text}).encode()


def decoded(rows):
    return [(r.topic, json.loads(r.payload)) for r in rows]


def test_rows_leave_in_order_and_seq_survives_a_reopen(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", 1 << 20)
    for k in range(3):
        box.add("events", body(f"e{k}"))
    box.add("evse/a", body("a"))
    rows = box.after(0, 10)
    assert [(t, m["seq"], m["x"]) for t, m in decoded(rows)] == [("events", 1, "e0"), ("events", 2, "e1"),
                                                                ("events", 3, "e2"), ("evse/a", 1, "a")]
    box.remove([rows[0].id, rows[1].id])
    box.close()
    box = Outbox(tmp_path / "o.sqlite", 1 << 20)              # a restart: the unsent rows and the seqs remain
    assert box.rows == 2 and [m["x"] for _, m in decoded(box.after(0, 10))] == ["e2", "a"]
    box.add("events", body("e3"))
    assert decoded(box.after(rows[3].id, 10))[0][1]["seq"] == 4


def test_unsent_states_coalesce_into_the_newest_which_counts_them(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", 1 << 20)
    first = box.add("state", body("s1"))
    box.add("events", body("e"))
    box.add("state", body("s2"), sent_up_to=first)            # s1 is with the broker: kept
    box.add("state", body("s3"), sent_up_to=first)
    last = box.add("state", body("s4"), sent_up_to=first)
    got = decoded(box.after(0, 10))
    assert [(t, m["x"], m["seq"], m["replaced"]) for t, m in got] == [("state", "s1", 1, 0), ("events", "e", 1, 0),
                                                                      ("state", "s4", 4, 2)]
    box.add("state", body("s5"), sent_up_to=last - 1)        # s4 had replaced 2: s5 stands for 3
    assert decoded(box.after(last - 1, 10))[-1][1]["replaced"] == 3
    assert box.rows == 3


def test_a_full_outbox_drops_new_messages_and_counts_them(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", 400)
    kept = [box.add("events", body(f"{k:040d}")) for k in range(8)]
    assert None in kept and box.dropped == kept.count(None) and box.bytes <= 400
    seqs = [m["seq"] for _, m in decoded(box.after(0, 100))]
    assert seqs == list(range(1, len(seqs) + 1))               # the gap comes after what was kept
    box.remove([r.id for r in box.after(0, 100)])
    assert box.bytes == 0 and box.add("events", body("again")) is not None
    assert decoded(box.after(0, 10))[0][1]["seq"] == 9         # the dropped ones used their seqs


def test_answered_ids_are_kept_bounded_and_expire(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", 1 << 20)
    box.begin("str:a", keep_until=100.0, now=0.0)
    assert box.answered("str:a")["code"] == "ERR_CMD_REPLAYED"      # begun, verdict never recorded
    box.finish("str:a", {"accepted": True, "code": None, "reason": None})
    assert box.answered("str:a") == {"accepted": True, "code": None, "reason": None}
    box.begin("str:b", keep_until=300.0, now=200.0)            # a's time is over
    assert box.answered("str:a") is None
    box.finish("str:b", None)                                  # a transient refusal: forgotten
    assert box.answered("str:b") is None


def test_the_controller_judges_and_the_id_is_answered_once(tmp_path):
    ctrl = Controller(make_site(2, meter=False), clock="virtual")
    ctrl.step(1_000_000)
    box = Outbox(tmp_path / "o.sqlite", 1 << 20)
    cmds = Commands(ctrl, box, "mqtt", wall=lambda: 1000.0)
    cmd = json.dumps({"id": 7, "kind": "setpoint", "value_w": 500, "expires_in_s": 60}).encode()
    assert cmds.handle(cmd, False) == {"id": 7, "accepted": True, "code": None, "reason": None}
    fresh = Controller(make_site(2, meter=False), clock="virtual")   # a restarted controller, the same outbox
    fresh.step(1_000_000)
    assert Commands(fresh, box, "mqtt").handle(cmd, False)["accepted"] is True
    assert fresh.stats()["commands"] == {}
    assert cmds.handle(b"[1, 2]", False)["code"] == "ERR_MQTT_BAD_MESSAGE"
    assert cmds.handle(json.dumps({"id": True, "kind": "setpoint"}).encode(), False) == {
        "id": None, "accepted": False, "code": "ERR_CMD_BAD_FIELD",
        "reason": "id True: expected an int 0..2^63-1 or a string of 1..128 characters"}
    assert keep_until({"expires_at": 5000.0}, 1000.0) == 5600.0 and keep_until({"expires_in_s": 1e300}, 0) > 0


def test_the_rate_limit_allows_bursts_then_the_rate():
    now = [0.0]
    limit = RateLimit(10.0, 5, clock=lambda: now[0])
    assert [limit.allow() for _ in range(7)] == [True] * 5 + [False] * 2
    now[0] = 0.25
    assert [limit.allow() for _ in range(3)] == [True, True, False]


def test_messages_carry_seq_and_utc_milliseconds():
    msg = json.loads(reports.encode({"status": "online"}, 12, 1_764_720_000.0426, replaced=3))
    assert msg == {"seq": 12, "ts": "2025-12-03T00:00:00.042Z", "replaced": 3, "status": "online"}
    assert list(msg)[:2] == ["seq", "ts"] and "replaced" not in json.loads(reports.encode({}, 1, 0.0))


def test_a_report_moves_past_the_deadband_or_on_any_other_change():
    old = {"fleet_w": 1000.0, "ports": {"charging": 1}, "evse": {"a": {"setpoint_w": 0.0, "faults": []}}}
    assert not reports.moved(old, {**old, "fleet_w": 1900.0}, 1000)
    assert reports.moved(old, {**old, "fleet_w": 2100.0}, 1000)
    assert reports.moved(old, {**old, "fleet_w": None}, 1000)
    assert reports.moved(old, {**old, "ports": {"charging": 2}}, 1000)
    assert reports.moved(old, {**old, "evse": {"a": {"setpoint_w": 0.0, "faults": ["overtemp"]}}}, 1000)
    assert not reports.moved(old, {**old, "evse": {"a": {"setpoint_w": 900.0, "faults": []}}}, 1000)


MQTT = """
[site]
name = "m"
[upstream.agg]
[node.grid]
kind = "grid"
import_limit_w = 1e5
export_limit_w = 1e5
[node.e]
kind = "evse"
parent = "grid"
port_max_charge_w = 11000
[mqtt]
host = "broker.example"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
"""


@pytest.fixture
def pki(tmp_path):
    from mosquitto import CA
    ca = CA(tmp_path / "pki")
    cert, key = ca.issue("site", days=10)
    return {"ca": ca.path, "cert": cert, "key": key}


def test_the_config_defaults_and_names_file_section_option(tmp_path, pki, capsys):
    path = tmp_path / "site.toml"
    path.write_text(MQTT.format(**pki))
    cfg = config.load(path).sections["mqtt"]
    assert cli.main(["check", str(path)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(", MQTT broker.example:8883 under v2g/m/")
    assert (cfg.port, cfg.prefix, cfg.client_id, cfg.upstream, cfg.encoding) == (8883, "v2g/m", "v2g-rt-m", "", "json")
    assert (cfg.max_interval_s, cfg.state_deadband_w, cfg.outbox_max_mb) == (10.0, 1000.0, 64.0)
    path.write_text(MQTT.format(**pki) + 'encoding = "protobuf"\n')
    assert config.load(path).sections["mqtt"].encoding == "protobuf"
    path.write_text(MQTT.format(**pki) + 'encoding = "cbor"\nupstream = "dms"\nprefix = "v2g/#"\nretain = 1\n')
    with pytest.raises(ConfigError) as e:
        config.load(path)
    text = str(e.value)
    assert f"{path}: [mqtt] encoding:" in text and "cbor" in text
    assert f"{path}: [mqtt] upstream: 'dms' is not an [upstream.NAME] of this site; upstreams: agg" in text
    assert "[mqtt] prefix: expected a topic without wildcards" in text and "[mqtt] retain: option 'retain'" in text
    path.write_text(MQTT.format(ca=pki["ca"], cert=pki["key"], key=pki["cert"]).replace(f'"{pki["ca"]}"', '"nope.pem"'))
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert f"[mqtt] ca: {tmp_path / 'nope.pem'}: no such file" in str(e.value)
    assert "[mqtt] cert:" in str(e.value) and "not a PEM certificate and its private key" in str(e.value)


def test_certificates_near_their_expiry_are_warned_about(tmp_path, pki):
    path = tmp_path / "site.toml"
    path.write_text(MQTT.format(**pki))
    cfg = config.load(path).sections["mqtt"]
    lines = expiry_warnings(cfg)
    assert len(lines) == 1 and lines[0].startswith(f"ERR_MQTT_CERT_EXPIRING: [mqtt] cert {pki['cert']} expires in")
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=20)
    assert "expired" in expiry_warnings(cfg, later)[0] and expiry_warnings(cfg, later)[0].startswith("ERR_MQTT_TLS")


@pytest.mark.parametrize("bad", ["a\0b", "x" * 5000])
def test_an_unusable_path_is_a_config_problem_not_a_crash(tmp_path, pki, bad):
    with pytest.raises(ConfigError) as e:
        config.parse(MQTT.format(**{**pki, "ca": bad.replace("\0", "\\u0000")}), str(tmp_path / "s.toml"))
    assert "[mqtt] ca:" in str(e.value)
