"""The v2g-rt command as a user runs it: subprocesses, exit codes, files, the status socket."""
import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

CLI = [sys.executable, "-P", "-m", "v2g_rt.cli"]


def v2g(*args, timeout=120, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)


def default_text() -> str:
    return resources.files("v2g_rt.data").joinpath("default-site.toml").read_text()


@pytest.fixture
def site_file(tmp_path) -> Path:
    """The packaged site at normal priority, with its status socket in tmp."""
    text = default_text().replace("priority = 80", "priority = 0").replace("lock_memory = true", "lock_memory = false")
    text = text.replace('period_ms = 1.0', f'period_ms = 1.0\nstatus_socket = "{tmp_path}/status.sock"')
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_check_accepts_the_default_site(site_file):
    r = v2g("check", str(site_file))
    assert r.returncode == 0 and "50 ports" in r.stdout


def test_check_reports_every_problem_and_exits_2(tmp_path, site_file):
    bad = site_file.read_text().replace("import_limit_w = 220000", 'import_limit_w = "220 kW"')
    bad = bad.replace('parent = "group3"', 'parent = "group9"', 1).replace("[control]", "[control]\nramp = 5")
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    r = v2g("check", str(path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert any("[node.grid] import_limit_w: expected a number of W, found a string '220 kW'" in x for x in lines)
    assert any("[node.evse11] parent: parent 'group9' is not a node" in x for x in lines)
    assert any("[control] ramp: option 'ramp' is not valid" in x for x in lines)
    assert all(str(path) in x for x in lines)


def test_check_unreadable_and_invalid_toml(tmp_path):
    r = v2g("check", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "ERR_CONFIG_UNREADABLE" in r.stderr
    (tmp_path / "x.toml").write_text("[site\nname=1")
    r = v2g("check", str(tmp_path / "x.toml"))
    assert r.returncode == 2 and "ERR_CONFIG_SYNTAX" in r.stderr and "line 1" in r.stderr


def test_explain():
    r = v2g("explain", "ERR_ISO_TIMEOUT")
    assert r.returncode == 0 and "remedy:" in r.stdout and "PLC" in r.stdout
    r = v2g("explain", "ERR_ISO_TIMOUT")
    assert r.returncode == 2 and "did you mean ERR_ISO_TIMEOUT" in r.stderr
    r = v2g("explain", "--list")
    assert "ERR_MODBUS_EXCEPTION_02" in r.stdout and "ERR_MQTT_CONN_REFUSED" in r.stdout


def test_status_without_a_controller(tmp_path):
    r = v2g("status", "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 1 and "ERR_STATUS_UNAVAILABLE: no controller answers" in r.stderr


def test_run_serves_status_and_stops_on_sigterm(site_file, tmp_path):
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    proc = subprocess.Popen([*CLI, "run", "--config", str(site_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    sock = tmp_path / "status.sock"
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
        r = v2g("status", "--json", "--socket", str(sock))
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert len(doc["ports"]) == 50 and len(doc["nodes"]) == 32
        assert doc["stats"]["cycles"] > 500
        assert doc["site"]["fleet_w"] > 0                         # the simulated EVs charge
        assert {n["binding"] for n in doc["nodes"]} <= set(
            __import__("v2g_rt").controller.BINDINGS)
        services = doc["services"]                               # the supervisor's view
        assert list(services) == ["journal", "schedule", "status", "control"]
        assert services["schedule"]["errors"] == 0
        assert all(c["kind"] == "setpoint" and c["source"] == "local" for c in doc["commands"])   # the sim DMS
        assert all(h["alive"] and h["restarts"] == 0 for h in services.values())
        assert services["status"]["clients_served"] >= 0 and services["journal"]["errors"] == 0
        text = v2g("status", "--config", str(site_file))
        assert text.returncode == 0 and "binding" in text.stdout and "evse01.1" in text.stdout
        assert "services:\n  journal      up  writes" in text.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summary = json.loads(out[out.index("{"):])
    assert summary["cycles"] > 1000 and summary["plant"]["limit_violations"] == 0
    assert not sock.exists()                                       # cleaned up
    assert "loop started" in err


def test_run_with_duration_prints_a_summary(site_file, tmp_path):
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    r = v2g("run", "--config", str(site_file), "--duration", "3", env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["cycles"] >= 2500 and summary["wake_latency_us"]["count"] == summary["cycles"]
    assert summary["peak_rss_mb"] < 200
    log = (tmp_path / "state" / "v2g-rt" / "controller.log")
    assert log.exists() or Path("/var/log/v2g/controller.log").exists()


def test_run_refuses_links_this_version_lacks(site_file, tmp_path):
    path = tmp_path / "ocpp.toml"
    path.write_text(site_file.read_text().replace('link = "can"', 'link = "ocpp"', 1))
    r = v2g("run", "--config", str(path), "--duration", "1")
    assert r.returncode == 2 and "ERR_LINK_UNAVAILABLE" in r.stderr and "[node.evse01] link" in r.stderr


def test_simulate_writes_timeline_plot_and_summary(site_file, tmp_path):
    out = tmp_path / "sim"
    r = v2g("simulate", "--config", str(site_file), "--hours", "2", "--period-ms", "20", "--out", str(out))
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["limit_violations"] == 0
    assert summary["energy_charged_kwh"] > 100
    assert summary["tracking_error_kwh"] < 1.0          # the 01:00-05:00 setpoint is met
    rows = (out / "timeline.csv").read_text().splitlines()
    assert rows[0].startswith("t_s,hour,setpoint_w,fleet_w,site_w") and len(rows) > 100
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
