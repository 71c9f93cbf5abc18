"""`v2g-rt calibrate` on the packaged simulated site, end to end: clean it passes and writes the
file `run` loads; each injected miswiring is named, nothing is written, the exit is non-zero;
an interrupted calibration leaves the previous file as it was."""
import os
import signal
import stat
import subprocess
import sys
import threading
import tomllib
from importlib import resources

import pytest

from v2g_rt import calibration, config, modbus_maps
from v2g_rt.calibrate import calibrate
from v2g_rt.sim.peers.modbus import Charger, ChargerFleet, MeterPeer

CLI = [sys.executable, "-P", "-m", "v2g_rt.cli"]


def v2g(*args, env=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)


def test_calibrate_on_a_fresh_machine_passes_and_run_loads_the_result(tmp_path):
    state = tmp_path / "state"
    r = v2g("calibrate", env=dict(os.environ, STATE_DIRECTORY=str(state)))     # no --config, no --out
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    site = config.load()
    addresses = sorted(n.can_address for n in site.nodes if n.can_address is not None and n.heatsink_c)
    assert lines[0].startswith(f"step  1/56  CAN: J1939 addresses of {len(addresses)} EVSEs heard")
    assert lines[-1].startswith("calibration passed: 56 steps") and str(state / "calibration.toml") in lines[-1]
    assert sum(line.strip().startswith("ok:") for line in lines) == 56
    path = state / "calibration.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(state.stat().st_mode) == 0o700
    doc = tomllib.loads(path.read_text())
    assert doc["calibration"]["site"] == "sim-depot-50"
    assert doc["can"]["heard"] == addresses
    assert doc["i2c"]["tx1_ambient"]["identity"] == 0x0117
    assert doc["i2c"]["tx1_ambient"]["gain"] == pytest.approx(1.0, abs=1e-3)
    assert doc["meter"]["grid"] == {"sign": 1, "gain": pytest.approx(1.0, abs=0.01)}
    assert {p["phase"] for p in doc["port"].values()} == {"L1"} and len(doc["port"]) == 50
    for channel in ("adc1.tx1_top_oil", "adc1.evse25_heatsink"):       # a 4-20 mA and a 0-10 V input
        assert doc["spi"][channel]["gain"] == pytest.approx(1.0, abs=1e-3)
        assert doc["spi"][channel]["offset"] == pytest.approx(0.0, abs=0.01)
    site = calibration.load(path, site, required=True)
    assert site.sections["i2c"][0].gain == doc["i2c"]["tx1_ambient"]["gain"]
    assert {ch.name: ch.offset for ch in site.sections["spi"][0].channels} == {
        c.split(".")[1]: doc["spi"][c]["offset"] for c in ("adc1.tx1_top_oil", "adc1.evse25_heatsink")}
    site_file = tmp_path / "site.toml"
    site_file.write_text(resources.files("v2g_rt.data").joinpath("default-site.toml").read_text())
    r = v2g("check", str(site_file), "--calibration", str(path))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("inject, code, named", [
    ("reversed-ct", "ERR_CALIBRATION_CT_REVERSED", "meter.grid.sign"),
    ("swapped-phases", "ERR_CALIBRATION_PHASE", "port.evse01.1.phase"),
    ("dead-channel", "ERR_CALIBRATION_DEAD_CHANNEL", "spi.adc1.tx1_top_oil.span"),
])
def test_an_injected_miswiring_is_named_and_nothing_is_written(tmp_path, inject, code, named):
    out = tmp_path / "calibration.toml"
    out.write_text("# the previous calibration\n")
    r = v2g("calibrate", "--out", str(out), "--inject", inject)
    assert r.returncode == 1, r.stdout
    failed = [line for line in r.stderr.splitlines() if line.startswith("  ")]
    assert failed and failed[0].strip().startswith(f"{named}: {code}: ")
    assert all(code in line for line in failed)        # the injected fault, no other
    assert "nothing written" in r.stderr
    assert out.read_text() == "# the previous calibration\n" and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_swapped_phases_names_both_ports(tmp_path):
    r = v2g("calibrate", "--out", str(tmp_path / "c.toml"), "--inject", "swapped-phases")
    named = [line.split(":")[0].strip() for line in r.stderr.splitlines() if line.startswith("  ")]
    assert named == ["port.evse01.1.phase", "port.evse02.1.phase"]
    assert "evse01.1's L1 is on site phase L2" in r.stderr


def test_sigterm_mid_calibration_leaves_the_previous_file(tmp_path):
    out = tmp_path / "calibration.toml"
    out.write_text("# the previous calibration\n")
    proc = subprocess.Popen([*CLI, "calibrate", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:
        if line.startswith("step  5/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "ERR_CALIBRATION_INTERRUPTED: calibration interrupted (SIGTERM)" in err
    assert "calibration passed" not in rest
    assert out.read_text() == "# the previous calibration\n" and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_an_unknown_inject_is_refused(tmp_path):
    r = v2g("calibrate", "--out", str(tmp_path / "c.toml"), "--inject", "bogus")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_run_refuses_a_calibration_of_another_site(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "calibration.toml").write_text('[calibration]\nversion = 1\nsite = "elsewhere"\n')
    r = v2g("run", "--duration", "1", env=dict(os.environ, STATE_DIRECTORY=str(state)))
    assert r.returncode == 2
    assert f"ERR_CALIBRATION_FILE: {state / 'calibration.toml'}: [calibration] site: expected 'sim-depot-50'" in r.stderr


HARDWARE_SITE = """
[site]
name = "calibrate-hw"
period_ms = 10
[rt]
priority = 0
lock_memory = false
[control]
output_hold_s = 2
[node.grid]
kind = "grid"
import_limit_w = 100000
export_limit_w = 100000
meter_max_age_s = 2
[modbus.meter]
role = "meter"
host = "127.0.0.1"
port = {meter}
map = "sunspec"
period_ms = 100
node = "grid"
[node.c00]
kind = "evse"
parent = "grid"
link = "modbus"
phases = "L2"
port_max_charge_w = 7400
[modbus.c00]
role = "evse"
host = "127.0.0.1"
port = {charger}
map = "wallbox-quasar"
node = "c00"
period_ms = 100
keepalive_ms = 500
"""


class Wiring(threading.Thread):
    """The site's far side in real time: the charger's vehicle, and a meter that sees a base load
    in thirds plus the charger's power on phase L2 (through CTs turned round if reversed)."""

    def __init__(self, chargers, meter, sign=1.0):
        super().__init__(daemon=True)
        self.chargers, self.meter, self.sign = chargers, meter, sign
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.wait(0.05):
            self.chargers.advance()
            phases = [1000.0, 1000.0 + self.chargers.chargers[0].power_w, 1000.0]
            self.meter.set_power(self.sign * sum(phases), tuple(self.sign * w for w in phases))

    def stop(self):
        self.stopping.set()
        self.join()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_on_hardware_the_loop_runs_in_real_time_and_the_charge_reaches_the_charger(tmp_path, sign):
    """No plant: the controller in real time, the charger driven by the Modbus service, the grid
    meter read over Modbus; a reversed CT is named as on the simulated site."""
    quasar = modbus_maps.load(modbus_maps.resolve("wallbox-quasar"))
    out = tmp_path / "calibration.toml"
    with ChargerFleet([Charger(quasar, soc=0.4)]) as chargers, MeterPeer("sunspec", power_sf=0) as meter:
        path = tmp_path / "site.toml"
        path.write_text(HARDWARE_SITE.format(meter=meter.port, charger=chargers.ports[0]))
        wiring = Wiring(chargers, meter, sign)
        wiring.start()
        try:
            lines = []
            outcome, written = calibrate(config.load(path), out, show=lines.append)
        finally:
            wiring.stop()
    assert outcome.steps == 2 and lines[0] == "step 1/2  grid meter at grid: sign and CT direction ..."
    if sign > 0:
        assert not outcome.failed and written == out, lines
        doc = tomllib.loads(out.read_text())
        assert doc["port"]["c00.1"] == {"phase": "L2"} and doc["meter"]["grid"]["gain"] == pytest.approx(1.0, abs=0.05)
    else:
        assert written is None and not out.exists()
        assert [(s.id, v.code) for s, v in outcome.failed] == [("meter.grid.sign", "ERR_CALIBRATION_CT_REVERSED")]


@pytest.mark.parametrize("answer, code, words", [
    (400, "ERR_CALIBRATION_ANSWER", "zero_c: 400 °C is out of range: expected -40 .. 125 °C"),
    (12.5, "ERR_CALIBRATION_SPAN", "reads 10 / 40 °C at references 12.5 / 40 °C"),
])
def test_an_answer_out_of_range_or_tolerance_fails_calibration_with_the_reason(tmp_path, answer, code, words):
    answers = tmp_path / "answers.toml"
    answers.write_text(f'["i2c.tx1_ambient.span"]\nzero_c = {answer}\n')
    r = v2g("calibrate", "--out", str(tmp_path / "c.toml"), "--answers", str(answers))
    failed = [line.strip() for line in r.stderr.splitlines() if line.startswith("  ")]
    assert r.returncode == 1 and len(failed) == 1 and failed[0].startswith(f"i2c.tx1_ambient.span: {code}: ")
    assert words in failed[0] and not (tmp_path / "c.toml").exists()
