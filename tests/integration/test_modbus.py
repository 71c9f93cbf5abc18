"""The Modbus service against real pymodbus servers on loopback (v2g_rt.sim.peers.modbus): the
far side is a meter reached over TCP; the controller runs in virtual time, stepped here. Deadlines
are counted in the device's polls and in virtual time; wall-clock time only guards against a hang."""
import math
import subprocess
import sys

import pytest

from helpers import ServiceRig
from v2g_rt import config
from v2g_rt.config import ConfigError
from v2g_rt.services.modbus import ModbusService
from v2g_rt.services.status import render
from v2g_rt.sim.peers.modbus import MeterPeer

STEP_NS = ServiceRig.STEP_NS          # one cycle of the test sites

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

    def __init__(self, tmp_path, *sections):
        path = tmp_path / "site.toml"
        path.write_text(SITE + "\n".join(sections))
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

def _problems(tmp_path, section, map_doc=None):
    if map_doc is not None:
        (tmp_path / "m.json").write_text(map_doc)
    path = tmp_path / "site.toml"
    path.write_text(SITE + section)
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
    assert any("ERR_LINK_UNAVAILABLE" in p and "not in this version" in p for p in evse)
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
