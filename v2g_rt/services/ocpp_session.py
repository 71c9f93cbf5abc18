"""The station's side of an OCPP connection: what the controller knows of each station, and the
handlers of what stations send (one ChargePoint class per OCPP version, from the `ocpp` package).
Handlers only translate; what a message means to the loop is OcppService's."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections import Counter

from . import ocpp_payloads as pay

FLOOD_RATE, FLOOD_BURST = 50.0, 100.0     # messages a station may send a second, and at once
LOG_EVERY_S = 60.0

log = logging.getLogger("v2g_rt")


class Tally:
    """Counts by ERR code; logs a code once, then once a minute with how many came meanwhile."""

    def __init__(self, what: str):
        self.what = what
        self.counts: Counter[str] = Counter()
        self._logged: dict[str, tuple[float, int]] = {}

    def __call__(self, code: str, message: str) -> None:
        self.counts[code] += 1
        now = time.monotonic()
        at, more = self._logged.get(code, (-LOG_EVERY_S, 0))
        if now - at >= LOG_EVERY_S:
            log.warning("%s: %s: %s%s", code, self.what, message, f" ({more} more since the last report)" if more else "")
            self._logged[code] = (now, 0)
        else:
            self._logged[code] = (at, more + 1)


class Station:
    """One EVSE node served over OCPP: its ports by evseId, what it last said, what it was sent."""

    def __init__(self, node, port_ids: list[str], fallback_w: float):
        self.node, self.port_ids, self.fallback_w = node, port_ids, fallback_w
        self.session = None                       # the connected ChargePoint, if any
        self.version = ""
        self.booted = False
        self.occupied: dict[int, float] = {}      # evseId -> connected (1.0/0.0) as last reported
        self.transactions: dict[int, str] = {}    # evseId -> transactionId
        self.sent: dict[int, tuple[float, float]] = {}   # evseId -> (setpoint, monotonic time to refresh)
        self.next_push = 0.0
        self.pushing: asyncio.Task | None = None
        self.failures = Tally(f"station {node.id}")
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()   # measurements refused by the gate, by code

    @property
    def id(self) -> str:
        return self.node.id

    def stats(self) -> dict:
        out = {"connected": self.session is not None, "version": self.version, "booted": self.booted,
               "transactions": len(self.transactions), "throttled": 0, "heartbeats": 0, **self.counts,
               "errors": dict(self.failures.counts)}
        if self.rejected:
            out["rejected"] = dict(self.rejected)
        return out


def session_class(version: str):
    """The station's side of the connection, for its OCPP version (imported when first served)."""
    from ocpp.exceptions import OCPPError
    from ocpp.messages import MessageType, unpack
    from ocpp.routing import after, on
    from ocpp.v201 import ChargePoint as CP201
    from ocpp.v201.enums import Action as Actions201
    from ocpp.v21 import ChargePoint as CP21
    from ocpp.v21.enums import Action as Actions21

    known = {a.value for a in (Actions21 if version == pay.V21 else Actions201)}

    class Session:
        def __init__(self, service, station, connection):
            super().__init__(station.id, connection, response_timeout=service.call_timeout_s)
            self.service, self.station = service, station

        async def start(self):
            """The station's messages in order, at most FLOOD_RATE a second: a flooding station
            waits (and TCP pushes back on it), the others are served meanwhile."""
            bucket = Bucket(FLOOD_RATE, FLOOD_BURST)
            while True:
                message = await self._connection.recv()
                delay = bucket.take(time.monotonic())
                if delay:
                    self.station.counts["throttled"] += 1
                    await asyncio.sleep(delay)
                await self.route_message(message)

        async def route_message(self, raw):
            """The package drops what it cannot unpack, and swaps OCPP-J's NotImplemented (an
            action not known) and NotSupported (known, not served): both answered here."""
            try:
                msg = unpack(raw)
            except OCPPError as e:
                await self._error(_message_id(raw), e.code, e.description)
                return
            if msg.message_type_id == MessageType.Call and msg.action not in self.route_map:
                known_action = msg.action in known
                await self._error(msg.unique_id, "NotSupported" if known_action else "NotImplemented",
                                  f"{str(msg.action)[:60]} is {'not served' if known_action else 'no action'} "
                                  f"of {self._ocpp_version} here")
                return
            await super().route_message(raw)

        async def _error(self, unique_id: str, code: str, description: str):
            await self._send(json.dumps([4, unique_id, code, description, {}], separators=(",", ":")))

        async def _send(self, message):
            if message.startswith("[4,"):
                self.station.failures("ERR_OCPP_BAD_MESSAGE", f"answered with a CALLERROR: {message[:200]}")
            await super()._send(message)

        @on("BootNotification")
        def on_boot(self, charging_station, reason, **_):
            self.service.heard(self.station)
            self.station.counts["boots"] += 1
            return self._call_result.BootNotification(current_time=pay.iso(utcnow()), status="Accepted",
                                                      interval=self.service.heartbeat_s)

        @after("BootNotification")
        def after_boot(self, **_):
            self.service.boot(self.station)         # no request before the station has its boot answer

        @on("Heartbeat")
        def on_heartbeat(self, **_):
            self.service.heard(self.station)
            self.station.counts["heartbeats"] += 1
            return self._call_result.Heartbeat(current_time=pay.iso(utcnow()))

        @on("StatusNotification")
        def on_status(self, timestamp, connector_status, evse_id, connector_id, **_):
            self.service.status(self.station, evse_id, connector_status in pay.OCCUPIED, timestamp)
            return self._call_result.StatusNotification()

        @on("TransactionEvent")
        def on_transaction(self, event_type, timestamp, transaction_info, evse=None, meter_value=None, **_):
            self.service.transaction(self.station, event_type, transaction_info["transaction_id"],
                                     (evse or {}).get("id"), timestamp, meter_value)
            return self._call_result.TransactionEvent()

        @on("MeterValues")
        def on_meter_values(self, evse_id, meter_value, **_):
            self.service.meter_values(self.station, evse_id, meter_value)
            return self._call_result.MeterValues()

        @on("Authorize")
        def on_authorize(self, id_token, **_):
            self.service.heard(self.station)     # a local controller: the operator's CSMS authorises, not us
            return self._call_result.Authorize(id_token_info={"status": "Accepted"})

        @on("SecurityEventNotification")
        def on_security_event(self, type, timestamp, **_):
            log.warning("OCPP station %s: security event %s at %s", self.station.id, str(type)[:80], timestamp)
            self.service.heard(self.station)
            return self._call_result.SecurityEventNotification()

        @on("NotifyEvent")
        def on_event(self, **_):
            self.service.heard(self.station)
            return self._call_result.NotifyEvent()

        @on("FirmwareStatusNotification")
        def on_firmware_status(self, **_):
            self.service.heard(self.station)
            return self._call_result.FirmwareStatusNotification()

        @on("NotifyEVChargingNeeds")
        def on_needs(self, charging_needs, evse_id, **_):
            self.service.needs(self.station, evse_id, charging_needs)
            return self._call_result.NotifyEVChargingNeeds(status="Accepted")

    base = CP21 if version == pay.V21 else CP201
    return type(f"Session{base._ocpp_version.replace('.', '')}", (Session, base), {})


def _message_id(raw) -> str:
    try:
        msg = json.loads(raw)
        return str(msg[1]) if isinstance(msg, list) and len(msg) > 1 and isinstance(msg[1], str) else "-1"
    except (ValueError, TypeError):
        return "-1"


class Bucket:
    """A token bucket: take() is how long to wait before the next message may be handled."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, None

    def take(self, now: float) -> float:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
