"""`v2g-rt bench`: the native loop's wake latency side by side with cyclictest and a Python loop.

Contenders run window by window in alternation (cyclictest, native, python,
cyclictest, ...) with the same period, priority, CPU and load, so a noisy machine
affects them alike; ratios are taken per window pair. cyclictest (rt-tests) is
the latency floor of the machine; the Python loop (v2g_rt/python_cycle.py, a
baseline only) shows what the GIL does to a loop that needs it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .controller import Controller, preempt_rt
from .site import Control, RealTime, depot
from .sim.session import Session

HIST_US = 10_000           # 1 us bins; one more bin counts the overflow, as in the controller
S = 1_000_000_000


def machine() -> str:
    """The machine a benchmark ran on, for its results file."""
    return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def write_results(path, results: dict) -> None:
    """A benchmark's results as JSON at path (if given), said on stderr."""
    if path:
        Path(path).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {path}", file=sys.stderr)


@dataclass
class Window:
    contender: str
    load: str
    index: int
    hist: np.ndarray
    max_us: float
    overruns: int = 0
    compute: np.ndarray | None = None

    @property
    def cycles(self) -> int:
        return int(self.hist.sum())


def percentiles(hist: np.ndarray, max_us: float) -> dict:
    n = int(hist.sum())
    if n == 0:
        return {"cycles": 0}
    cum = np.cumsum(hist)

    def pct(q):
        b = int(np.searchsorted(cum, q * n))
        return max_us if b >= HIST_US else min(float(b + 1), max_us)

    return {"cycles": n, "p50_us": pct(0.5), "p99_us": pct(0.99), "p999_us": pct(0.999), "max_us": round(max_us, 1)}


@dataclass
class Setup:
    period_us: int = 1000
    window_s: float = 2.0
    windows: int = 30
    ports: int = 50
    loads: tuple = ("none",)
    priority: int = 80
    cpu: int | None = None
    load_threads: int = 4
    baseline: Path | None = None
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------- loads

class PythonLoad:
    """K busy Python threads in this process: JSON encoding and TLS handshakes over loopback."""

    def __init__(self, threads: int, notes: list):
        self.threads, self.stop = threads, threading.Event()
        self.workers: list[threading.Thread] = []
        self.tls = self._tls_context(notes)

    @staticmethod
    def _tls_context(notes):
        if not shutil.which("openssl"):
            notes.append("openssl not found (apt-get install openssl): the Python load does JSON only, no TLS")
            return None
        d = Path(tempfile.mkdtemp(prefix="v2g-bench-"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", d / "k.pem", "-out", d / "c.pem", "-days", "1", "-subj", "/CN=localhost"],
                       check=True, capture_output=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(d / "c.pem", d / "k.pem")
        shutil.rmtree(d)
        return ctx

    def _serve(self, sock):
        while not self.stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            try:
                with self.tls.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass

    def _work(self, k: int, port: int | None):
        doc = {"ports": [{"id": f"evse{i:03d}.1", "soc": i / 256, "w": [i * 1.5] * 20} for i in range(256)]}
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        while not self.stop.is_set():
            if port and k % 2:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        with client.wrap_socket(s):
                            pass
                except OSError:
                    pass
            else:
                json.loads(json.dumps(doc))

    def start(self):
        self.stop.clear()
        port = None
        if self.tls:
            self.sock = socket.create_server(("127.0.0.1", 0))
            self.sock.settimeout(0.2)
            port = self.sock.getsockname()[1]
            self.workers.append(threading.Thread(target=self._serve, args=(self.sock,), daemon=True))
        self.workers += [threading.Thread(target=self._work, args=(k, port), daemon=True)
                         for k in range(self.threads)]
        for t in self.workers:
            t.start()

    def close(self):
        self.stop.set()
        for t in self.workers:
            t.join()
        self.workers.clear()
        if self.tls:
            self.sock.close()


class StressLoad:
    """stress-ng on the CPUs the loop does not use."""

    def __init__(self, cpu: int):
        others = sorted(os.sched_getaffinity(0) - {cpu}) or [cpu]
        self.cpus = others
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["stress-ng", "--cpu", str(len(self.cpus)), "--taskset",
                                      ",".join(map(str, self.cpus)), "--quiet"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self):
        self.proc.terminate()
        self.proc.wait()


class NoLoad:
    def start(self):
        pass

    def close(self):
        pass


def make_load(name: str, setup: Setup):
    if name == "python":
        return PythonLoad(setup.load_threads, setup.notes)
    if name == "stress":
        if not shutil.which("stress-ng"):
            setup.notes.append("stress-ng not found (apt-get install stress-ng): the 'stress' load is left out")
            return None
        return StressLoad(setup.cpu)
    return NoLoad()


# ---------------------------------------------------------------- contenders

def _sessions(site) -> dict:
    out = {}
    for i, p in enumerate(site.ports):
        out[p.id] = Session(soc=0.3 + 0.6 * (i % 10) / 10, capacity_wh=60_000, energy_request_wh=15_000 + 500 * (i % 7),
                            departure_in_s=3600 * (2 + i % 9), max_charge_w=11_000, max_discharge_w=11_000,
                            v2g=i % 3 != 0)
    return out


class Native:
    name = "native"

    def __init__(self, setup: Setup):
        rt = RealTime(priority=setup.priority, cpu=setup.cpu, lock_memory=True)
        self.site = depot(setup.ports, period_s=setup.period_us / 1e6, rt=rt,
                          control=Control(session_max_age_s=3600.0))
        self.ctrl = Controller(self.site)
        for pid, s in _sessions(self.site).items():
            s.publish(self.ctrl, pid)
        self.ctrl.submit({"kind": "setpoint", "id": "bench", "value_w": -0.1 * setup.ports * 11_000,
                          "expires_in_s": 6 * 86400})
        self.report = None

    def window(self, seconds: float):
        h0 = self.ctrl.histograms()
        s0 = self.ctrl.stats()
        self.report = self.ctrl.start()
        time.sleep(seconds)
        self.ctrl.stop(hard=True)              # no contactor to spare: the window ends now
        h1 = self.ctrl.histograms()
        lat = (h1["wake_latency"] - h0["wake_latency"]).astype(np.int64)
        cmp_ = (h1["compute"] - h0["compute"]).astype(np.int64)
        overruns = self.ctrl.stats()["overruns"] - s0["overruns"]
        if lat[HIST_US]:                       # beyond the histogram: the trace has the exact value
            tr = self.ctrl.trace()[-int(lat.sum()):]
            max_us = float((tr["wake_ns"] - tr["planned_ns"]).max()) / 1e3
        else:
            max_us = float(np.flatnonzero(lat).max() + 1) if lat.any() else 0.0
        return lat, max_us, overruns, cmp_


class Cyclictest:
    name = "cyclictest"

    def __init__(self, setup: Setup, policy: str, priority: int):
        self.setup, self.policy, self.priority = setup, policy, priority

    def window(self, seconds: float):
        s = self.setup
        cmd = ["cyclictest", "-q", "-m", "-t1", f"-i{s.period_us}", f"-h{HIST_US}", f"-D{max(1, round(seconds))}"]
        cmd += [f"-p{self.priority}", "--policy=fifo"] if self.policy == "SCHED_FIFO" else ["--policy=other"]
        if s.cpu is not None:
            cmd.append(f"-a{s.cpu}")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode != 0:
            raise RuntimeError(f"cyclictest failed: {out.stderr.strip()}")
        hist = np.zeros(HIST_US + 1, np.int64)
        max_us, overflow = 0.0, 0
        for line in out.stdout.splitlines():
            if line.startswith("# Max Latencies:"):
                max_us = float(line.split(":")[1].split()[0])
            elif line.startswith("# Histogram Overflows:"):
                overflow = int(line.split(":")[1].split()[0])
            elif line and line[0].isdigit():
                b, c = line.split()[:2]
                # cyclictest's bin b counts latencies in [b, b+1) us; ours counts them in bin b too.
                hist[min(int(b), HIST_US - 1)] += int(c)
        hist[HIST_US] += overflow
        return hist, max_us, 0, None


class PythonLoop:
    name = "python"

    def __init__(self, setup: Setup, native: Native, policy: str, priority: int):
        path = setup.baseline
        spec = importlib.util.spec_from_file_location("v2g_bench_python_cycle", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        self.cycle = mod.PythonCycle(native.site, _sessions(native.site), -0.1 * setup.ports * 11_000)
        self.setup, self.policy, self.priority = setup, policy, priority

    def window(self, seconds: float):
        result = {}

        def loop():
            if self.policy == "SCHED_FIFO":
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.priority))
            if self.setup.cpu is not None:
                os.sched_setaffinity(0, {self.setup.cpu})
            period = self.setup.period_us * 1000
            hist = [0] * (HIST_US + 1)
            max_ns, overruns = 0, 0
            planned = time.monotonic_ns() + period
            end = planned + int(seconds * S)
            while planned < end:
                delay = planned - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / S)
                wake = time.monotonic_ns()
                lat = wake - planned
                hist[min(max(lat, 0) // 1000, HIST_US)] += 1
                max_ns = max(max_ns, lat)
                self.cycle.run(wake / S, period / S)
                done = time.monotonic_ns()
                planned += period
                if done > planned:
                    missed = (done - planned) // period + 1
                    planned += missed * period
                    overruns += 1
            result.update(hist=np.array(hist, np.int64), max_us=max_ns / 1e3, overruns=overruns)

        t = threading.Thread(target=loop, name="v2g-bench-python")
        t.start()
        t.join()
        return result["hist"], result["max_us"], result["overruns"], None


# ---------------------------------------------------------------- the run

def find_baseline(given: str | None) -> Path | None:
    """The Python baseline: the packaged v2g_rt/python_cycle.py, or the file given instead."""
    from . import python_cycle
    path = Path(given) if given else Path(python_cycle.__file__)
    return path if path.is_file() else None


def run(setup: Setup, out=sys.stdout) -> dict:
    if setup.cpu is None:
        setup.cpu = max(os.sched_getaffinity(0))
    native = Native(setup)
    probe = native.ctrl.start()                 # learn what RT setup this process is allowed
    native.ctrl.stop(hard=True)
    policy, priority = probe["policy"], probe["priority"]
    for w in probe["warnings"]:
        setup.notes.append(w)
    contenders = []
    if shutil.which("cyclictest"):
        contenders.append(Cyclictest(setup, policy, priority))
    else:
        setup.notes.append("cyclictest not found (apt-get install rt-tests): no latency floor to compare with")
    contenders.append(native)
    if setup.baseline:
        contenders.append(PythonLoop(setup, native, policy, priority))
    else:
        setup.notes.append("the Python baseline given with --baseline was not found: no Python contender")
    loads = {}
    for name in setup.loads:
        load = make_load(name, setup)
        if load is not None:
            loads[name] = load
    windows: list[Window] = []
    header = (f"v2g-rt bench: period {setup.period_us} us, {setup.ports} ports, loads {', '.join(loads)}, "
              f"{policy} priority {priority}, cpu {setup.cpu}, {setup.windows} x {setup.window_s:g} s windows "
              f"per contender and load; kernel {platform.release()}, PREEMPT_RT {'yes' if preempt_rt() else 'no'}")
    print(header, file=out)
    if policy != "SCHED_FIFO":
        print("NOTE: no RT permission: every contender runs at normal priority", file=out)
    for i in range(setup.windows):
        for lname, load in loads.items():
            load.start()
            try:
                for c in contenders:
                    hist, max_us, overruns, compute = c.window(setup.window_s)
                    windows.append(Window(c.name, lname, i, hist, max_us, overruns, compute))
            finally:
                load.close()
    result = summarize(setup, windows, policy, priority, list(loads))
    result["notes"] = setup.notes
    result["header"] = header
    print_table(result, out)
    return result


def summarize(setup: Setup, windows: list[Window], policy: str, priority: int, loads: list[str]) -> dict:
    per_load = {}
    for lname in loads:
        ws = [w for w in windows if w.load == lname]
        contenders = {}
        for name in dict.fromkeys(w.contender for w in ws):
            mine = [w for w in ws if w.contender == name]
            hist = np.sum([w.hist for w in mine], axis=0)
            stats = percentiles(hist, max(w.max_us for w in mine))
            stats["overruns"] = sum(w.overruns for w in mine)
            stats["windows"] = len(mine)
            if name == "native":
                cmp_ = np.sum([w.compute for w in mine], axis=0)
                stats["compute_p99_us"] = percentiles(cmp_, float(np.flatnonzero(cmp_).max() + 1))["p99_us"]
            contenders[name] = stats
        pairs = [(n, c) for n in ws if n.contender == "native" for c in ws
                 if c.contender == "cyclictest" and c.index == n.index]
        ratios = [percentiles(n.hist, n.max_us)["p99_us"] / percentiles(c.hist, c.max_us)["p99_us"] for n, c in pairs]
        per_load[lname] = {
            "contenders": contenders,
            "ratio_p99_native_cyclictest": round(statistics.median(ratios), 3) if ratios else None,
            "load": lname, "period_us": setup.period_us, "ports": setup.ports,
            "policy": policy, "priority": priority, "cpu": setup.cpu, "window_s": setup.window_s,
            "histograms": {name: np.sum([w.hist for w in ws if w.contender == name], axis=0).tolist()
                           for name in contenders},
        }
    if len(per_load) == 1:
        return next(iter(per_load.values()))
    out = {"loads": per_load, "period_us": setup.period_us, "ports": setup.ports}
    idle = per_load.get("none")
    if idle:
        for lname, r in per_load.items():
            if lname == "none":
                continue
            for name in ("native", "python", "cyclictest"):
                if name in r["contenders"] and name in idle["contenders"]:
                    out[f"p99_{name}_{lname}_over_idle"] = round(
                        r["contenders"][name]["p99_us"] / idle["contenders"][name]["p99_us"], 3)
    return out


def print_table(result: dict, out) -> None:
    for r in ([result] if "contenders" in result else result["loads"].values()):
        print(f"\nload: {r['load']}", file=out)
        print(f"{'contender':<11} {'cycles':>9} {'overruns':>8} {'p50_us':>7} {'p99_us':>7} {'p99.9_us':>8} "
              f"{'max_us':>9}", file=out)
        for name, s in r["contenders"].items():
            extra = f"   compute p99 {s['compute_p99_us']} us" if s.get("compute_p99_us") else ""
            print(f"{name:<11} {s['cycles']:>9} {s['overruns']:>8} {s['p50_us']:>7} {s['p99_us']:>7} "
                  f"{s['p999_us']:>8} {s['max_us']:>9}{extra}", file=out)
            if s["cycles"] and s["overruns"] / s["cycles"] > 1e-3:
                print(f"  {name}: {s['overruns'] / s['cycles']:.2%} of cycles overran: the period is too short "
                      f"for this machine under this load", file=out)
        if r["ratio_p99_native_cyclictest"] is not None:
            print(f"native/cyclictest p99 (median over window pairs): {r['ratio_p99_native_cyclictest']}", file=out)
    for k, v in result.items():
        if k.endswith("_over_idle"):
            print(f"{k}: {v}", file=out)
    for n in result.get("notes", []):
        print(f"NOTE: {n}", file=out)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [result] if "contenders" in result else list(result["loads"].values())
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 4 * len(runs)), squeeze=False)
    for ax, r in zip(axes[:, 0], runs):
        top = 1
        for name, hist in r["histograms"].items():
            h = np.array(hist[:HIST_US])
            nz = np.nonzero(h)[0]
            if nz.size:
                top = max(top, nz.max() + 2)
            ax.step(np.arange(1, HIST_US + 1), np.where(h > 0, h, np.nan), where="pre",
                    label=f"{name} (p99 {r['contenders'][name]['p99_us']} us, max {r['contenders'][name]['max_us']} us)")
        ax.set_yscale("log")
        ax.set_xscale("log")             # body and tail on one plot
        ax.set_xlim(1, min(top, HIST_US))
        ax.set_xlabel("wake latency (us)")
        ax.set_ylabel("cycles (log)")
        ax.set_title(f"period {r['period_us']} us, {r['ports']} ports, load {r['load']}, {r['policy']} {r['priority']}")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
