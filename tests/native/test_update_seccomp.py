"""The update stage (interlock, arbitration, shaping) makes no system call: proved, not asserted.

A child process builds a loaded site, steps it, then runs the update stage alone a thousand times
under seccomp strict mode, where any system call but read, write, _exit and sigreturn gets the
process killed (SIGKILL); only if all of them ran does it write UPDATE_DONE (a write is allowed)
and _exit(0). Strict mode acts per thread, so the child runs single-threaded (numpy's BLAS
pool is kept to the calling thread) and checks that it is. The control run adds the read stage, whose recvmmsg()
on the CAN socket must be caught, so the test can fail.
"""
import os
import signal
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import socket, sys
    sys.path.insert(0, sys.argv[1])
    from helpers import S, make_site, plug_all
    from v2g_rt import Controller

    ctrl = Controller(make_site(50), clock="virtual")
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    near.setblocking(False)
    ctrl.attach_can(near.fileno(), 64, [])             # the read stage drains it every cycle
    ctrl.step(S)
    plug_all(ctrl, S)
    ctrl.submit({"kind": "setpoint", "id": 1, "value_w": -100_000.0, "expires_in_s": 600})
    ctrl.run_steps(10)
    assert ctrl.snapshot().site["fleet_w"] < 0          # the update stage has work to do
    threads = next(l for l in open("/proc/self/status") if l.startswith("Threads:")).split()[1]
    assert threads == "1", f"{threads} threads: seccomp strict mode would stop only one of them"
    err = ctrl._core.update_under_seccomp(1000, sys.argv[2] == "read")
    sys.exit(f"seccomp not entered: errno {err}")
""")


def child(repo_root, mode):
    one_thread = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-P", "-c", CHILD, str(repo_root / "tests"), mode],
                          capture_output=True, text=True, timeout=120, env=one_thread)


def test_update_stage_makes_no_system_call(repo_root):
    r = child(repo_root, "update")
    assert r.returncode == 0 and r.stdout == "UPDATE_DONE\n", (r.returncode, r.stdout, r.stderr)


def test_the_read_stage_does_and_is_caught(repo_root):
    r = child(repo_root, "read")
    assert r.returncode == -signal.SIGKILL and r.stdout == "", (r.returncode, r.stdout, r.stderr)
