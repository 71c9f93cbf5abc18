"""Cycle compute of two builds, interleaved: is this tree's cycle within a margin of another's?

    python bench/stages_ab.py --base-python /work/venv-base/bin/python --base-src /work/base-src \
        [--python python3] [--src .] [--ports 50 256] [--seconds 2] [--rounds 5] [--cpu N] [--json FILE]

Each round runs each tree's own bench/stages.py run(ports, "sim", seconds) in a fresh process of
that tree's interpreter (each imports the v2g_rt installed there), base and this tree one after
the other, so both see the same load on a shared machine. Per stage and port count it keeps the
best (lowest) p50 and p99 over the rounds, the least disturbed by other processes, and the
median over rounds of the ratio within a round; it prints both. Each tree goes first in every
other round; --cpu pins both to one CPU (there the loop shares it with every other thread of its
process, which is not how it runs).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

STAGES = ("read", "update", "write", "publish")
PROBE = ("import json, sys; sys.path.insert(0, sys.argv[1]); import stages; "
         "print(json.dumps(stages.run(int(sys.argv[2]), 'sim', float(sys.argv[3]))['stages']))")


def one_run(python: str, src: Path, ports: int, seconds: float, cpu: int | None) -> dict:
    out = subprocess.run([python, "-P", "-c", PROBE, str(src / "bench"), str(ports), str(seconds)],
                         capture_output=True, text=True, check=True, cwd="/",
                         preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}))
    return json.loads(out.stdout.strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
    return {st: {q: min(r[st][q] for r in runs) for q in ("p50_us", "p99_us")} for st in STAGES}


def median_ratio(base: list[dict], this: list[dict]) -> dict:
    """Per stage and quantile, the median over rounds of this tree's over the base's in the same
    round: a slow spell of the machine hits both runs of a round, so the ratio keeps steadier
    than either tree's best."""
    return {st: {q: round(statistics.median(t[st][q] / b[st][q] for b, t in zip(base, this) if b[st][q]), 3)
                 for q in ("p50_us", "p99_us")} for st in STAGES}


def two_trees(description: str, seconds: float) -> argparse.ArgumentParser:
    """The options of a comparison of two installed trees (this one and cycle_instructions.py)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--base-python", required=True)
    ap.add_argument("--base-src", type=Path, required=True, help="the base tree (its bench/stages.py)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--ports", type=int, nargs="+", default=[50, 256])
    ap.add_argument("--seconds", type=float, default=seconds, help="virtual seconds per run")
    ap.add_argument("--json", type=Path)
    return ap


def main(argv=None) -> int:
    ap = two_trees(__doc__.splitlines()[0], 2.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=-1, help="pin both trees to this CPU (default -1: any)")
    a = ap.parse_args(argv)
    cpu = a.cpu if a.cpu >= 0 else None
    trees = {"base": (a.base_python, a.base_src.resolve()), "this": (a.python, a.src.resolve())}
    runs = {(n, p): [] for n in trees for p in a.ports}
    for k in range(a.rounds):
        for p in a.ports:
            for name in (("base", "this") if k % 2 == 0 else ("this", "base")):   # neither always first
                python, src = trees[name]
                runs[name, p].append(one_run(python, src, p, a.seconds, cpu))
    result = {"rounds": a.rounds, "seconds": a.seconds, "cpu": cpu, "cases": []}
    for p in a.ports:
        b, t = best(runs["base", p]), best(runs["this", p])
        case = {"ports": p, "base": b, "this": t,
                "ratio": {st: {q: round(t[st][q] / b[st][q], 3) if b[st][q] else None for q in ("p50_us", "p99_us")}
                          for st in STAGES},
                "median_ratio": median_ratio(runs["base", p], runs["this", p])}
        result["cases"].append(case)
        for st in STAGES:
            m = case["median_ratio"][st]
            print(f"{p:4d} ports {st:8s} p50 {b[st]['p50_us']:7.1f} -> {t[st]['p50_us']:7.1f} us   "
                  f"p99 {b[st]['p99_us']:7.1f} -> {t[st]['p99_us']:7.1f} us   "
                  f"ratio of bests p50/p99 {case['ratio'][st]['p50_us']}/{case['ratio'][st]['p99_us']}   "
                  f"median ratio p50/p99 {m['p50_us']}/{m['p99_us']}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
