"""The operator's path: reset-fault and port disable/enable through the control socket, who may use
it (the kernel says who is calling), the audit log, and what survives kill -9."""
import grp
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from helpers import make_site
from v2g_rt import Controller
from v2g_rt.services.control import AuditLog, ControlServer
from v2g_rt.services.journal import JournalService
from v2g_rt.localsock import ClientError, request

CLI = [sys.executable, "-P", "-m", "v2g_rt.cli"]
NOBODY, NOGROUP, DAEMON_GID = 65534, 65534, 1


def v2g(*args, timeout=60, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def public_dir():
    """A directory other users can reach (pytest's tmp is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="v2g-operator-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def served(public_dir):
    site = replace(make_site(4, meter=False), operator_group=grp.getgrgid(NOGROUP).gr_name)
    ctrl = Controller(site)
    journal = JournalService(ctrl, public_dir / "state" / "latched.json")
    ctrl.start()
    journal.start()
    audit = AuditLog(public_dir / "state" / "audit.log")
    server = ControlServer(ctrl, journal, public_dir / "control.sock", audit)
    server.start()
    yield ctrl, server, public_dir
    server.stop()
    ctrl.stop()
    journal.stop()


def as_user(uid, gid, groups, fn) -> int:
    """Run fn() in a child with another identity; its return value is the child's exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="changing identity in a child needs root (tests/run runs as root)")
def test_only_the_operator_group_gets_in(served):
    ctrl, server, d = served
    sock = d / "control.sock"
    assert oct(sock.stat().st_mode & 0o777) == "0o660" and sock.stat().st_gid == NOGROUP

    def ports():
        return 0 if request(sock, {"action": "ports"}, "control")["ok"] else 1

    def refused():
        try:
            request(sock, {"action": "disable_port", "port": ctrl.port_ids[0]}, "control")
        except ClientError as e:
            return 0 if e.code == "ERR_SOCKET_PERMISSION" else 2
        return 1

    assert as_user(NOBODY, NOGROUP, [NOGROUP], ports) == 0          # in the group
    assert as_user(NOBODY, DAEMON_GID, [DAEMON_GID], refused) == 0  # the file mode keeps others out
    sock.chmod(0o666)                                                # and if the mode were wrong,

    def refused_by_server():
        a = request(sock, {"action": "disable_port", "port": ctrl.port_ids[0]}, "control")
        return 0 if not a["ok"] and a["code"] == "ERR_SOCKET_PERMISSION" else 1

    assert as_user(NOBODY, DAEMON_GID, [DAEMON_GID], refused_by_server) == 0   # the peer check does
    assert not ctrl.snapshot().ports["faults"].any()
    audit = [json.loads(x) for x in (d / "state" / "audit.log").read_text().splitlines()]
    assert audit[-1]["uid"] == NOBODY and audit[-1]["code"] == "ERR_SOCKET_PERMISSION" and not audit[-1]["ok"]


def test_disable_enable_and_bad_requests_are_answered_and_audited(served):
    ctrl, server, d = served
    sock, pid = d / "control.sock", ctrl.port_ids[1]
    a = request(sock, {"action": "disable_port", "port": pid}, "control")
    assert a["ok"] and "out_of_service" in a["faults"] and a["journaled"]
    journal = json.loads((d / "state" / "latched.json").read_text())
    assert journal["ports"] == {pid: {"bits": 0x1000000, "faults": ["out_of_service"]}}
    assert ctrl.snapshot().port(pid)["max_w"] == 0
    assert request(sock, {"action": "enable_port", "port": pid}, "control")["ok"]
    assert json.loads((d / "state" / "latched.json").read_text())["ports"] == {}
    for bad, code in (({"action": "format_disk"}, "ERR_CONTROL_BAD_REQUEST"),
                      ({"action": "reset_fault", "port": pid}, "ERR_CONTROL_BAD_REQUEST"),   # no latch_seq
                      ({"action": "disable_port", "port": "nope"}, "ERR_CMD_BAD_PORT")):
        a = request(sock, bad, "control")
        assert not a["ok"] and a["code"] == code, a
    import socket
    with socket.socket(socket.AF_UNIX) as s:                     # not JSON at all
        s.connect(str(sock))
        s.sendall(b"\xff\xfe{{{\n")
        assert json.loads(s.makefile().readline())["code"] == "ERR_CONTROL_BAD_REQUEST"
    audit = [json.loads(x) for x in (d / "state" / "audit.log").read_text().splitlines()]
    assert [(e["action"], e["ok"]) for e in audit[:2]] == [("disable_port", True), ("enable_port", True)]
    assert all(e["user"] == "root" and e["t"].endswith("Z") for e in audit)
    assert len(audit) == 6


def test_the_operator_cancels_every_command_of_a_kind_active_and_scheduled(served):
    ctrl, server, d = served
    assert ctrl.submit({"kind": "setpoint", "id": "now", "value_w": 5000.0, "expires_in_s": 600}, "dms")
    assert ctrl.submit({"kind": "setpoint", "id": "later", "value_w": 1.0, "expires_in_s": 600, "starts_in_s": 300}, "dms")
    assert ctrl.submit({"kind": "load_shed", "id": "shed", "value_w": 0.0, "expires_in_s": 600, "starts_in_s": 300}, "dms")
    a = request(d / "control.sock", {"action": "cancel", "of": "setpoint"}, "control")
    assert a["ok"] and a["left"] == []
    assert [c["id"] for c in ctrl.scheduled()] == ["shed"]
    assert not request(d / "control.sock", {"action": "cancel", "of": "port"}, "control")["ok"]
    audit = [json.loads(x) for x in (d / "state" / "audit.log").read_text().splitlines()]
    assert [(e["action"], e["ok"]) for e in audit] == [("cancel", True), ("cancel", False)]


# ---------------------------------------------------------------- the CLI against `v2g-rt run`

@pytest.fixture
def site_file(public_dir):
    from importlib import resources
    text = resources.files("v2g_rt.data").joinpath("default-site.toml").read_text()
    text = text.replace("priority = 80", "priority = 0").replace("lock_memory = true", "lock_memory = false")
    text = text.replace('period_ms = 1.0', f'period_ms = 1.0\nstatus_socket = "{public_dir}/status.sock"')
    path = public_dir / "site.toml"
    path.write_text(text)
    return path


def start(site_file, env):
    proc = subprocess.Popen([*CLI, "run", "--config", str(site_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    control = site_file.parent / "control.sock"        # a stale one from a killed run may be there
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        try:
            request(control, {"action": "ports"}, "control", attempts=1)
            return proc
        except ClientError:
            time.sleep(0.05)


def test_out_of_service_survives_kill_9_and_sighup_stops_cleanly(site_file):
    d = site_file.parent
    env = dict(os.environ, STATE_DIRECTORY=str(d / "state"))
    sock = ["--socket", str(d / "control.sock")]
    proc = start(site_file, env)
    r = v2g("port", "disable", "evse01.1", *sock)
    assert r.returncode == 0 and "evse01.1: out of service" in r.stdout, r.stderr
    proc.kill()                                         # the moment the operator saw the answer
    proc.communicate()

    proc = start(site_file, env)
    try:
        r = v2g("status", "--json", "--config", str(site_file))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["faults"] == ["evse01.1"]
        assert v2g("reset-fault", "evse01.1", *sock).stdout.strip() == "evse01.1: no latched fault"
        r = v2g("port", "enable", "evse01.1", *sock)
        assert r.returncode == 0 and "evse01.1: in service" in r.stdout
        assert v2g("port", "enable", "evse99.9", *sock).returncode == 2
    finally:
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out[out.index("{"):])["cycles"] > 0           # the summary
    assert "ERR_PORT_OUT_OF_SERVICE: port evse01.1: out of service restored" in err and "Traceback" not in err
    assert not (d / "status.sock").exists() and not (d / "control.sock").exists()
    audit = [json.loads(x) for x in next((d / "state").glob("audit-*.log")).read_text().splitlines()]
    assert [e["action"] for e in audit] == ["disable_port", "enable_port", "enable_port"]


def test_a_corrupt_journal_starts_every_port_latched_until_reset_all(site_file):
    d = site_file.parent
    env = dict(os.environ, STATE_DIRECTORY=str(d / "state"))
    (d / "state").mkdir(mode=0o700)
    (d / "state" / "latched-faults-sim-depot-50.json").write_text("[65536]")
    proc = start(site_file, env)
    try:
        doc = json.loads(v2g("status", "--json", "--config", str(site_file)).stdout)
        assert len(doc["faults"]) == 50
        r = v2g("reset-fault", "--all", "--config", str(site_file))
        assert r.returncode == 0 and r.stdout.count("cleared journal") == 50, r.stderr
        assert json.loads(v2g("status", "--json", "--config", str(site_file)).stdout)["faults"] == []
        r = v2g("reset-fault", "--all", "--config", str(site_file))
        assert r.returncode == 0 and "no port has a latched fault" in r.stdout
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "ERR_FAULT_JOURNAL" in err and "every port starts latched off" in err


def test_a_closed_stdout_does_not_stop_the_controller(site_file):
    d = site_file.parent
    env = dict(os.environ, STATE_DIRECTORY=str(d / "state"))
    r, w = os.pipe()
    os.close(r)                                           # nobody will ever read
    proc = subprocess.Popen([*CLI, "run", "--config", str(site_file), "--duration", "2"], stdout=w,
                            stderr=subprocess.PIPE, text=True, env=env)
    os.close(w)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
