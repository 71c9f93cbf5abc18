"""Real-time setup, in subprocesses: SCHED_FIFO, mlockall and affinity when permitted;
a warning naming what is missing (and a working loop at normal priority) when not."""
import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from helpers import make_site, plug_all
from v2g_rt import Controller, RealTime
rt = RealTime(priority=int(sys.argv[2]), cpu=None if sys.argv[3] == "-" else int(sys.argv[3]), lock_memory=True)
c = Controller(make_site(50, rt=rt))
plug_all(c, None)
report = c.start()
time.sleep(0.2)
tid = report["loop_tid"]
status = dict(l.split(":", 1) for l in open("/proc/self/status"))
out = {"report": report, "policy": os.sched_getscheduler(tid), "prio": os.sched_getparam(tid).sched_priority,
       "affinity": sorted(os.sched_getaffinity(tid)), "vmlck_kb": int(status["VmLck"].split()[0]),
       "cycles": c.stats()["cycles"], "name": open(f"/proc/self/task/{tid}/comm").read().strip()}
c.stop()
print(json.dumps(out))
"""


def _run(priority, cpu, prefix=(), limits=None):
    def preexec():
        for res, val in (limits or {}).items():
            import resource
            resource.setrlimit(res, (val, val))

    out = subprocess.run([*prefix, sys.executable, "-P", "-c", PROBE, os.path.dirname(os.path.dirname(__file__)),
                          str(priority), "-" if cpu is None else str(cpu)],
                         capture_output=True, text=True, timeout=60, preexec_fn=preexec)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO and mlockall need root (CI runs as root)")
def test_rt_applied_when_permitted():
    cpu = max(os.sched_getaffinity(0))
    got, _ = _run(80, cpu)
    assert got["report"]["policy"] == "SCHED_FIFO" and got["report"]["warnings"] == []
    assert got["policy"] == os.SCHED_FIFO and got["prio"] == 80
    assert got["affinity"] == [cpu]
    assert got["report"]["memory_locked"] and got["vmlck_kb"] > 0
    assert got["name"] == "v2g-cycle"
    assert got["cycles"] > 50
    assert isinstance(got["report"]["preempt_rt"], bool)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping capabilities with setpriv needs root")
def test_without_permission_the_loop_runs_at_normal_priority_and_says_why():
    import resource
    drop = ["setpriv", "--bounding-set", "-sys_nice,-ipc_lock", "--inh-caps", "-sys_nice,-ipc_lock", "--"]
    got, stderr = _run(80, 4096, prefix=drop,
                       limits={resource.RLIMIT_RTPRIO: 0, resource.RLIMIT_MEMLOCK: 64 * 1024})
    assert got["report"]["policy"] == "SCHED_OTHER" and got["policy"] == os.SCHED_OTHER
    assert not got["report"]["memory_locked"]
    warnings = " ".join(got["report"]["warnings"])
    assert "ERR_RT_PRIORITY" in warnings and "CAP_SYS_NICE missing" in warnings
    assert "RLIMIT_RTPRIO 0" in warnings and "LimitRTPRIO=80" in warnings
    assert "ERR_RT_MEMLOCK" in warnings and "LimitMEMLOCK=infinity" in warnings
    assert "ERR_RT_AFFINITY" in warnings and "CPU 4096" in warnings
    assert "ERR_RT_PRIORITY" in stderr                     # also logged
    assert got["cycles"] > 50                              # and the loop runs anyway
