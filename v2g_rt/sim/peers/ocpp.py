"""The far side of OCPP: charging stations built with the `ocpp` package, connecting to the
controller over mutual TLS on loopback as a real station would (its own client certificate, the
site CA to check the server), all run by one asyncio loop in a Fleet's thread.

A SimStation boots, reports each EVSE occupied and a transaction started, its vehicle's charging
needs, then meter values every report_s (boot=False: a reconnect, straight to meter values): the power its profiles allow. It applies what it is
sent as a station does: the TxProfile of a transaction while valid, else the TxDefaultProfile
(the stack-level-0 fallback), else unlimited, always within the vehicle's own limits. OCPP 2.1
CentralSetpoint profiles are followed to their signed setpoint. Tests set how it answers
SetChargingProfile (answer = "Rejected", or None: never), send raw frames (send_raw) and read what
it received (`profiles`, `callerrors`).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import ssl
import threading
import time
from pathlib import Path

V201, V21 = "ocpp2.0.1", "ocpp2.1"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def client_context(pki_dir, station_id: str | None, ca: str | Path | None = None) -> ssl.SSLContext:
    """A station's TLS: the site CA checks the controller; the station's certificate and key
    from pki_dir/stations (none if station_id is None); ca: another CA file to trust instead."""
    root = Path(pki_dir)
    ctx = ssl.create_default_context(cafile=str(ca or root / "ca.pem"))
    if station_id is not None:
        ctx.load_cert_chain(root / "stations" / f"{station_id}.pem", root / "stations" / f"{station_id}.key")
    return ctx


class SimStation:
    def __init__(self, station_id: str, url: str, ssl_context: ssl.SSLContext | None, *,
                 version: str = V201, evses: int = 1, ev_max_charge_w: float = 11_000.0,
                 ev_max_discharge_w: float = 0.0, soc: float | None = 0.5, report_s: float = 0.2,
                 report_power: bool = True, answer: str | None = "Accepted", needs: bool = True,
                 boot: bool = True):
        self.id, self.url, self.ssl, self.version = station_id, url, ssl_context, version
        self.evses = evses
        self.ev_max_charge_w, self.ev_max_discharge_w = ev_max_charge_w, ev_max_discharge_w
        self.soc, self.report_s, self.report_power = soc, report_s, report_power
        self.answer, self.send_needs, self.boot = answer, needs, boot
        self.profiles: list[tuple[float, int, dict]] = []     # (monotonic arrival, evseId, profile)
        self.callerrors: list[list] = []                      # CALLERRORs the controller answered with
        self.installed: dict[tuple[int, str], dict] = {}      # (evseId, purpose) -> profile
        self.power: dict[int, float] = {}
        self.transactions = {k: f"{station_id}-tx{k}" for k in range(1, evses + 1)}
        self.heartbeat_s: int | None = None
        self.ready = threading.Event()                        # booted and transactions started
        self.error: BaseException | None = None
        self._seq = itertools.count()
        self.cp = None
        self.closing = False

    # ---------------------------------------------------------------- the station's behaviour

    def limit_w(self, evse_id: int, now: dt.datetime | None = None) -> float | None:
        """What the installed profiles allow on an EVSE now (None: unlimited), signed for 2.1 setpoints."""
        now = now or _now()
        tx = self.installed.get((evse_id, "TxProfile"))
        if tx is not None and (not tx.get("valid_to") or _time(tx["valid_to"]) > now):
            return self._period_w(tx)
        for key in ((evse_id, "TxDefaultProfile"), (0, "TxDefaultProfile")):
            if key in self.installed:
                return self._period_w(self.installed[key])
        return None

    @staticmethod
    def _period_w(profile: dict) -> float:
        period = profile["charging_schedule"][0]["charging_schedule_period"][0]
        if period.get("operation_mode") == "CentralSetpoint" and period.get("setpoint") is not None:
            return float(period["setpoint"])
        return float(period["limit"])

    def power_w(self, evse_id: int) -> float:
        limit = self.limit_w(evse_id)
        w = self.ev_max_charge_w if limit is None else limit
        return min(max(w, -self.ev_max_discharge_w), self.ev_max_charge_w)

    def received(self, purpose: str | None = None) -> list[tuple[float, int, dict]]:
        return [p for p in self.profiles if purpose is None or p[2]["charging_profile_purpose"] == purpose]

    # ---------------------------------------------------------------- the connection

    async def send_raw(self, text: str) -> None:
        """A frame as it is, for the controller's handling of bad input."""
        await self.cp._send(text)

    def _charge_point(self, ws):
        from ocpp.charge_point import camel_to_snake_case
        from ocpp.routing import on
        from ocpp.v201 import ChargePoint as CP201
        from ocpp.v21 import ChargePoint as CP21

        station = self

        class Station(CP21 if self.version == V21 else CP201):
            async def route_message(self, raw):
                msg = json.loads(raw)
                if msg[0] == 4:
                    station.callerrors.append(msg)
                if station.answer is None and msg[0] == 2 and msg[2] == "SetChargingProfile":
                    payload = camel_to_snake_case(msg[3])          # a hung station: never answered
                    station.profiles.append((time.monotonic(), payload["evse_id"], payload["charging_profile"]))
                    return
                await super().route_message(raw)

            @on("SetChargingProfile")
            def on_set_charging_profile(self, evse_id, charging_profile, **_):
                station.profiles.append((time.monotonic(), evse_id, charging_profile))
                if station.answer == "Accepted":
                    station.installed[(evse_id, charging_profile["charging_profile_purpose"])] = charging_profile
                return self._call_result.SetChargingProfile(status=station.answer)

        return Station(self.id, ws, response_timeout=10)

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        try:
            async with connect(self.url, ssl=self.ssl, subprotocols=[self.version], open_timeout=10,
                               ping_interval=None) as ws:
                self.cp = cp = self._charge_point(ws)
                listener = asyncio.create_task(cp.start())
                try:
                    if self.boot:
                        await self._boot()
                    self.ready.set()
                    while True:
                        await self.report()
                        await asyncio.sleep(self.report_s)
                finally:
                    listener.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as e:                      # refused or dropped: the test reads why
            if not self.closing:
                self.error = e
            self.ready.set()

    async def close(self) -> None:
        """Leave as a station does: a WebSocket close, answered by the controller."""
        self.closing = True
        if self.cp is not None:
            await self.cp._connection.close()

    async def _boot(self) -> None:
        c = self.cp._call
        answer = await self.cp.call(c.BootNotification(charging_station={"model": "sim", "vendor_name": "v2g-rt"},
                                                       reason="PowerUp"))
        self.heartbeat_s = answer.interval
        phases = "AC_three_phase"
        for k in range(1, self.evses + 1):
            await self.cp.call(c.StatusNotification(timestamp=_iso(_now()), connector_status="Occupied",
                                                    evse_id=k, connector_id=1))
            await self.cp.call(c.TransactionEvent(
                event_type="Started", timestamp=_iso(_now()), trigger_reason="CablePluggedIn",
                seq_no=next(self._seq), transaction_info={"transaction_id": self.transactions[k]},
                evse={"id": k, "connector_id": 1}))
            if self.send_needs:
                needs = {"requested_energy_transfer": phases, "departure_time": _iso(_now() + dt.timedelta(hours=4)),
                         "ac_charging_parameters": {"energy_amount": 20_000, "ev_min_current": 6,
                                                    "ev_max_current": 16, "ev_max_voltage": 400}}
                await self.cp.call(c.NotifyEVChargingNeeds(charging_needs=needs, evse_id=k))

    def _meter_value(self, evse_id: int) -> dict:
        w = self.power[evse_id] = self.power_w(evse_id)
        sampled = [] if self.soc is None else [   # an AC vehicle often tells its station no SoC
            {"value": round(self.soc * 100, 1), "measurand": "SoC", "unit_of_measure": {"unit": "Percent"}}]
        if self.report_power:
            measurand = "Power.Active.Import" if w >= 0 else "Power.Active.Export"
            sampled.append({"value": abs(w), "measurand": measurand, "unit_of_measure": {"unit": "W"}})
        return {"timestamp": _iso(_now()), "sampled_value": sampled}

    async def report(self) -> None:
        """One TransactionEvent Updated per EVSE with its power and SoC."""
        c = self.cp._call
        for k in range(1, self.evses + 1):
            await self.cp.call(c.TransactionEvent(
                event_type="Updated", timestamp=_iso(_now()), trigger_reason="MeterValuePeriodic",
                seq_no=next(self._seq), transaction_info={"transaction_id": self.transactions[k]},
                evse={"id": k, "connector_id": 1}, meter_value=[self._meter_value(k)]))


class Fleet:
    """One asyncio loop in a thread running stations (and any coroutine a test hands it)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._tasks: list[asyncio.Future] = []
        self.stations: list[SimStation] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="sim-ocpp-fleet", daemon=True)
        self._thread.start()

    def start(self, station: SimStation) -> SimStation:
        self.stations.append(station)
        self._tasks.append(asyncio.run_coroutine_threadsafe(station.run(), self.loop))
        return station

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine on the fleet's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Every station closes its connection (a cancelled close would leave the controller
        waiting out its close timeout), then whatever still runs is cancelled."""
        self.call(self._close_stations())
        for t in self._tasks:
            t.cancel()
        self.call(self._settle())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        self.loop.close()

    async def _close_stations(self) -> None:
        closing = asyncio.gather(*(s.close() for s in self.stations), return_exceptions=True)
        await asyncio.wait_for(closing, 10)

    @staticmethod
    async def _settle() -> None:
        """Every other task of the loop run to its end, cancelled again while it lasts: Python
        3.11's wait_for (inside the ocpp package's call) can swallow a cancellation (gh-86296)."""
        while others := asyncio.all_tasks() - {asyncio.current_task()}:
            for t in others:
                t.cancel()
            await asyncio.wait(others, timeout=0.1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SimDepot:
    """`v2g-rt run` with [sim] ocpp_stations: one simulated station per EVSE with link = "ocpp",
    connecting to the controller's [ocpp] server with the certificates `pki init` wrote next to the
    site CA (stations/ID.pem). A station whose ports may discharge speaks OCPP 2.1 (V2X setpoints),
    the others 2.0.1; each vehicle takes at most its port's rating."""

    def __init__(self, site, port: int):
        cfg = site.sections["ocpp"]
        pki_dir = Path(cfg.ca).parent
        host = "localhost" if cfg.host in ("0.0.0.0", "::", "127.0.0.1", "::1", "localhost") else cfg.host
        self.fleet = Fleet()
        self.stations = []
        for node in site.nodes:
            if node.link != "ocpp":
                continue
            ports = [p for p in site.ports if p.evse == node.id]
            discharge = max(p.rating_discharge_w for p in ports)
            self.stations.append(self.fleet.start(SimStation(
                node.id, f"wss://{host}:{port}/ocpp/{node.id}", client_context(pki_dir, node.id),
                version=V21 if discharge > 0 else V201, evses=len(ports),
                ev_max_charge_w=max(p.rating_charge_w for p in ports), ev_max_discharge_w=discharge, report_s=1.0)))

    def stop(self) -> None:
        self.fleet.close()

