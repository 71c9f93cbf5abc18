"""No allocation in a warmed cycle that probes a PLC modem and drains its answers, attenuation
reports and garbage: the loop thread's malloc/mmap calls counted as in test_no_alloc.py."""
import json
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent

PROBE = r"""
import ctypes, json, sys, threading, time
sys.path.insert(0, sys.argv[1])
from helpers import plc_site
from v2g_rt import Controller, config
from v2g_rt.sim.peers import attach
lib = ctypes.CDLL(None)
lib.alloc_count.restype = ctypes.c_uint64
site = config.parse(plc_site(period_ms=1, interval_ms=10), "plc-alloc.toml")
c = Controller(site)
devices = attach(c, site)
modem = devices.plc_peer.modems["e1.1"]
modem.loss = 0.1
c.start()
time.sleep(0.3)
lib.alloc_watch(c.rt_report["loop_tid"])
deadline = time.monotonic() + 1.5
k = 0
while time.monotonic() < deadline:    # the far side answers, reports and misbehaves
    k += 1
    c.measure("port/e1.1/connected", 1.0)
    modem.poll(c.now_ns())
    if k % 20 == 0:
        modem.attenuation([20 + k % 30] * 58)
        modem.garbage(("mmv", "type", "short", "stations", "groups", "unknown_mac")[k // 20 % 6])
    time.sleep(0.002)
n = lib.alloc_count()
st = c.device_stats()["plc"][0]
c.stop()
devices.close()
print(json.dumps({"allocs": n, "probes": st["probes_sent"], "answers": st["answers"],
                  "reports": st["atten_reports"], "bad": st["wrong_mmv"] + st["wrong_type"] + st["wrong_length"]}))
"""


def test_plc_cycle_makes_no_allocation_call(tmp_path):
    lib = tmp_path / "alloc_counter.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(HERE / "alloc_counter.c")], check=True)
    env = dict(os.environ, LD_PRELOAD=str(lib))
    out = subprocess.run([sys.executable, "-P", "-c", PROBE, str(HERE.parent)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["probes"] > 100 and result["answers"] > 50, result     # the window really probed
    assert result["reports"] > 5 and result["bad"] > 5, result
    assert result["allocs"] == 0, result
