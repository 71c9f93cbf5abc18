"""No Python thread can deadlock on the snapshot reader's lock.

read_snapshot() used to hold a pthread mutex while it allocated Python objects: a
garbage collection there runs finalizers, a finalizer can give the GIL to another
thread, and that thread then blocked on the mutex holding the GIL — every Python
thread frozen while the loop ran on. Here finalizers that read snapshots fire
inside snapshot reads from many threads, with the collector made as eager as it
goes; the child must finish (a deadlock shows as the timeout, not as a slow run).
The code before the fix hangs here every time (2 of 2 runs).
"""
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import gc, sys, threading
    sys.path.insert(0, sys.argv[1])
    from helpers import make_site
    from v2g_rt import Controller

    ctrl = Controller(make_site(50))
    ctrl.start()
    fired = [0]

    class Reads:                 # garbage in a cycle whose finalizer reads a snapshot
        def __init__(self):
            self.me = self
        def __del__(self):
            fired[0] += 1
            ctrl._core.read_snapshot()

    def reader():
        kept = []                # keeps the 3-tuple free list empty: every read allocates afresh
        for _ in range(1500):
            Reads()
            kept.append(ctrl._core.read_snapshot())

    gc.set_threshold(1, 1, 1)
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as the interpreter will
    threads = [threading.Thread(target=reader) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cycles = ctrl.stats()["cycles"]
    ctrl.stop()
    print(fired[0], cycles)
""")


def test_finalizers_reading_snapshots_inside_snapshot_reads_never_deadlock(repo_root):
    out = subprocess.run([sys.executable, "-P", "-c", CHILD, str(repo_root / "tests")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    fired, cycles = map(int, out.stdout.split())
    assert fired > 10_000 and cycles > 0
