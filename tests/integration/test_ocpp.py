"""The OCPP service against stations built with the `ocpp` package (v2g_rt.sim.peers.ocpp) over
real mutual TLS on loopback, with certificates from `v2g-rt pki init`. The controller runs in
virtual time, stepped here; what the loop decides is asserted in cycles, and wall-clock time
only bounds how long a network delivery may take."""
import dataclasses
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from unittest import mock

import numpy as np
import pytest

from helpers import S, ServiceRig
from v2g_rt import Controller, config
from v2g_rt.services.ocpp import OcppService
from v2g_rt.services.status import render
from v2g_rt.sim.peers.ocpp import V21, V201, Fleet, SimStation, client_context
from v2g_rt.site import port_source

HANG_S = ServiceRig.HANG_S

SITE = """
[site]
name = "ocpp-test"
period_ms = 10
[control]
session_max_age_s = 60
[node.grid]
kind = "grid"
import_limit_w = 100000
export_limit_w = 100000
base_load_w = [0, 20000]
[node.cs01]
kind = "evse"
parent = "grid"
link = "ocpp"
ports = 2
port_max_charge_w = 11000
port_max_discharge_w = 11000
[node.cs02]
kind = "evse"
parent = "grid"
link = "ocpp"
port_max_charge_w = 22000
port_max_discharge_w = 22000
[ocpp]
listen = "127.0.0.1:9443"
ca = "pki/ca.pem"
cert = "pki/controller.pem"
key = "pki/controller.key"
"""


def pki_init(directory, *stations):
    args = [a for s in stations for a in ("--station", s)]
    r = subprocess.run([sys.executable, "-P", "-m", "v2g_rt.cli", "pki", "init", str(directory), *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ocpp")
    pki_init(d / "pki", "cs01", "cs02", "cs09")
    pki_init(d / "other", "cs01")                      # another CA's certificate for cs01
    (d / "site.toml").write_text(SITE)
    return d


class Rig(ServiceRig):
    """A virtual-time controller, its OCPP service on a free port, a fleet of stations."""

    def __init__(self, site_dir):
        super().__init__(config.load(site_dir / "site.toml"))
        self.dir = site_dir
        self.service = OcppService(self.ctrl, dataclasses.replace(self.site.sections["ocpp"], port=0))
        self.fleet = Fleet()

    def __enter__(self):
        self.service.start()
        assert self.service.failure is None, self.service.failure
        return self

    def __exit__(self, *exc):
        self.fleet.close()
        self.service.stop()

    def station(self, sid="cs01", *, path=None, cert=None, ca=None, scheme="wss", **kw):
        url = f"{scheme}://localhost:{self.service.port}/ocpp/{path or sid}"
        ctx = None if scheme == "ws" else client_context(self.dir / "pki", None if cert is False else cert or sid, ca=ca)
        kw.setdefault("evses", len([p for p in self.site.ports if p.evse == sid]) or 1)
        return self.fleet.start(SimStation(sid, url, ctx, **kw))

    def ready(self, station):
        assert station.ready.wait(HANG_S), f"{station.id} never booted"
        assert station.error is None, repr(station.error)
        return station

    def stats(self, sid="cs01"):
        return self.service.stats()["stations"][sid]

    def port(self, pid):
        snap = self.ctrl.snapshot()
        return snap.ports[snap.port_ids.index(pid)]

    def output(self, pid):
        return self.ctrl.outputs()[self.ctrl.port_ids.index(pid)]

    def ev(self, pid, **values):
        """Vehicle data the station does not send (an AC car's capacity, its V2G consent)."""
        for kind, v in values.items():
            assert self.ctrl.measure(port_source(pid, kind), v)


def tx_limits(station, evse_id=1):
    """Every TxProfile's power on an EVSE as the station received it, in order."""
    out = []
    for _, k, prof in station.received("TxProfile"):
        if k == evse_id:
            period = prof["charging_schedule"][0]["charging_schedule_period"][0]
            out.append(period.get("setpoint", period.get("limit")))
    return out


@pytest.mark.parametrize("version", [V201, V21])
def test_a_station_with_its_certificate_boots_and_gets_the_charge_only_fallback(site_dir, version):
    with Rig(site_dir) as rig:
        st = rig.ready(rig.station("cs01", version=version))
        assert st.heartbeat_s == 20                       # a third of session_max_age_s
        rig.until(lambda: st.received("TxDefaultProfile"), "the fallback profile")
        _, evse_id, prof = st.received("TxDefaultProfile")[0]
        assert evse_id == 0 and prof["stack_level"] == 0 and "valid_to" not in prof
        period = prof["charging_schedule"][0]["charging_schedule_period"][0]
        assert period == {"start_period": 0, "limit": 22000.0}     # its own limit: the grid leaves room for all
        s = rig.stats()
        assert s["connected"] and s["booted"] and s["version"] == version and s["fallback_accepted"] == 1
        assert rig.service.stats()["refused"] == {}
        rig.until(lambda: rig.port("cs01.1")["connected"] and rig.port("cs01.2")["connected"], "both ports plugged")


REFUSALS = {
    "no certificate": (dict(cert=False), "ERR_OCPP_TLS_REFUSED"),
    "another CA": (dict(ca=None, cert="cs01", other_ca=True), "ERR_OCPP_TLS_REFUSED"),
    "plain ws": (dict(scheme="ws"), "ERR_OCPP_TLS_REFUSED"),
    "unknown station": (dict(sid="cs09"), "ERR_OCPP_UNKNOWN_STATION"),
    "another station's certificate": (dict(sid="cs01", path="cs02"), "ERR_OCPP_IDENTITY_MISMATCH"),
    "no OCPP 2 subprotocol": (dict(version="ocpp1.6"), "ERR_OCPP_SUBPROTOCOL"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_connections_are_counted_with_their_code(site_dir, case):
    kw, code = REFUSALS[case]
    kw = dict(kw)
    with Rig(site_dir) as rig:
        if kw.pop("other_ca", False):
            url = f"wss://localhost:{rig.service.port}/ocpp/cs01"
            st = rig.fleet.start(SimStation("cs01", url, client_context(site_dir / "other", "cs01",
                                                                        ca=site_dir / "pki" / "ca.pem")))
        else:
            st = rig.station(kw.pop("sid", "cs01"), **kw)
        assert st.ready.wait(HANG_S) and st.error is not None
        rig.until(lambda: rig.service.stats()["refused"].get(code), code)
        assert rig.service.stats()["refused"] == {code: 1}
        assert rig.service.stats()["connections"] == 0 and not rig.stats()["connected"]


def test_meter_values_become_the_ports_measured_power_and_soc(site_dir):
    with Rig(site_dir) as rig:
        st = rig.ready(rig.station("cs02", ev_max_charge_w=4000.0, soc=0.42))
        rig.until(lambda: rig.port("cs02.1")["measured_w"] == 4000.0, "the vehicle's 4 kW as measured power")
        port = rig.port("cs02.1")
        assert port["soc"] == pytest.approx(0.42)
        assert port["max_w"] == pytest.approx(16 * 3 * 230)     # NotifyEVChargingNeeds: 16 A on 3 phases at 230 V
        assert st.power[1] == 4000.0 and rig.stats("cs02")["values"] > 0


def test_a_station_that_never_reports_power_is_run_open_loop(site_dir):
    with Rig(site_dir) as rig:
        rig.ready(rig.station("cs02", report_power=False))
        rig.until(lambda: rig.port("cs02.1")["setpoint_w"] == 16 * 3 * 230, "the ramp to the vehicle's limit")
        rig.step(2)
        port = rig.port("cs02.1")
        assert port["measured_w"] == port["setpoint_w"]             # no measurement: it takes what it is given
        assert rig.stats("cs02")["values"] > 0


def test_a_setpoint_change_reaches_the_station_as_a_txprofile(site_dir):
    with Rig(site_dir) as rig:
        st = rig.ready(rig.station("cs02"))
        rig.until(lambda: tx_limits(st) and tx_limits(st)[-1] == pytest.approx(16 * 3 * 230),
                  "a TxProfile at the vehicle's limit")
        assert rig.ctrl.submit({"kind": "setpoint", "id": "sp1", "value_w": 5000.0, "expires_in_s": 600})
        rig.until(lambda: tx_limits(st)[-1] == 5000.0, "the 5 kW setpoint at the station")
        _, _, prof = st.received("TxProfile")[-1]
        assert prof["stack_level"] == 1 and prof["transaction_id"] == st.transactions[1] and prof["valid_to"]
        rig.until(lambda: rig.port("cs02.1")["measured_w"] == 5000.0, "the station following it")
        assert rig.stats("cs02")["setpoint_accepted"] == len(tx_limits(st))


@pytest.mark.parametrize("version", [V201, V21])
def test_a_discharge_setpoint_goes_out_signed_in_21_and_as_zero_in_201(site_dir, version):
    with Rig(site_dir) as rig:
        st = rig.ready(rig.station("cs02", version=version, needs=False, ev_max_discharge_w=11000.0, soc=0.8))
        rig.ev("cs02.1", v2g=1.0, capacity_wh=60000.0, min_soc=0.2, max_discharge_w=11000.0, max_charge_w=11000.0)
        assert rig.ctrl.submit({"kind": "setpoint", "id": "sp-dis", "value_w": -6000.0, "expires_in_s": 600})
        rig.until(lambda: rig.output("cs02.1")["setpoint_w"] == -6000.0, "the loop discharging the port")
        want = -6000.0 if version == V21 else 0.0
        rig.until(lambda: tx_limits(st) and tx_limits(st)[-1] == want, f"a TxProfile at {want} W")
        if version == V201:
            assert min(tx_limits(st)) >= 0.0                     # never a discharge
        else:
            period = st.received("TxProfile")[-1][2]["charging_schedule"][0]["charging_schedule_period"][0]
            assert period["operation_mode"] == "CentralSetpoint" and period["discharge_limit"] == -6000.0
            rig.until(lambda: rig.port("cs02.1")["measured_w"] == -6000.0, "the station discharging")


def test_rejected_profiles_are_counted_per_station_and_shown_in_status(site_dir):
    with Rig(site_dir) as rig:
        rig.ready(rig.station("cs02", answer="Rejected"))
        rig.until(lambda: rig.stats("cs02")["errors"].get("ERR_OCPP_REJECTED", 0) >= 2, "two refusals")
        s = rig.stats("cs02")
        assert s["errors"]["ERR_OCPP_REJECTED"] == s["fallback_sent"] + s["setpoint_sent"]
        assert s.get("setpoint_accepted", 0) == 0
        doc = {"site_name": "t", "site": {"cycle": 0, "binding": "-", "safe_state": [], "fleet_w": 0, "setpoint_w": None,
                                          "import_limit_w": 0, "export_limit_w": 0, "ports_charging": 0,
                                          "ports_discharging": 0, "frequency_hz": None},
               "nodes": [], "ports": [], "faults": [],
               "stats": {"cycles": 0, "overruns": 0, "wake_latency": {}, "compute": {}},
               "services": {"ocpp": rig.service.health()}}
        line = next(l for l in render(doc).splitlines() if l.strip().startswith("cs02"))
        assert "ocpp2.0.1 connected" in line and "ERR_OCPP_REJECTED" in line


def test_a_station_that_disconnects_unplugs_its_ports_at_once(site_dir):
    with Rig(site_dir) as rig:
        st = rig.ready(rig.station("cs01"))
        rig.until(lambda: rig.port("cs01.1")["connected"] and rig.port("cs01.2")["connected"], "both ports plugged")
        rig.fleet.call(st.cp._connection.close())
        deadline = time.monotonic() + HANG_S
        while rig.stats()["connected"]:                   # the network's part: the close reaching the service
            assert time.monotonic() < deadline
            time.sleep(0.01)
        rig.step()                                        # the loop's part: one cycle
        assert not rig.port("cs01.1")["connected"] and not rig.port("cs01.2")["connected"]
        assert rig.port("cs01.1")["setpoint_w"] == 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_serves_the_packaged_ocpp_depot_to_its_simulated_stations(tmp_path):
    """`v2g-rt run` on the example, as the README shows: the real-time loop, the service under the
    supervisor, a simulated station per EVSE over mutual TLS, `status` showing them."""
    text = resources.files("v2g_rt.data").joinpath("examples/ocpp-depot.toml").read_text()
    text = text.replace('listen = "0.0.0.0:9443"', f'listen = "127.0.0.1:{free_port()}"')
    text = text.replace('period_ms = 1.0', f'period_ms = 1.0\nstatus_socket = "{tmp_path}/status.sock"')
    text += "\n[rt]\npriority = 0\nlock_memory = false\n"
    (tmp_path / "depot.toml").write_text(text)
    pki_init(tmp_path / "pki", "cs01", "cs02", "cs03", "cs04")
    cli = [sys.executable, "-P", "-m", "v2g_rt.cli"]
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    proc = subprocess.Popen([*cli, "run", "--config", str(tmp_path / "depot.toml")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:                                        # until every station charges under the loop's profiles
            assert time.monotonic() < deadline and proc.poll() is None, "no depot within 60 s"
            time.sleep(0.3)
            r = subprocess.run([*cli, "status", "--json", "--socket", str(tmp_path / "status.sock")],
                               capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                continue
            doc = json.loads(r.stdout)
            stations = doc["services"].get("ocpp", {}).get("stations", {})
            if stations and all(s["connected"] and s.get("setpoint_accepted") for s in stations.values()):
                break
        assert doc["site"]["fleet_w"] > 0 and all(p["connected"] for p in doc["ports"])
        assert {sid: s["version"] for sid, s in stations.items()} == {
            "cs01": "ocpp2.0.1", "cs02": "ocpp2.0.1", "cs03": "ocpp2.1", "cs04": "ocpp2.1"}
        assert all(s["errors"] == {} for s in stations.values())
        text = subprocess.run([*cli, "status", "--socket", str(tmp_path / "status.sock")], capture_output=True,
                              text=True, timeout=30).stdout
        assert "    cs03         ocpp2.1 connected" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_a_station_that_never_answers_counts_timeouts_and_delays_no_other(site_dir):
    with Rig(site_dir) as rig:
        rig.service.call_timeout_s = 0.3
        hung = rig.ready(rig.station("cs01", answer=None))
        st = rig.ready(rig.station("cs02"))
        rig.until(lambda: rig.stats("cs01")["errors"].get("ERR_OCPP_TIMEOUT", 0) >= 2, "two timeouts")
        rig.until(lambda: tx_limits(st), "cs02's TxProfile")
        assert hung.received("TxDefaultProfile") and rig.stats("cs02")["errors"] == {}
        assert rig.stats("cs01")["connected"]            # a slow station is not a lost one


def test_bad_frames_get_callerrors_and_keep_the_connection(site_dir):
    with Rig(site_dir) as rig:
        st = rig.ready(rig.station("cs02"))
        for frame in ('{not json', '[2,"u1","NoSuchAction",{}]', '[2,"u2","Heartbeat",{"bogus":1}]',
                      '[2,"u3","GetDisplayMessages",{"requestId":1}]', '["x"]'):
            rig.fleet.call(st.send_raw(frame))
        rig.until(lambda: len(st.callerrors) == 5, "five CALLERRORs")
        assert [(e[1], e[2]) for e in st.callerrors] == [
            ("-1", "FormatViolation"), ("u1", "NotImplemented"), ("u2", "FormatViolation"),
            ("u3", "NotSupported"),                       # an OCPP action, but one a station never sends us
            ("-1", "PropertyConstraintViolation")]
        assert rig.stats("cs02")["errors"] == {"ERR_OCPP_BAD_MESSAGE": 5}
        values = rig.stats("cs02")["values"]
        rig.until(lambda: rig.stats("cs02")["values"] > values, "reports after the bad frames")
        assert rig.stats("cs02")["connected"] and rig.service.stats()["connections"] == 1


def test_values_out_of_range_are_refused_by_the_gate_and_counted(site_dir):
    with Rig(site_dir) as rig:
        rig.ready(rig.station("cs02", soc=1.4))           # SoC 140 %
        rig.until(lambda: rig.stats("cs02").get("rejected"), "the gate's refusal")
        (code,) = rig.stats("cs02")["rejected"]
        assert code.startswith("ERR_MEAS_")
        assert rig.ctrl.stats()["rejected_by_source"][port_source("cs02.1", "soc")] == {code: mock.ANY}
        assert rig.port("cs02.1")["soc"] != pytest.approx(1.4)


def test_a_station_that_reconnects_without_booting_gets_its_profile_again(site_dir):
    with Rig(site_dir) as rig:
        first = rig.ready(rig.station("cs02"))
        rig.until(lambda: tx_limits(first), "the first TxProfile")
        rig.fleet.call(first.cp._connection.close())
        rig.until(lambda: not rig.stats("cs02")["connected"], "the disconnect")
        again = rig.ready(rig.station("cs02", boot=False))
        rig.until(lambda: tx_limits(again) and rig.port("cs02.1")["connected"], "a TxProfile after the reconnect")
        assert not again.received("TxDefaultProfile") and rig.stats("cs02")["boots"] == 1


def test_a_station_falls_back_to_the_default_when_our_profile_expires(site_dir):
    with Rig(site_dir) as rig:
        st = rig.ready(rig.station("cs02"))
        assert rig.ctrl.submit({"kind": "setpoint", "id": "sp", "value_w": 5000.0, "expires_in_s": 600})
        rig.until(lambda: tx_limits(st) and tx_limits(st)[-1] == 5000.0, "the 5 kW TxProfile")
        valid_to = dt.datetime.fromisoformat(st.received("TxProfile")[-1][2]["valid_to"].replace("Z", "+00:00"))
        assert valid_to - dt.datetime.now(dt.timezone.utc) > dt.timedelta(seconds=25)   # at least 30 s (skew)
        assert st.limit_w(1, now=valid_to - dt.timedelta(seconds=1)) == 5000.0
        assert st.limit_w(1, now=valid_to + dt.timedelta(seconds=1)) == 22000.0         # the stack-level-0 default


FLEET_SIZE = 50


def test_fifty_stations_connecting_at_once(tmp_path):
    ids = [f"cs{k:02d}" for k in range(1, FLEET_SIZE + 1)]
    pki_init(tmp_path / "pki", *ids)
    text = SITE[:SITE.index("[node.cs01]")] + "".join(
        f'[node.{sid}]\nkind = "evse"\nparent = "grid"\nlink = "ocpp"\nport_max_charge_w = 11000\n' for sid in ids)
    (tmp_path / "site.toml").write_text(text + SITE[SITE.index("[ocpp]"):])
    with Rig(tmp_path) as rig:
        stations = [rig.station(sid, report_s=1.0) for sid in ids]
        cycle = rig.ctrl.snapshot().cycle
        rig.until(lambda: all(s.ready.is_set() for s in stations) and
                  all(rig.stats(sid)["booted"] for sid in ids), "every station booted")
        assert [s.error for s in stations] == [None] * FLEET_SIZE
        rig.until(lambda: all(s.received("TxDefaultProfile") and tx_limits(s) for s in stations), "every profile")
        assert sum(rig.service.stats()["stations"][sid]["errors"] != {} for sid in ids) == 0
        assert rig.ctrl.snapshot().cycle > cycle                           # the loop was stepped throughout
        snap = rig.ctrl.snapshot()
        assert snap.ports["connected"].all() and snap.site["fleet_w"] > 0


def test_a_flooding_station_is_throttled_and_the_others_are_served(site_dir):
    with Rig(site_dir) as rig:
        flood = rig.ready(rig.station("cs01"))
        other = rig.ready(rig.station("cs02"))

        async def burst(n):
            for i in range(n):
                await flood.send_raw(f'[2,"f{i}","Heartbeat",{{}}]')

        rig.fleet.call(burst(150))                        # 50 past the burst allowance
        rig.until(lambda: rig.stats()["throttled"] >= 1 and rig.stats()["heartbeats"] == 150, "the flood handled")
        values = rig.stats("cs02")["values"]
        rig.until(lambda: rig.stats("cs02")["values"] > values, "the other station's reports")
        assert other.error is None and rig.stats("cs02").get("throttled", 0) == 0


def test_certificates_near_their_expiry_are_warned_about_at_start_and_connect(tmp_path, caplog, monkeypatch):
    from v2g_rt import pki

    monkeypatch.setattr(pki, "LEAF_DAYS", 20)
    pki.init(tmp_path / "pki", ["cs02"])
    (tmp_path / "site.toml").write_text(SITE)
    with caplog.at_level("WARNING", "v2g_rt"), Rig(tmp_path) as rig:
        assert [r.message for r in caplog.records if "ERR_OCPP_CERT_EXPIRING" in r.message] == [
            f"ERR_OCPP_CERT_EXPIRING: {tmp_path / 'pki' / 'controller.pem'} expires in 19 days"]
        rig.ready(rig.station("cs02"))
        assert rig.stats("cs02")["errors"] == {"ERR_OCPP_CERT_EXPIRING": 1}


def test_an_ac_vehicle_without_soc_or_capacity_still_gets_power(site_dir):
    with Rig(site_dir) as rig:
        st = rig.ready(rig.station("cs02", soc=None))
        rig.until(lambda: rig.port("cs02.1")["measured_w"] == 11000.0, "the vehicle's 11 kW, with no SoC reported")
        port = rig.port("cs02.1")
        assert np.isnan(port["soc"]) and port["setpoint_w"] >= 11000.0 and st.power[1] == 11000.0


def test_a_stop_goes_out_at_once_past_the_rate_limit(site_dir):
    with Rig(site_dir) as rig:
        st = rig.ready(rig.station("cs02"))
        rig.until(lambda: tx_limits(st) and tx_limits(st)[-1] > 0, "a TxProfile that charges")
        rig.service.min_interval_s = 3600.0              # nothing but a stop may go out now
        assert rig.ctrl.submit({"kind": "load_shed", "id": "shed", "value_w": 0.0, "expires_in_s": 600})
        rig.until(lambda: tx_limits(st)[-1] == 0.0, "the 0 W TxProfile")


def test_the_simulated_plant_leaves_ocpp_ports_to_their_stations(site_dir):
    from v2g_rt.sim.plant import Plant, PlantConfig

    text = SITE.replace('[node.cs02]\nkind = "evse"\nparent = "grid"\nlink = "ocpp"',
                        '[node.cs02]\nkind = "evse"\nparent = "grid"\nlink = "sim"')
    path = site_dir / "mixed.toml"
    path.write_text(text)
    site = config.load(path)
    ctrl = Controller(site, clock="virtual")
    ctrl.step(S)
    plant = Plant(site, ctrl, PlantConfig(occupancy=1.0), S)
    assert plant.mine.tolist() == [False, False, True]            # cs01.1, cs01.2 are OCPP; cs02.1 simulated
    plant.publish(S)
    ctrl.step(2 * S)
    assert ctrl.snapshot().ports["connected"].tolist() == [False, False, True]
