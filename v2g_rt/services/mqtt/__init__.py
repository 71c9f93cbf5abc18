"""MQTT: the aggregator's grid commands in, aggregated reports out, with nothing lost offline.

One thread drives a paho-mqtt client (MQTT 5, mutual TLS) with loop() calls of its own, so every
callback runs here and nothing is shared with paho's threads. Topics under [mqtt] prefix:
`cmd` (-> Controller.submit, answered on `cmd/reply`), `heartbeat` (-> the configured upstream's
heartbeat), `state` (retained; on a move past the deadband, at least every max_interval_s),
`evse/<id>` (retained; on change), `events` (every ERR code logged at warning or above) and
`availability` (retained online/offline, offline also as the last will). Payloads are JSON, or with
[mqtt] encoding = "protobuf" the messages of hw/mqtt/v2g_rt.proto (protobuf.py): the same bodies,
encoded when they enter the outbox (and re-encoded there when the encoding changes).

Every report goes through the outbox (SQLite, see outbox.py) and leaves it in order with QoS 1 once
the broker acknowledges it; at most WINDOW messages are with the broker unacknowledged, so a
broker that accepts the connection and never answers holds nothing but that window in memory.
The connection is retried with backoff (0.5 s doubling to 30 s); each failure is named:
ERR_MQTT_TLS (handshake refused, no CONNACK), ERR_MQTT_CONN_REFUSED (a CONNACK with the broker's
reason code), ERR_MQTT_DISCONNECTED (unreachable, silent or lost).
"""
from __future__ import annotations

import datetime
import logging
import queue
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from ...faults import state_dir
from ...site import upstream_heartbeat
from .. import BACKOFF_FIRST_S, BACKOFF_MAX_S, Service
from . import reports
from .commands import Commands, RateLimit, from_json
from .outbox import Outbox

SECTION = "mqtt"
ENCODINGS = ("json", "protobuf")
WINDOW = 64                     # messages with the broker, not yet acknowledged
TICK_S = 0.02                   # longest wait in the client's loop
REPORT_EVERY_S = 0.25           # the snapshot is looked at this often: never per cycle
CONNACK_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0         # TCP connect and TLS handshake
KEEPALIVE_S = 15
MAX_PACKET_BYTES = 65536        # told to the broker (MQTT 5): larger messages never reach us
MESSAGES_PER_S, BURST = 50.0, 200
CERT_WARN_DAYS = 30
LOG_EVERY_S = 60.0
EVENT_QUEUE = 1000

log = logging.getLogger("v2g_rt")

REMEDIES = {
    "ERR_MQTT_TLS": "check that [mqtt] ca signed the broker's certificate, that the broker trusts the CA that "
                    "signed [mqtt] cert, and that neither certificate has expired",
    "ERR_MQTT_CONN_REFUSED": "check the broker's ACL for this client id and certificate identity",
    "ERR_MQTT_DISCONNECTED": "check that the broker runs and that port {port} is open on every firewall "
                             "between; reports queue in the outbox meanwhile",
}


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int
    ca: Path
    cert: Path
    key: Path
    client_id: str
    prefix: str
    upstream: str                 # "" = the aggregator's heartbeats feed no upstream
    encoding: str
    max_interval_s: float
    state_deadband_w: float
    outbox_max_mb: float


def check_config(cf, site) -> MqttConfig:
    sec = cf.section(SECTION)
    host = sec.get_str("host")
    port = sec.get_int("port", 8883, minval=1, maxval=65535)
    base = Path(cf.path).parent if not cf.path.startswith("<") else Path.cwd()
    files = {name: _file(sec, name, base) for name in ("ca", "cert", "key")}
    _check_tls_files(sec, **files)
    client_id = sec.get_str("client_id", f"v2g-rt-{site.name}")
    if not 1 <= len(client_id) <= 128:
        sec.problem("client_id", f"expected 1 to 128 characters, found {len(client_id)}")
    prefix = sec.get_str("prefix", f"v2g/{site.name}")
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or any(c in prefix for c in "+#\0"):
        sec.problem("prefix", f"expected a topic without wildcards (+, #) and without a leading or trailing '/', "
                              f"found {prefix!r}")
    upstream = sec.get_str("upstream", "")
    names = [up.name for up in site.upstreams]
    if upstream and upstream not in names:
        sec.problem("upstream", f"{upstream!r} is not an [upstream.NAME] of this site; "
                                f"upstreams: {', '.join(names) or 'none (add [upstream.NAME] with timeout_s)'}")
    encoding = sec.get_str("encoding", "json", choices=ENCODINGS)
    return MqttConfig(host, port, *files.values(), client_id, prefix, upstream, encoding,
                      sec.get_float("max_interval_s", 10.0, above=0, maxval=3600, unit="s"),
                      sec.get_float("state_deadband_w", 1000.0, minval=0, maxval=1e9, unit="W"),
                      sec.get_float("outbox_max_mb", 64.0, above=0, maxval=65536, unit="MiB"))


def _file(sec, option: str, base: Path) -> Path | None:
    text = sec.get_str(option)
    if not text:
        return None
    path = base / text
    try:
        if path.is_file():
            return path
        sec.problem(option, f"{path}: no such file")
    except (OSError, ValueError) as e:          # a NUL byte, a name too long
        sec.problem(option, f"{text[:80]!r}: not a usable path ({e})")
    return None


def _check_tls_files(sec, ca: Path | None, cert: Path | None, key: Path | None) -> None:
    """Each file found is what its option says (missing ones are reported already)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if ca:
            context.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as e:
        sec.problem("ca", f"{ca}: not a PEM CA certificate ({e})")
    try:
        if cert and key:
            context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as e:
        sec.problem("cert", f"{cert} with key {key}: not a PEM certificate and its private key ({e})")


def expiry_warnings(cfg: MqttConfig, now: datetime.datetime | None = None) -> list[str]:
    """Lines to log for certificates expired or within CERT_WARN_DAYS of expiry."""
    from cryptography import x509

    now = now or datetime.datetime.now(datetime.timezone.utc)
    out = []
    for option in ("ca", "cert"):
        path = getattr(cfg, option)
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as e:
            out.append(f"ERR_MQTT_TLS: [mqtt] {option} {path}: cannot read the certificate: {e}")
            continue
        days = (cert.not_valid_after_utc - now).total_seconds() / 86400
        if days < 0:
            out.append(f"ERR_MQTT_TLS: [mqtt] {option} {path} expired {-days:.0f} days ago "
                       f"({cert.not_valid_after_utc:%Y-%m-%d}); the broker will refuse it: renew it")
        elif days < CERT_WARN_DAYS:
            out.append(f"ERR_MQTT_CERT_EXPIRING: [mqtt] {option} {path} expires in {days:.0f} days "
                       f"({cert.not_valid_after_utc:%Y-%m-%d}): renew it before then")
    return out


def outbox_path(site) -> Path:
    return state_dir() / f"mqtt-outbox-{site.name}.sqlite"


class EventTap(logging.Handler):
    """Every ERR code the controller logs at warning or above becomes an `events` message."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.queue: queue.Queue = queue.Queue(EVENT_QUEUE)
        self.lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            return
        code = text.split(":", 1)[0]
        if not code.startswith("ERR_") or not code.replace("_", "").isalnum():
            return
        try:
            self.queue.put_nowait({"code": code, "level": record.levelname.lower(), "message": text[:1000]})
        except queue.Full:
            self.lost += 1


class MqttService(Service):
    name = "mqtt"

    def __init__(self, ctrl, cfg: MqttConfig, path: Path | None = None, clock=time.monotonic, wall=time.time):
        super().__init__()
        self.ctrl, self.cfg, self.clock, self.wall = ctrl, cfg, clock, wall
        self.path = path or outbox_path(ctrl.site)
        self.heartbeat = upstream_heartbeat(cfg.upstream) if cfg.upstream else None
        self.tap = EventTap()
        self.outbox: Outbox | None = None
        self.client = None
        self.connected = False
        self.subscribed = False                   # commands and heartbeats reach us
        self.inflight: dict[int, int] = {}       # paho mid -> outbox row
        self.acked: list[int] = []
        self.sent_up_to = 0                       # the last row handed to the broker on this connection
        self.delay = BACKOFF_FIRST_S
        self.retry_at = 0.0
        self.connect_started = 0.0
        self.online_seq = self.will_seq = 0      # availability's seqs for this connection
        self.last_state: dict | None = None
        self.state_at = -float("inf")
        self.last_evse: dict[str, dict] = {}
        self.report_at = 0.0
        self.cert_check_at = 0.0
        self.limit = RateLimit(MESSAGES_PER_S, BURST, clock)
        self.counts = {"delivered": 0, "reconnects": 0, "heartbeats": 0, "rate_limited": 0, "refused_by_broker": 0}
        self.errors: dict[str, int] = {}
        self.last_error = ""
        self._logged: dict[str, tuple[float, int]] = {}
        self.commands: Commands | None = None
        if cfg.encoding == "protobuf":
            from . import protobuf
            self.encoder, self.decoder = protobuf.encode, protobuf.command
        else:
            self.encoder, self.decoder = (lambda topic, *message: reports.encode(*message)), from_json

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        logging.getLogger("v2g_rt").addHandler(self.tap)
        super().start()

    def stop(self) -> None:
        self.stopping.set()
        self._join()
        logging.getLogger("v2g_rt").removeHandler(self.tap)

    def run(self) -> None:
        self.outbox = Outbox(self.path, int(self.cfg.outbox_max_mb * 2**20))
        self.commands = Commands(self.ctrl, self.outbox, "mqtt", self.wall, self.decoder)
        self._recode_outbox()
        try:
            while not self.stopping.is_set():
                self._tick()
        finally:
            self._close()

    def _recode_outbox(self) -> None:
        """Reports queued before a change of [mqtt] encoding leave in the new one."""
        def convert(topic: str, payload: bytes) -> bytes:
            from . import protobuf
            return protobuf.recode(topic, payload, self.cfg.encoding)

        done, failed = self.outbox.recode(self.cfg.encoding, convert)
        if done or failed:
            log.log(logging.WARNING if failed else logging.INFO, "mqtt: [mqtt] encoding is now %s: %d queued reports "
                    "re-encoded%s", self.cfg.encoding, done, f", {failed} unreadable ones left as they were" if failed
                    else "")

    def _tick(self) -> None:
        now = self.clock()
        if now >= self.cert_check_at:
            for line in expiry_warnings(self.cfg):
                log.warning("%s", line)
            self.cert_check_at = now + 86400
        if self.client is None and now >= self.retry_at:
            self._connect(now)
        elif self.client is not None and not self.connected and now - self.connect_started > CONNACK_TIMEOUT_S:
            self._lost("ERR_MQTT_DISCONNECTED", f"no CONNACK within {CONNACK_TIMEOUT_S:g} s: the broker accepted "
                                                f"the connection and never answered")
        if self.client is not None:
            client = self.client
            rc = client.loop(timeout=TICK_S)
            if rc != 0 and client is self.client:
                self._gone(f"paho: {rc.name}")
            if self.acked:
                self.outbox.remove(self.acked)
                self.counts["delivered"] += len(self.acked)
                self.acked.clear()
        else:
            self.stopping.wait(TICK_S)
        if now >= self.report_at or not self.tap.queue.empty():
            with self.outbox.transaction():         # one fsync for a tick's reports
                self._take_events()
                if now >= self.report_at:
                    self.report_at = now + REPORT_EVERY_S
                    self._report(now)
        self._send()

    def _close(self) -> None:
        client = self.client
        if client is not None and self.connected:
            info = client.publish(self._topic("availability"),
                                  self._availability("offline", self.will_seq), qos=1, retain=True)
            end = time.monotonic() + 1.0
            while not info.is_published() and time.monotonic() < end and client.loop(timeout=0.05) == 0:
                pass
            self._drop()
            client.disconnect()
            client.loop(timeout=0.05)
        self._drop()
        self.outbox.close()

    # ------------------------------------------------------------ connection

    def _topic(self, topic: str) -> str:
        return f"{self.cfg.prefix}/{topic}"

    def _encode(self, topic: str, body: dict, seq: int, replaced: int = 0) -> bytes:
        return self.encoder(topic, body, seq, self.wall(), replaced)

    def _availability(self, status: str, seq: int) -> bytes:
        return self._encode("availability", {"status": status}, seq)

    def _connect(self, now: float) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        cfg = self.cfg
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(cfg.ca), certfile=str(cfg.cert), keyfile=str(cfg.key))
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(WINDOW + 2)      # + availability online/offline
        client.max_queued_messages_set(WINDOW + 2)
        self.online_seq = self.outbox.next_seq("availability")
        self.will_seq = self.outbox.next_seq("availability")
        client.will_set(self._topic("availability"), self._availability("offline", self.will_seq),
                        qos=1, retain=True)
        client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
        client.on_message, client.on_publish = self._on_message, self._on_publish
        client.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)
        props.MaximumPacketSize = MAX_PACKET_BYTES
        try:
            client.connect(cfg.host, cfg.port, keepalive=KEEPALIVE_S, clean_start=True, properties=props)
        except ssl.SSLError as e:
            detail = getattr(e, "verify_message", "") or str(e)
            self._retry("ERR_MQTT_TLS", f"TLS handshake failed: {e.reason}: {detail}")
            return
        except (OSError, ValueError) as e:
            what = (f"no answer within {CONNECT_TIMEOUT_S:g} s to the TCP connect or the TLS handshake (a firewall "
                    f"dropping port {cfg.port}, or a peer that never speaks TLS)") if isinstance(e, TimeoutError) \
                else f"cannot connect: {e}"
            self._retry("ERR_MQTT_DISCONNECTED", what)
            return
        # small messages (replies, acknowledgements) leave at once: Nagle would hold them for the peer's ACK
        sock = client.socket()
        if sock is not None:                        # None: closed already, the first loop() says why
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client, self.connect_started = client, now

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if client is not self.client:
            return
        if reason_code.is_failure:
            self._lost("ERR_MQTT_CONN_REFUSED", f"the broker refused the connection: reason code "
                                                f"{reason_code.value} ({reason_code})")
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions

        self.connected, self.delay = True, BACKOFF_FIRST_S
        self.inflight.clear()
        self.sent_up_to = 0
        # retainAsPublished: a command published retained is seen as such, even while we listen
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        topics = [(self._topic("cmd"), options)]
        if self.heartbeat:
            topics.append((self._topic("heartbeat"), options))
        client.subscribe(topics)
        client.publish(self._topic("availability"), self._availability("online", self.online_seq),
                       qos=1, retain=True)
        log.info("mqtt: connected to %s:%d as %s, %d reports to deliver", self.cfg.host, self.cfg.port,
                 self.cfg.client_id, self.outbox.rows)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            self._failed("ERR_MQTT_CONN_REFUSED", f"the broker refused the subscription to {self.cfg.prefix}/cmd "
                                                  f"or heartbeat: {', '.join(refused)}")
        self.subscribed = not refused

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if client is self.client:
            self._gone(str(reason_code))

    def _gone(self, reason: str) -> None:
        if self.connected:
            self._lost("ERR_MQTT_DISCONNECTED", f"connection lost ({reason})")
        else:
            self._lost("ERR_MQTT_TLS", "the broker closed the TLS connection before its CONNACK: it did not "
                                       "accept this controller's client certificate ([mqtt] cert)")

    def _lost(self, code: str, message: str) -> None:
        client = self.client
        self._drop()
        if client is not None:
            sock = client.socket()
            if sock is not None:
                sock.close()
        self._retry(code, message)

    def _drop(self) -> None:
        self.client, self.connected, self.subscribed = None, False, False
        self.inflight.clear()
        self.sent_up_to = 0

    def _retry(self, code: str, message: str) -> None:
        self._failed(code, message)
        self.retry_at = self.clock() + self.delay
        self.delay = min(self.delay * 2, BACKOFF_MAX_S)
        self.counts["reconnects"] += 1

    def _failed(self, code: str, message: str) -> None:
        """Counted always, logged once and then once a minute with the count in between."""
        self.errors[code] = self.errors.get(code, 0) + 1
        self.last_error = f"{code}: {message}"
        now = time.monotonic()
        at, count = self._logged.get(code, (-LOG_EVERY_S, 0))
        if now - at < LOG_EVERY_S:
            self._logged[code] = (at, count + 1)
            return
        self._logged[code] = (now, 0)
        remedy = REMEDIES.get(code, "").format(port=self.cfg.port)
        log.log(logging.WARNING if code == "ERR_MQTT_DISCONNECTED" else logging.ERROR, "%s: [mqtt] %s:%d: %s%s%s",
                code, self.cfg.host, self.cfg.port, message, f"; {remedy}" if remedy else "",
                f" ({count} more since the last report)" if count else "")

    # ------------------------------------------------------------ in

    def _on_message(self, client, userdata, msg) -> None:
        if not self.limit.allow():
            self.counts["rate_limited"] += 1
            self._failed("ERR_MQTT_RATE_LIMITED", f"more than {MESSAGES_PER_S:g} messages a second on "
                                                  f"{self.cfg.prefix}/cmd and heartbeat; the excess is dropped")
            return
        if msg.topic == self._topic("cmd"):
            self._queue("cmd/reply", self.commands.handle(msg.payload, msg.retain))
        elif msg.topic == self._topic("heartbeat") and not msg.retain:   # a retained one proves nothing alive
            if self.ctrl.measure(self.heartbeat, 1.0):
                self.counts["heartbeats"] += 1

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        row = self.inflight.pop(mid, None)
        if row is None:
            return
        if reason_code.is_failure:                   # acknowledged and refused (an ACL): never retried
            self.counts["refused_by_broker"] += 1
            self._failed("ERR_MQTT_CONN_REFUSED", f"the broker refused a message: reason code "
                                                  f"{reason_code.value} ({reason_code})")
        self.acked.append(row)

    # ------------------------------------------------------------ out

    def _queue(self, topic: str, body: dict, retain: bool = False) -> None:
        row = self.outbox.add(topic, lambda seq, replaced: self._encode(topic, body, seq, replaced), retain,
                              self.sent_up_to)
        if row is None:
            self._failed("ERR_MQTT_OUTBOX_FULL", f"the outbox holds {self.cfg.outbox_max_mb:g} MiB; a {topic} "
                                                 f"message was dropped ({self.outbox.dropped} so far)")

    def _take_events(self) -> None:
        while True:
            try:
                event = self.tap.queue.get_nowait()
            except queue.Empty:
                return
            self._queue("events", event)

    def _report(self, now: float) -> None:
        snap = self.ctrl.snapshot()
        state = reports.state(snap)
        if reports.moved(self.last_state, state, self.cfg.state_deadband_w) or \
                now - self.state_at >= self.cfg.max_interval_s:
            self._queue("state", state, retain=True)
            self.last_state, self.state_at = state, now
        for evse, body in reports.evses(snap, self.ctrl.site).items():
            if reports.moved(self.last_evse.get(evse), body, self.cfg.state_deadband_w):
                self._queue(f"evse/{evse}", body, retain=True)
                self.last_evse[evse] = body

    def _send(self) -> None:
        while self.connected and len(self.inflight) < WINDOW:
            rows = self.outbox.after(self.sent_up_to, WINDOW - len(self.inflight))
            if not rows:
                return
            for row in rows:
                info = self.client.publish(self._topic(row.topic), row.payload, qos=1, retain=row.retain)
                if info.rc != 0:
                    return
                self.inflight[info.mid] = row.id
                self.sent_up_to = row.id

    # ------------------------------------------------------------ status

    def stats(self) -> dict:
        out = {"connected": self.connected, "subscribed": self.subscribed, "broker": f"{self.cfg.host}:{self.cfg.port}",
               "in_flight": len(self.inflight), **self.counts}
        if self.outbox is not None:
            out.update(queued=self.outbox.rows, queued_bytes=self.outbox.bytes, outbox_full_drops=self.outbox.dropped)
        if self.commands is not None and self.commands.counts:
            out["commands"] = dict(self.commands.counts)
        if self.tap.lost:
            out["events_lost"] = self.tap.lost
        if self.errors:
            out["errors"] = dict(self.errors)
        if self.last_error:
            out["last_error"] = self.last_error
        return out
