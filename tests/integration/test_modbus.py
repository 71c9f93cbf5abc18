"""The Modbus service against real pymodbus servers on loopback (v2g_rt.sim.peers.modbus): the
far side is a meter reached over TCP; the controller runs in virtual time, stepped here. Deadlines
are counted in the device's polls and in virtual time; wall-clock time only guards against a hang."""
import json
import math
import os
import subprocess
import sys
import time

import pytest

from helpers import ServiceRig
from v2g_rt import config
from v2g_rt.config import ConfigError
from v2g_rt.services.modbus import ModbusService
from v2g_rt.services.status import render
from v2g_rt import modbus_maps
from v2g_rt.sim.peers.modbus import Charger, ChargerFleet, MeterPeer

STEP_NS = ServiceRig.STEP_NS          # one cycle of the test sites
HANG_S = ServiceRig.HANG_S

SITE = """
[site]
name = "modbus-test"
period_ms = 10
[node.grid]
kind = "grid"
import_limit_w = 100000
export_limit_w = 100000
meter_max_age_s = 2
base_load_w = [0, 50000]
[node.tx1]
kind = "transformer"
parent = "grid"
import_limit_w = 100000
export_limit_w = 100000
meter_max_age_s = 2
[node.evse01]
kind = "evse"
parent = "tx1"
port_max_charge_w = 11000
"""


def meter(name, port, map_="sunspec", node="grid", period_ms=50, extra=""):
    return (f'[modbus.{name}]\nrole = "meter"\nhost = "127.0.0.1"\nport = {port}\nunit = 1\nmap = "{map_}"\n'
            f'period_ms = {period_ms}\nnode = "{node}"\n{extra}')


class Rig(ServiceRig):
    """A virtual-time controller and its Modbus service."""

    def __init__(self, tmp_path, *sections, site=SITE):
        path = tmp_path / "site.toml"
        path.write_text(site + "\n".join(sections))
        super().__init__(config.load(path))
        self.service = ModbusService(self.ctrl, self.site.sections["modbus"])

    def __enter__(self):
        self.service.start()
        return self

    def __exit__(self, *exc):
        self.service.stop()

    def dev(self, name):
        return self.service.stats()["devices"][name]

    def measured(self, node="grid"):
        return float(self.ctrl.snapshot().node(node)["measured_w"])


def test_sunspec_meter_power_change_reaches_the_loop(tmp_path):
    with MeterPeer("sunspec", model=203, power_w=12_000, frequency_hz=50.02) as peer, \
            Rig(tmp_path, meter("main", peer.port)) as rig:
        rig.until(lambda: rig.measured() == 12_000, "the first reading")
        assert rig.dev("main")["map"] == "sunspec model 203 at 40070"
        assert rig.ctrl.snapshot().site["frequency_hz"] == pytest.approx(50.02)
        polls = rig.dev("main")["polls"]
        peer.set_power(-8_000)                            # export
        rig.until(lambda: rig.measured() == -8_000, "the changed reading")
        # the change is in the image within two polls of the device (the one under way, the next)
        assert rig.dev("main")["polls"] - polls <= 2
        assert rig.dev("main")["errors"] == {}


def test_a_meter_with_phases_feeds_each_phase_and_the_loop_derives_the_non_ev_currents(tmp_path):
    site = SITE.replace("base_load_w = [0, 50000]", "base_load_w = [0, 50000]\nphase_limit_a = 63\nmeter_phases = true")
    with MeterPeer("sunspec", model=203, power_w=13_800) as peer, \
            Rig(tmp_path, meter("main", peer.port), site=site) as rig:
        peer.set_power(13_800, (6_900.0, 4_600.0, 2_300.0))
        row = lambda: rig.ctrl.snapshot().node("grid")       # noqa: E731
        rig.until(lambda: row()["non_ev_l1_a"] == pytest.approx(30.0), "the per-phase readings")
        assert (row()["non_ev_l2_a"], row()["non_ev_l3_a"]) == pytest.approx((20.0, 10.0))
        assert rig.ctrl.latest("node/grid/power_l1_w")[0] == pytest.approx(6_900.0)


def test_meter_phases_needs_a_meter_and_a_map_with_the_phases(tmp_path):
    site = SITE.replace("meter_max_age_s = 2\nbase_load_w", "meter_phases = true\nbase_load_w")
    with pytest.raises(ConfigError) as e:
        config.parse(site, "site.toml")
    assert any(p.option == "meter_phases" and "meter_max_age_s" in p.message for p in e.value.problems)
    site = SITE.replace("base_load_w = [0, 50000]", "base_load_w = [0, 50000]\nmeter_phases = true")
    got = _problems(tmp_path, meter("main", 502, "simple-meter"), site=site)
    assert any("[modbus.main] map" in p and "power_l1_w, power_l2_w, power_l3_w" in p for p in got), got


def test_sunspec_float_meter(tmp_path):
    with MeterPeer("sunspec", model=213, power_w=4321.5) as peer, Rig(tmp_path, meter("main", peer.port)) as rig:
        rig.until(lambda: rig.measured() == pytest.approx(4321.5), "a float reading")
        assert rig.dev("main")["map"] == "sunspec model 213 at 40070"


def test_simple_meter_at_40001_and_the_modbus_read_command(tmp_path):
    with MeterPeer("simple", power_w=23_450, reactive_var=-1_200) as peer, \
            Rig(tmp_path, meter("main", peer.port, "simple-meter")) as rig:
        rig.until(lambda: rig.measured() == 23_450, "the simple meter's power")
        assert rig.ctrl.snapshot().site["frequency_hz"] is None or math.isnan(rig.ctrl.snapshot().site["frequency_hz"])
        r = subprocess.run([sys.executable, "-P", "-m", "v2g_rt.cli", "modbus", "read", "--config",
                            str(tmp_path / "site.toml"), "main"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
        assert "holding 40001" in lines["power_w"] and lines["power_w"].endswith("23450 W")
        assert "holding 40002" in lines["reactive_power_var"] and lines["reactive_power_var"].endswith("-1200 var")


def test_exception_02_is_counted_and_never_data(tmp_path):
    with MeterPeer("simple", power_w=5_000, exception=2) as peer, \
            Rig(tmp_path, meter("main", peer.port, "simple-meter")) as rig:
        rig.until(lambda: rig.dev("main")["errors"].get("ERR_MODBUS_EXCEPTION_02", 0) >= 5, "five exceptions")
        d = rig.dev("main")
        assert d["values"] == 0 and math.isnan(rig.measured())
        assert d["connected"] and d["reconnects"] == 0      # the device answers: polled on, not backed off


def test_busy_is_retried_not_a_failure(tmp_path):
    with MeterPeer("simple", power_w=5_000, exception=6) as peer, \
            Rig(tmp_path, meter("main", peer.port, "simple-meter")) as rig:
        rig.until(lambda: rig.dev("main")["errors"].get("ERR_MODBUS_EXCEPTION_06", 0) >= 3, "busy answers")
        peer.exception = None
        rig.until(lambda: rig.measured() == 5_000, "the reading after busy")
        assert rig.dev("main")["reconnects"] == 0


def test_sunspec_discovery_fails_on_a_device_without_sunspec(tmp_path):
    with MeterPeer("simple") as peer, Rig(tmp_path, meter("main", peer.port)) as rig:
        rig.until(lambda: rig.dev("main")["errors"].get("ERR_MODBUS_DISCOVERY", 0) >= 1, "discovery to fail")
        assert rig.dev("main")["values"] == 0


def test_a_silent_meter_goes_stale_and_its_timeouts_are_counted(tmp_path):
    with MeterPeer("simple", power_w=7_000) as peer, \
            Rig(tmp_path, meter("main", peer.port, "simple-meter", period_ms=100)) as rig:
        rig.until(lambda: rig.measured() == 7_000, "a reading before the meter falls silent")
        peer.silent = True
        rig.until(lambda: rig.dev("main")["errors"].get("ERR_MODBUS_TIMEOUT", 0) >= 1, "a timeout")
        last_value_ns = rig.t
        rig.step(int(2.0e9 // STEP_NS) + 1)               # the meter's max age (2 s) in virtual time
        assert rig.t - last_value_ns > 2e9 and math.isnan(rig.measured())
        assert rig.dev("main")["connected"] is False or rig.dev("main")["reconnects"] >= 1
        text = render({"site_name": "x", "site": {"cycle": 0, "binding": "-", "safe_state": [], "fleet_w": 0,
                       "setpoint_w": None, "import_limit_w": 0, "export_limit_w": 0, "ports_charging": 0,
                       "ports_discharging": 0, "frequency_hz": None}, "nodes": [], "ports": [], "faults": [],
                       "stats": {"cycles": 0, "overruns": 0, "wake_latency": {}, "compute": {}},
                       "services": {"modbus": {"alive": True, **rig.service.stats()}}})
        assert "ERR_MODBUS_TIMEOUT" in text and "main" in text


def test_a_slow_meter_does_not_slow_a_fast_one(tmp_path):
    with MeterPeer("simple", power_w=1_000) as fast, MeterPeer("simple", power_w=2_000, delay_s=0.2) as slow, \
            Rig(tmp_path, meter("fast", fast.port, "simple-meter", "grid", 50),
                meter("slow", slow.port, "simple-meter", "tx1", 50)) as rig:
        rig.until(lambda: rig.dev("fast")["polls"] >= 40, "40 polls of the fast meter")
        f, s = rig.dev("fast"), rig.dev("slow")
        assert f["late_polls"] <= f["polls"] // 10           # it keeps its 50 ms rate
        assert s["polls"] <= f["polls"] // 3                 # the slow one takes 200 ms a poll ...
        assert s["late_polls"] >= s["polls"] - 1             # ... and knows it is late
        assert f["errors"] == {} and s["errors"] == {}
        assert rig.measured("grid") == 1_000


@pytest.mark.parametrize("word, code", [(0x8000, "ERR_MODBUS_NOT_IMPLEMENTED"), (20, "ERR_MODBUS_SCALE_FACTOR")])
def test_not_implemented_values_and_bad_scale_factors_never_reach_the_image(tmp_path, word, code):
    peer = MeterPeer("sunspec", power_w=3_000)
    register = peer.model_start + (16 if code == "ERR_MODBUS_NOT_IMPLEMENTED" else 20)   # W, or W_SF
    peer.overrides[register] = word
    with peer, Rig(tmp_path, meter("main", peer.port)) as rig:
        rig.until(lambda: rig.dev("main")["errors"].get(code, 0) >= 3, code)
        assert math.isnan(rig.measured())                    # frequency still feeds; power never did
        del peer.overrides[register]
        rig.until(lambda: rig.measured() == 3_000, "the reading once the register is valid")


@pytest.mark.parametrize("misbehaviour", [{"answer_unit": 9}, {"short_answer": True}])
def test_malformed_answers_are_named_and_never_data(tmp_path, misbehaviour):
    with MeterPeer("simple", power_w=3_000, **misbehaviour) as peer, \
            Rig(tmp_path, meter("main", peer.port, "simple-meter")) as rig:
        rig.until(lambda: rig.dev("main")["errors"].get("ERR_MODBUS_BAD_RESPONSE", 0) >= 2, "bad answers")
        assert rig.dev("main")["values"] == 0 and math.isnan(rig.measured())


# ------------------------------------------------------------------ config

def _problems(tmp_path, section, map_doc=None, site=SITE):
    if map_doc is not None:
        (tmp_path / "m.json").write_text(map_doc)
    path = tmp_path / "site.toml"
    path.write_text(site + section)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    return [str(p) for p in e.value.problems]


def _map(*values, addressing="modicon"):
    import json
    return json.dumps({"addressing": addressing, "values": list(values)})


POWER = {"name": "power_w", "register": 40001, "type": "int16", "unit": "W"}


@pytest.mark.parametrize("doc, found", [
    (_map({**POWER, "type": "int12"}), "register 40001: type 'int12' is not one of"),
    (_map({**POWER, "type": "int32"}, {"name": "q", "register": 40002, "type": "int16", "unit": "var"}),
     "register 40002: q (int16) overlaps power_w at register 40001"),
    (_map({**POWER, "register": 1}), "register 1: 1 is not a Modicon register reference"),
    (_map({**POWER, "unit": "kW"}), "unit: expected one of"),
    (_map({**POWER, "register": 70000}, addressing="pdu"), "register 70000: a PDU address is 0-65535"),
    (_map({"name": "q", "register": 40002, "type": "int16", "unit": "var"}), "needs a value named 'power_w'"),
    ("{not json", "not valid JSON"),
])
def test_bad_maps_are_config_errors_naming_file_and_register(tmp_path, doc, found):
    problems = _problems(tmp_path, meter("main", 502, "m.json"), doc)
    assert len(problems) == 1 and "[modbus.main] map" in problems[0] and "m.json" in problems[0], problems
    assert found in problems[0], problems


def test_config_names_and_refusals(tmp_path):
    evse = _problems(tmp_path, meter("main", 502).replace('"meter"', '"evse"'))
    assert any("[modbus.main] node" in p and "is a grid node" in p for p in evse)
    assert any("ERR_CONFIG_MODBUS_MAP" in p and "not an EVSE map" in p for p in evse)
    assert any("no such map file" in p for p in _problems(tmp_path, meter("main", 502, "missing.json")))
    unmetered = _problems(tmp_path, meter("main", 502, node="evse01"))
    assert any("ERR_CONFIG_DEVICE" in p and "node/evse01/power_w" in p for p in unmetered)
    twice = _problems(tmp_path, meter("a", 502) + meter("b", 503))
    assert any("already fed by [modbus.a]" in p for p in twice)
    typo = _problems(tmp_path, meter("main", 502, extra="perod_ms = 5\n"))
    assert any("did you mean 'period_ms'" in p for p in typo)


def test_defaults_and_frequency_only_at_the_grid_connection(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(SITE + '[modbus.m]\nrole = "meter"\nhost = "10.0.0.5"\nmap = "sunspec"\nnode = "tx1"\n')
    (cfg,) = config.load(path).sections["modbus"]
    assert (cfg.port, cfg.unit, cfg.period_s) == (502, 1, 0.1)
    from v2g_rt.services.modbus import feeds
    assert [f.source for f in feeds(config.load(path))] == ["node/tx1/power_w"]      # not the root: no frequency


# ------------------------------------------------------------------ EVSEs driven over Modbus

EVSE_SITE = """
[site]
name = "modbus-evse-test"
period_ms = 10
[control]
output_hold_s = 2
[node.grid]
kind = "grid"
import_limit_w = 1000000
export_limit_w = 1000000
"""
QUASAR = modbus_maps.load(modbus_maps.resolve("wallbox-quasar"))


def charger_sections(ports, keepalive_ms=500, period_ms=100):
    return [f'[node.c{i:02d}]\nkind = "evse"\nparent = "grid"\nlink = "modbus"\nport_max_charge_w = 7400\n'
            f'port_max_discharge_w = 7400\n[modbus.c{i:02d}]\nrole = "evse"\nhost = "127.0.0.1"\nport = {port}\n'
            f'unit = 1\nmap = "wallbox-quasar"\nnode = "c{i:02d}"\nperiod_ms = {period_ms}\n'
            f'keepalive_ms = {keepalive_ms}\n' for i, port in enumerate(ports)]


def fleet(n, **ev):
    return ChargerFleet([Charger(QUASAR, **ev) for _ in range(n)])


def evse_rig(tmp_path, chargers, **kw):
    return Rig(tmp_path, *charger_sections(chargers.ports, **kw), site=EVSE_SITE)


def port_row(rig, i):
    return rig.ctrl.snapshot().port(f"c{i:02d}.1")


def test_a_charger_is_set_up_driven_and_read_back(tmp_path):
    with fleet(1, soc=0.4) as chargers, evse_rig(tmp_path, chargers) as rig:
        c = chargers.chargers[0]
        rig.until(lambda: c.set_up and c.timeout_s == 2 and c.enabled, "remote control, timeout, start")
        # no operator setpoint: the port runs at its rating, the charger is told so and does it
        rig.until(lambda: c.setpoint_w == 7400 and port_row(rig, 0)["measured_w"] == 7400, "7.4 kW and its feedback")
        rig.until(lambda: port_row(rig, 0)["soc"] == pytest.approx(0.4, abs=0.01), "the SoC (a low-priority value)")
        assert rig.ctrl.submit({"id": "s1", "kind": "setpoint", "value_w": 3000, "expires_in_s": 600})
        rig.until(lambda: c.setpoint_w == 3000 and c.power_w == 3000, "the operator's 3 kW at the charger")
        rig.until(lambda: port_row(rig, 0)["measured_w"] == 3000, "3 kW measured")
        c.plugged = False                                   # the vehicle leaves: state 0 -> not connected
        rig.until(lambda: not c.enabled and c.setpoint_w == 0, "the charger stopped and set to 0 W")
        rig.until(lambda: rig.dev("c00")["setpoint_w"] == 0, "the charger's answer to the 0 W write")
        d = rig.dev("c00")
        assert d["errors"] == {} and d["enabled"] is False and d["port"] == "c00.1"
        text = render({"site_name": "x", "site": {"cycle": 0, "binding": "-", "safe_state": [], "fleet_w": 0,
                       "setpoint_w": None, "import_limit_w": 0, "export_limit_w": 0, "ports_charging": 0,
                       "ports_discharging": 0, "frequency_hz": None}, "nodes": [], "ports": [], "faults": [],
                       "stats": {"cycles": 0, "overruns": 0, "wake_latency": {}, "compute": {}},
                       "services": {"modbus": {"alive": True, **rig.service.stats()}}})
        assert "port c00.1: 0.0 kW, stopped" in text


def test_50_chargers_driven_at_once_and_the_keepalive_holds(tmp_path):
    with fleet(50) as chargers, evse_rig(tmp_path, chargers, keepalive_ms=500) as rig:
        cs = chargers.chargers
        rig.until(lambda: all(c.enabled and c.power_w == 7400 for c in cs), "every charger at its rating")
        rig.until(lambda: all(port_row(rig, i)["measured_w"] == 7400 for i in range(50)), "every power read back")
        assert rig.ctrl.submit({"id": "s50", "kind": "setpoint", "value_w": 100_000, "expires_in_s": 3600})
        rig.until(lambda: sum(c.power_w for c in cs) == pytest.approx(100_000, abs=50), "100 kW at the chargers")
        rig.until(lambda: sum(port_row(rig, i)["measured_w"] for i in range(50)) == pytest.approx(100_000, abs=50),
                  "100 kW read back")
        writes = [c.writes for c in cs]
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5.0:                  # 2.5 of the chargers' 2 s timeouts, in wall time
            rig.step()
            time.sleep(0.002)
        chargers.advance()
        assert sum(c.timeouts for c in cs) == 0 and sum(c.power_w for c in cs) == pytest.approx(100_000, abs=50)
        assert min(c.writes - w for c, w in zip(cs, writes)) >= 5      # keep-alives every 500 ms
        assert all(rig.dev(f"c{i:02d}")["errors"] == {} for i in range(50))


def test_a_charger_whose_controller_is_gone_stops_by_its_own_timeout(tmp_path):
    with fleet(1) as chargers:
        c = chargers.chargers[0]
        with evse_rig(tmp_path, chargers) as rig:
            rig.until(lambda: c.power_w == 7400, "charging")
        # the service stopped while the loop still says 7.4 kW: the charger keeps it, for its timeout only
        deadline = time.monotonic() + HANG_S
        while c.power_w != 0:
            assert time.monotonic() < deadline, "the charger never timed out"
            time.sleep(0.1)
            chargers.advance()
        assert c.timeouts == 1 and not c.enabled


def test_a_refused_write_is_counted_and_written_again(tmp_path):
    with fleet(1) as chargers, evse_rig(tmp_path, chargers) as rig:
        c = chargers.chargers[0]
        rig.until(lambda: c.power_w == 7400, "charging")
        c.exception = 4                                     # server device failure, reads and writes
        rig.until(lambda: rig.dev("c00")["errors"].get("ERR_MODBUS_EXCEPTION_04", 0) >= 3, "refusals counted")
        assert math.isnan(port_row(rig, 0)["measured_w"]) or rig.dev("c00")["connected"]
        c.exception = None
        assert rig.ctrl.submit({"id": "s2", "kind": "setpoint", "value_w": 2000, "expires_in_s": 600})
        rig.until(lambda: c.setpoint_w == 2000, "the next setpoint after the charger recovered")


def test_safe_outputs_tell_every_charger_0_w_and_stop(tmp_path):
    with fleet(3) as chargers:
        with evse_rig(tmp_path, chargers) as rig:
            rig.until(lambda: all(c.power_w == 7400 for c in chargers.chargers), "charging")
        r = subprocess.run([sys.executable, "-P", "-m", "v2g_rt.cli", "safe-outputs", "--config",
                            str(tmp_path / "site.toml")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "3 EVSEs on link 'modbus': 3 chargers told 0 W and stop" in r.stdout
        chargers.advance()
        assert all(c.setpoint_w == 0 and not c.enabled and c.power_w == 0 for c in chargers.chargers)


def test_safe_outputs_name_a_charger_that_cannot_be_reached(tmp_path):
    (tmp_path / "site.toml").write_text(EVSE_SITE + "\n".join(charger_sections([1])))
    r = subprocess.run([sys.executable, "-P", "-m", "v2g_rt.cli", "safe-outputs", "--config",
                        str(tmp_path / "site.toml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "[modbus.c00] 127.0.0.1:1: ERR_MODBUS_CONNECT" in r.stderr


@pytest.mark.parametrize("change, option, words", [
    ('link = "modbus"\n', "link", "no [modbus.NAME] with role = \"evse\""),
    ('map = "simple-meter"\n', "map", "not an EVSE map"),
    ('port_max_charge_w = 40000\n', "map", "holds -32767 to 32767 W"),
    ('keepalive_ms = 1500\n', "keepalive_ms", "at least twice within it"),
    ('connector = 2\n', "connector", "has 1 port(s)"),
])
def test_evse_config_errors_name_the_option(tmp_path, change, option, words):
    text = charger_sections([1502])[0]
    key = change.split(" = ")[0]
    if key == "link":                                       # an EVSE on modbus with no section driving it
        text = text.split("[modbus.c00]")[0]
    else:
        text = "\n".join(line for line in text.splitlines() if not line.startswith(key + " ")) + "\n" + change
        if key == "port_max_charge_w":                      # a node option: move it before [modbus.c00]
            text = text.replace(change, "").replace("[modbus.c00]", change + "[modbus.c00]")
    (tmp_path / "site.toml").write_text(EVSE_SITE + text)
    with pytest.raises(ConfigError) as e:
        config.load(tmp_path / "site.toml")
    assert any(p.option == option and words in p.message for p in e.value.problems), str(e.value)


def test_the_whole_controller_drives_a_modbus_charger_beside_simulated_evses(tmp_path):
    """`v2g-rt run` with one simulated EVSE and one Modbus charger: the plant reports only its own
    port, the service the charger's; at the end the charger is told 0 W and stop."""
    site = EVSE_SITE.replace('period_ms = 10', f'period_ms = 1\nstatus_socket = "{tmp_path}/status.sock"')
    site += '[rt]\npriority = 0\nlock_memory = false\n[node.sim01]\nkind = "evse"\nparent = "grid"\nlink = "sim"\n'
    site += 'port_max_charge_w = 11000\nport_max_discharge_w = 11000\n[sim]\noccupancy = 1.0\n'
    with fleet(1) as chargers:
        c = chargers.chargers[0]
        (tmp_path / "site.toml").write_text(site + "\n".join(charger_sections(chargers.ports)))
        env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
        r = subprocess.run([sys.executable, "-P", "-m", "v2g_rt.cli", "run", "--config", str(tmp_path / "site.toml"),
                            "--duration", "4"], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout[r.stdout.index("{"):])
        assert summary["plant"]["limit_violations"] == 0
        assert c.set_up and c.writes >= 4 and c.reads >= 20
        chargers.advance()
        assert c.setpoint_w == 0 and not c.enabled and c.power_w == 0 and c.timeouts == 0
