"""No allocation in a warmed cycle: proven by counting the loop thread's malloc/mmap calls
(also with GPIO contactor lines draining and driving).

An LD_PRELOAD interposer (alloc_counter.c) counts allocation calls made by the
loop thread while Python threads drive every exchange path. A build with
V2G_DEBUG_ALLOC_IN_CYCLE (one malloc/free per cycle) must make the same probe fail.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig


import v2g_rt

HERE = pathlib.Path(__file__).parent

PROBE = r"""
import ctypes, json, sys, threading, time
sys.path.insert(0, sys.argv[1])
from helpers import make_site, plug_all
from v2g_rt import Controller, Upstream
from v2g_rt.site import port_source
lib = ctypes.CDLL(None)
lib.alloc_count.restype = ctypes.c_uint64
site = make_site(256, upstreams=(Upstream("dms", 5.0),))
c = Controller(site)
plug_all(c, None)
c.start()
time.sleep(0.3)                       # warm-up: first cycles may fault in pages
lib.alloc_watch(c.rt_report["loop_tid"])
c0 = c.stats()["cycles"]
deadline = time.monotonic() + 1.5
k = 0
while time.monotonic() < deadline:    # drive every exchange path the loop serves
    k += 1
    c.submit({"kind": "setpoint", "id": k, "value_w": (-1) ** k * 50_000.0, "expires_in_s": 0.05})
    c.submit({"kind": "load_shed", "id": f"ls{k}", "value_w": 400_000.0, "expires_in_s": 1})
    c.measure("node/grid/power_w", 100_000.0 + k)
    c.measure("upstream/dms/heartbeat", 1.0)
    for pid in c.port_ids[:32]:
        c.measure(port_source(pid, "soc"), 0.5 + (k % 10) / 100)
    c.snapshot()
    time.sleep(0.002)
n = lib.alloc_count()
cycles = c.stats()["cycles"] - c0
c.stop()
print(json.dumps({"allocs": n, "cycles": cycles, "commands": k}))
"""


def _build_interposer(tmp_path) -> pathlib.Path:
    lib = tmp_path / "alloc_counter.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(HERE / "alloc_counter.c")], check=True)
    return lib


def _probe(lib: pathlib.Path, extra_path: str | None = None, probe: str = PROBE) -> dict:
    env = dict(os.environ, LD_PRELOAD=str(lib))
    if extra_path:
        env["PYTHONPATH"] = extra_path
    out = subprocess.run([sys.executable, "-P", "-c", probe, str(HERE.parent)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_warm_cycle_makes_no_allocation_call(tmp_path):
    result = _probe(_build_interposer(tmp_path))
    assert result["cycles"] > 500, result      # the window really ran the loop
    assert result["commands"] > 100, result
    assert result["allocs"] == 0, result


GPIO_PROBE = r"""
import ctypes, json, os, sys, time
sys.path.insert(0, sys.argv[1])
from helpers import GPIO_SITE as BASE
from v2g_rt import Controller, config
from v2g_rt.sim.peers import attach
from v2g_rt.sim.peers.gpio import EVENT
lib = ctypes.CDLL(None)
lib.alloc_count.restype = ctypes.c_uint64
lines = "".join(f'[gpio.fb{k}]\nbackend = "sim"\nline = {k}\nrole = "contactor_feedback"\nport = "e1.{k + 1}"\n'
                f'debounce_ms = 2\n[gpio.coil{k}]\nbackend = "sim"\nline = {k}\nrole = "contactor_drive"\n'
                f'port = "e1.{k + 1}"\ndrive = "{("loop", "io-thread")[k]}"\n' for k in range(2))
site = config.parse(BASE.replace("contactor_settle_s = 0.01", "contactor_settle_s = 0.5") + lines, "probe.toml")
c = Controller(site)
devices = attach(c, site)
far = devices.gpio_peer.contactors
c.start()
time.sleep(0.3)
lib.alloc_watch(c.rt_report["loop_tid"])
c0 = c.stats()["cycles"]
for pid in ("e1.1", "e1.2"):
    c.measure(f"port/{pid}/connected", 1.0)
time.sleep(0.1)
for contactor in far.values():                # the coils pulled in: the contacts close
    contactor.poll(0)
    contactor.edge(True, 0)
seq = 10
deadline = time.monotonic() + 1.0
while time.monotonic() < deadline:            # then they ring: open and back inside one read
    seq += 2
    for contactor in far.values():
        os.write(contactor.feedback_fd, EVENT.pack(0, 2, 0, seq - 1, seq - 1) + EVENT.pack(0, 1, 0, seq, seq))
    time.sleep(0.001)
time.sleep(0.05)
n = lib.alloc_count()
cycles = c.stats()["cycles"] - c0
stats = c.device_stats()["gpio"]
coils = [far[p].coil for p in ("e1.1", "e1.2")]
c.stop()
devices.close()
print(json.dumps({"allocs": n, "cycles": cycles, "stats": stats, "coils": coils}))
"""


def test_gpio_paths_make_no_allocation_and_the_io_thread_drives(tmp_path):
    """Edges drained and drives set by the running loop (bouncing sim contacts), and a sleeping
    chip's drive line set by the I/O thread."""
    result = _probe(_build_interposer(tmp_path), probe=GPIO_PROBE)
    assert result["cycles"] > 300, result
    assert result["allocs"] == 0, result
    assert result["coils"] == [True, True], result              # the loop's drive and the I/O thread's
    inputs = result["stats"]["inputs"]
    assert all(i["events"] > 100 and i["bounces"] > 10 and i["level"] == 1 for i in inputs), inputs
    assert [o["drive"] for o in result["stats"]["outputs"]] == ["loop", "io-thread"]


def test_probe_catches_a_build_that_allocates_in_the_cycle(tmp_path, repo_root):
    """The same probe against a debug build that mallocs once per cycle must see it."""
    build = tmp_path / "build"
    shutil.copytree(repo_root / "native", build / "native")
    shutil.copy(repo_root / "setup.py", build)
    env = dict(os.environ, V2G_RT_DEBUG_ALLOC_IN_CYCLE="1")
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", "lib", "--build-temp", "tmp"],
                   cwd=build, env=env, check=True, capture_output=True, timeout=600)
    pkg = tmp_path / "site" / "v2g_rt"
    shutil.copytree(pathlib.Path(v2g_rt.__file__).parent, pkg,
                    ignore=shutil.ignore_patterns("_core*.so", "__pycache__"))
    built = next((build / "lib" / "v2g_rt").glob("_core*" + sysconfig.get_config_var("EXT_SUFFIX")))
    shutil.copy(built, pkg)
    result = _probe(_build_interposer(tmp_path), str(tmp_path / "site"))
    assert result["cycles"] > 500, result
    assert result["allocs"] >= result["cycles"], result
