"""OCPP 2.0.1 / 2.1 for the site's chargers: a WebSocket server with Security Profile 3, run in
its own service thread by one asyncio loop.

A station connects to wss://HOST:PORT/ANY/PATH/ID; ID must be an EVSE node with link = "ocpp",
and its client certificate must come from the site CA with subject CN = ID. The TLS handshake
refuses what has no such certificate (ERR_OCPP_TLS_REFUSED, counted where OpenSSL fails it);
the WebSocket handshake refuses unknown ids and certificates of other stations.

What a station reports becomes port measurements stamped with their own time, through the gate.
Every message refreshes the port's `connected`, so a station that goes quiet goes stale after the
site's session_max_age_s (the heartbeat interval it is given is a third of that); a station that
never reports power leaves the port open loop (the loop assumes it takes its setpoint). A closed
connection unplugs its ports at once, and so does one whose WebSocket pings (every heartbeat
interval) go unanswered: a station whose network died is gone within two heartbeat intervals.

What it is told: see ocpp_payloads for the profile scheme. Profiles go out when the loop hands
over an output (it signals the output eventfd), at most once per MIN_INTERVAL_S per station;
every answer that is not Accepted is counted per station (ERR_OCPP_*).

Dead-man: a station that loses us keeps our TxProfile until its validity (output_hold_s, at least
PROFILE_MIN_VALID_S to bear clock skew) ends, then runs the stack-level-0 TxDefaultProfile.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .. import pki
from ..site import port_source
from . import AsyncService, outputs_watched
from . import ocpp_payloads as pay
from .ocpp_session import Station, Tally, session_class, utcnow

SECTION = "ocpp"
SUBPROTOCOLS = (pay.V21, pay.V201)      # the newest both sides speak
LISTEN = re.compile(r"\[(?P<v6>[0-9A-Fa-f:.%a-z]+)\]:(?P<p6>\d+)|(?P<host>[^\[\]:]+):(?P<port>\d+)")
MIN_INTERVAL_S = 0.5          # between two profile pushes to one station
PROFILE_MIN_VALID_S = 30      # a TxProfile's validity at least (station clocks drift)
CALL_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0         # a stop waits this long for a station that vanished without a word
EXPIRY_CHECK_S = 86400.0

log = logging.getLogger("v2g_rt")


@dataclass(frozen=True)
class OcppConfig:
    listen: str
    host: str
    port: int
    ca: Path
    cert: Path
    key: Path


def parse_listen(text: str) -> tuple[str, int] | None:
    m = LISTEN.fullmatch(text)
    if not m or not 1 <= int(m["p6"] or m["port"]) <= 65535:
        return None
    return (m["v6"] or m["host"], int(m["p6"] or m["port"]))


def check_config(cf, site) -> OcppConfig:
    sec = cf.section(SECTION)
    listen = sec.get_str("listen")
    where = parse_listen(listen) if listen else None
    if listen and where is None:
        sec.problem("listen", f"expected \"HOST:PORT\" (IPv6 as \"[::1]:9443\") with a port from 1 to 65535, "
                              f"found {listen!r}")
    base = Path(cf.path).parent if not str(cf.path).startswith("<") else Path.cwd()
    files = {}
    for option in ("ca", "cert", "key"):
        value = sec.get_str(option)
        path = base / value if value else None
        if path is not None and not path.is_file():
            sec.problem(option, f"{path}: no such file; `v2g-rt pki init` creates ca.pem, controller.pem and "
                                f"controller.key (paths are relative to the config file)", "ERR_OCPP_CONFIG")
            path = None
        files[option] = path
    cfg = OcppConfig(listen, *(where or ("", 0)), files["ca"], files["cert"], files["key"])
    if all(files.values()):
        try:
            server_context(cfg)
        except (ssl.SSLError, OSError, ValueError) as e:
            sec.problem("cert", f"the certificate {cfg.cert}, key {cfg.key} and CA {cfg.ca} cannot serve TLS: {e}",
                        "ERR_OCPP_CONFIG")
    return cfg


def server_context(cfg: OcppConfig, refused=None) -> ssl.SSLContext:
    """Security Profile 3: TLS 1.2 or later, a client certificate from the site CA required.
    refused(error) is called for every handshake OpenSSL fails."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(cfg.cert, cfg.key)
    ctx.load_verify_locations(cfg.ca)
    if refused is not None:
        ctx.sslobject_class = _watched(refused)
    return ctx


def _watched(refused):
    class Watched(ssl.SSLObject):
        """asyncio drops a failed server handshake silently; this sees it first."""

        def do_handshake(self):
            try:
                return super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as e:
                refused(e)
                raise
    return Watched


def path_station(path: str) -> str:
    """The station id of a connection: the last segment of its URL's path."""
    return unquote(urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1])


def common_name(peercert: dict | None) -> str | None:
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class OcppService(AsyncService):
    """The OCPP server and every station's session, in one asyncio loop on the service's thread."""

    name = "ocpp"

    def __init__(self, ctrl, cfg: OcppConfig):
        super().__init__()
        self.ctrl, self.cfg = ctrl, cfg
        site = ctrl.site
        self.stations: dict[str, Station] = {}
        for node in site.nodes:
            if node.kind == "evse" and node.link == "ocpp":
                ports = [p.id for p in site.ports if p.evse == node.id]
                self.stations[node.id] = Station(node, ports, pay.fallback_share_w(site, node.id))
        self.heartbeat_s = max(1, int(site.control.session_max_age_s / 3))
        self.valid_s = max(PROFILE_MIN_VALID_S, int(site.control.output_hold_s + 0.999))
        self.deadband_w = max(site.control.deadband_w, 1.0)
        self.call_timeout_s = CALL_TIMEOUT_S
        self.min_interval_s = MIN_INTERVAL_S
        self.refused = Tally(f"[ocpp] {cfg.listen}")
        self.accepted = 0
        self.port = cfg.port                    # the bound port once serving (cfg.port 0: any free one)
        self._row = {pid: j for j, pid in enumerate(ctrl.port_ids)}
        self._session_classes: dict = {}
        self._push_timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ thread and server

    def run(self) -> None:
        for name in ("ocpp", "websockets"):              # every refusal is named and counted here
            logging.getLogger(name).setLevel(logging.CRITICAL)
        super().run()

    async def serve(self) -> None:
        from websockets.asyncio.server import serve

        self._session_classes = {v: session_class(v) for v in SUBPROTOCOLS}
        self.check_expiry()
        ctx = server_context(self.cfg, self._tls_refused)
        try:
            server = await serve(self._connected, self.cfg.host, self.cfg.port, ssl=ctx, subprotocols=list(SUBPROTOCOLS),
                                 process_request=self._admit, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
                                 open_timeout=HANDSHAKE_TIMEOUT_S, close_timeout=CLOSE_TIMEOUT_S,
                                 ping_interval=self.heartbeat_s, ping_timeout=self.heartbeat_s)
        except OSError as e:
            raise OSError(f"ERR_OCPP_LISTEN: cannot listen on {self.cfg.listen}: {e.strerror}") from e
        self.port = server.sockets[0].getsockname()[1]
        self._expiry_timer = self._loop.call_later(EXPIRY_CHECK_S, self._daily_expiry)
        self._ready.set()
        try:
            with outputs_watched(self.ctrl, self._loop, self.push):
                await self._done.wait()
                await self._flush()
        finally:
            self._expiry_timer.cancel()
            server.close()
            await server.wait_closed()

    async def _flush(self) -> None:
        """At a stop, the loop's last outputs (0 W) to every station, waiting at most CLOSE_TIMEOUT_S."""
        self.push()
        pushing = [st.pushing for st in self.stations.values() if st.pushing is not None]
        if pushing:
            await asyncio.wait(pushing, timeout=CLOSE_TIMEOUT_S)

    def check_expiry(self) -> list[tuple[str, int]]:
        soon = pki.expiring([self.cfg.ca, self.cfg.cert])
        for path, days in soon:
            log.warning("ERR_OCPP_CERT_EXPIRING: %s %s", path,
                        f"expires in {days} days" if days >= 0 else f"expired {-days} days ago")
        return soon

    def _daily_expiry(self) -> None:
        self.check_expiry()
        self._expiry_timer = self._loop.call_later(EXPIRY_CHECK_S, self._daily_expiry)

    def _tls_refused(self, error: ssl.SSLError) -> None:
        self.refused("ERR_OCPP_TLS_REFUSED", f"TLS handshake failed: {error.reason or error}")

    def _admit(self, connection, request):
        """The WebSocket handshake's check: a known station, with its own certificate."""
        peer = "%s:%s" % connection.remote_address[:2]
        station_id = path_station(request.path)
        station = self.stations.get(station_id)
        if station is None:
            self.refused("ERR_OCPP_UNKNOWN_STATION", f"{peer} asked for station {station_id[:60]!r}; "
                                                     f"stations: {', '.join(self.stations) or 'none'}")
            return connection.respond(404, "unknown station\n")
        peercert = connection.transport.get_extra_info("peercert")
        cn = common_name(peercert)
        if cn != station_id:
            self.refused("ERR_OCPP_IDENTITY_MISMATCH", f"{peer} connected as {station_id!r} with the "
                                                       f"certificate of {cn!r}")
            return connection.respond(403, "certificate of another station\n")
        offered = ",".join(request.headers.get_all("Sec-WebSocket-Protocol")).replace(" ", "").split(",")
        if not set(offered) & set(SUBPROTOCOLS):
            self.refused("ERR_OCPP_SUBPROTOCOL", f"station {station_id} ({peer}) offered {offered}, "
                                                 f"expected one of {', '.join(SUBPROTOCOLS)}")
            return connection.respond(400, "no OCPP version in common\n")
        days = (ssl.cert_time_to_seconds(peercert["notAfter"]) - time.time()) / 86400
        if days < pki.EXPIRY_WARNING_DAYS:
            station.failures("ERR_OCPP_CERT_EXPIRING", f"its client certificate expires in {days:.0f} days")
        return None

    async def _connected(self, connection) -> None:
        from websockets.exceptions import ConnectionClosed

        station = self.stations[path_station(connection.request.path)]
        if station.session is not None:                 # a reconnect replaces the old connection
            await station.session._connection.close()
        session = self._session_classes[connection.subprotocol](self, station, connection)
        station.session, station.version = session, connection.subprotocol
        self.accepted += 1
        station.counts["connections"] += 1
        log.info("OCPP station %s connected (%s, %s:%s)", station.id, connection.subprotocol,
                 *connection.remote_address[:2])
        try:
            await session.start()
        except ConnectionClosed:
            pass
        finally:
            if station.session is session:
                self._gone(station)

    def _gone(self, station: Station) -> None:
        """The station's ports leave the arbitration at once: unplugged, as far as the loop knows.
        It stays booted with its transactions: a station reconnects without booting again, and
        its TransactionEvents may then name a transaction without its evse."""
        station.session = None
        if station.pushing is not None:
            station.pushing.cancel()
        t = self.ctrl.now_ns()
        for k in range(1, len(station.port_ids) + 1):
            self._measure(station, k, "connected", 0.0, t)
        station.occupied.clear()
        station.sent.clear()                       # what it holds after a reconnect is unknown: send again
        log.info("OCPP station %s disconnected", station.id)

    # ------------------------------------------------------------ what stations tell us

    def _measure(self, station: Station, evse_id, kind: str, value: float, t_ns: int) -> None:
        if not isinstance(evse_id, int) or not 1 <= evse_id <= len(station.port_ids):
            station.counts["unknown_evse"] += 1
            return
        verdict = self.ctrl.measure(port_source(station.port_ids[evse_id - 1], kind), value, t_ns)
        if verdict:
            station.counts["values"] += 1
        else:
            station.rejected[verdict.code] += 1

    def _stamp(self, timestamp) -> int:
        """A station's timestamp on the controller's clock: now less its age (never in the future)."""
        now = self.ctrl.now_ns()
        t = pay.parse_time(timestamp) if timestamp else None
        if t is None:
            return now
        age_s = (utcnow() - t).total_seconds()
        return now - int(max(age_s, 0.0) * 1e9)

    def heard(self, station: Station) -> None:
        """Any message from a station says its ports are still as it last reported them."""
        t = self.ctrl.now_ns()
        for evse_id, connected in station.occupied.items():
            self._measure(station, evse_id, "connected", connected, t)

    def boot(self, station: Station) -> None:
        station.booted = True
        station.transactions.clear()               # a reboot ended them
        station.sent.clear()
        self._call(station, "SetChargingProfile", pay.fallback_profile(station.fallback_w), "fallback")

    def status(self, station: Station, evse_id: int, occupied: bool, timestamp) -> None:
        station.counts["status"] += 1
        station.occupied[evse_id] = 1.0 if occupied else 0.0
        self._measure(station, evse_id, "connected", station.occupied[evse_id], self._stamp(timestamp))
        self.heard(station)

    def transaction(self, station: Station, event_type: str, transaction_id: str, evse_id, timestamp,
                    meter_value) -> None:
        station.counts["transaction_events"] += 1
        if evse_id is None:                        # Updated/Ended may leave evse out: find it by the transaction
            evse_id = next((k for k, tx in station.transactions.items() if tx == transaction_id), None)
        if event_type == "Ended":                  # no energy flows until a new transaction: out of the arbitration
            station.transactions.pop(evse_id, None)
            station.sent.pop(evse_id, None)
            if evse_id is not None:
                station.occupied[evse_id] = 0.0
        elif evse_id is not None:
            if station.transactions.get(evse_id) != transaction_id:
                station.sent.pop(evse_id, None)    # a new transaction needs its own profile
            station.transactions[evse_id] = transaction_id
            station.occupied[evse_id] = 1.0
        self.meter_values(station, evse_id, meter_value or ())
        if event_type != "Ended":
            self.push()

    def meter_values(self, station: Station, evse_id, meter_value) -> None:
        if meter_value:
            station.counts["meter_values"] += 1
        for timestamp, kind, value in pay.meter_readings(meter_value):
            self._measure(station, evse_id, kind, value, self._stamp(timestamp))
        self.heard(station)

    def needs(self, station: Station, evse_id: int, charging_needs: dict) -> None:
        station.counts["charging_needs"] += 1
        t = self.ctrl.now_ns()
        for kind, value in pay.charging_needs(charging_needs, station.node, utcnow()):
            self._measure(station, evse_id, kind, value, t)
        self.heard(station)

    # ------------------------------------------------------------ what we tell stations

    def push(self) -> None:
        """Start a push for every booted station with a port whose output moved past the deadband
        or whose profile is due a refresh; a station pushed less than min_interval_s ago waits,
        unless a port must stop (0 W goes at once, as on CAN)."""
        out = self.ctrl.outputs(take=[pid for st in self.stations.values() if st.session is not None
                                      for pid in st.port_ids])
        now = time.monotonic()
        wait = math.inf
        for station in self.stations.values():
            if station.session is None or not station.booted or not station.transactions or station.pushing is not None:
                continue
            due = {}
            for evse_id in station.transactions:
                row = out[self._row[station.port_ids[evse_id - 1]]]
                w = float(row["setpoint_w"]) if row["contactor_closed"] else 0.0
                if station.version == pay.V201:
                    w = max(w, 0.0)                # 2.0.1 limits cannot discharge
                sent = station.sent.get(evse_id)
                if sent is None or abs(w - sent[0]) >= self.deadband_w or now >= sent[1]:
                    due[evse_id] = w
            if not due:
                continue
            stop = any(w == 0.0 and station.sent.get(k, (0.0,))[0] != 0.0 for k, w in due.items())
            if now < station.next_push and not stop:
                wait = min(wait, station.next_push - now)
                continue
            station.next_push = now + self.min_interval_s
            station.pushing = self._loop.create_task(self._push(station, due))
        if wait < math.inf and self._push_timer is None:
            self._push_timer = self._loop.call_later(wait, self._timer_push)

    def _timer_push(self) -> None:
        self._push_timer = None
        self.push()

    async def _push(self, station: Station, due: dict[int, float]) -> None:
        try:
            for evse_id, w in due.items():
                tx = station.transactions.get(evse_id)
                if tx is None:
                    continue
                payload = pay.tx_profile(station.version, evse_id, tx, w, utcnow(), self.valid_s)
                if await self._request(station, "SetChargingProfile", payload, "setpoint"):
                    station.sent[evse_id] = (w, time.monotonic() + self.valid_s / 2)
        finally:
            station.pushing = None
        self.push()                                # what moved meanwhile

    def _call(self, station: Station, action: str, payload: dict, what: str) -> None:
        self._loop.create_task(self._request(station, action, payload, what))

    async def _request(self, station: Station, action: str, payload: dict, what: str) -> bool:
        """One request to the station; True if it accepted. Refusals, timeouts and CALLERRORs
        are counted and logged, never raised."""
        session = station.session
        if session is None:
            return False
        request = getattr(session._call, action)(**payload)
        station.counts[f"{what}_sent"] += 1
        try:
            answer = await session.call(request, suppress=False)
        except asyncio.TimeoutError:
            station.failures("ERR_OCPP_TIMEOUT", f"no answer to {action} ({what}) within {self.call_timeout_s:g} s")
            return False
        except asyncio.CancelledError:
            raise
        except Exception as e:                    # a CALLERROR, or one of a code OCPP does not define
            station.failures("ERR_OCPP_CALLERROR", f"{action} ({what}): {type(e).__name__}: "
                                                   f"{getattr(e, 'description', e)}")
            return False
        if answer.status != "Accepted":
            station.failures("ERR_OCPP_REJECTED", f"{action} ({what}) answered {answer.status}")
            return False
        station.counts[f"{what}_accepted"] += 1
        return True

    def stats(self) -> dict:
        return {"listen": self.cfg.listen, "connections": self.accepted, "refused": dict(self.refused.counts),
                "stations": {s.id: s.stats() for s in self.stations.values()}}
