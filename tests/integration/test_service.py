"""systemd integration: READY, a watchdog fed only while the loop is healthy, STOPPING."""
import os
import socket
import subprocess
import sys
import time

from helpers import make_site
from v2g_rt import Controller
from v2g_rt.services.watchdog import LoopHealth


def test_run_notifies_systemd_and_feeds_the_watchdog(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    site = tmp_path / "site.toml"
    from importlib import resources
    site.write_text(resources.files("v2g_rt.data").joinpath("default-site.toml").read_text()
                    .replace("priority = 80", "priority = 0").replace("lock_memory = true", "lock_memory = false")
                    .replace('period_ms = 1.0', f'period_ms = 1.0\nstatus_socket = "{tmp_path}/s.sock"'))
    env = dict(os.environ, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000", XDG_STATE_HOME=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-P", "-m", "v2g_rt.cli", "run", "--config", str(site),
                             "--duration", "3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    messages = []
    try:
        while True:
            msg = sock.recv(4096).decode()
            messages.append(msg)
            if msg == "STOPPING=1":
                break
    finally:
        proc.communicate(timeout=30)
        sock.close()
    assert proc.returncode == 0
    assert messages[0].startswith("READY=1\nSTATUS=running 50 ports")
    assert messages.count("WATCHDOG=1") >= 8          # every 0.2 s for 3 s while healthy
    assert messages[-1] == "STOPPING=1"


def test_loop_health_requires_progress():
    c = Controller(make_site(8))
    health = LoopHealth(c, max_overrun_streak=3)
    assert health.check() == (False, "loop not running")
    c.start()
    try:
        time.sleep(0.05)
        assert health.check() == (True, "ok")
        time.sleep(0.05)
        assert health.check() == (True, "ok")
    finally:
        c.stop()
    assert health.check()[0] is False
