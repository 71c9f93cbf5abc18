"""Instructions per cycle of two installed trees, stage by stage: a count the machine's load does
not move, beside stages_ab.py's times.

    python bench/cycle_instructions.py --base-python /work/venv-base/bin/python --base-src /work/base-src \
        [--python python3] [--src .] [--ports 50 256] [--seconds 0.5] [--cache] [--json FILE]

Each tree's own bench/stages.py run(ports, "sim", seconds) runs once under valgrind's callgrind
(deterministic: one run is enough). Per stage, the instructions of the loop's own functions over
the cycles run, inclusive: read (cycle_read), update (cycle_interlock + cycle_arbitrate +
cycle_shape), publish (snapshot_fill), and the whole cycle (cycle_run: also the write stage,
which the compiler inlines into it). Instructions are not time (a cache miss costs more than an
add), but they resolve a few per cent where timing on a shared machine does not. --cache also
counts, per stage, the L1 data-cache misses (reads and writes) of callgrind's cache model (the
host's L1 geometry, no prefetcher): a cycle whose image outgrew the L1 misses more than its
instructions say. Needs valgrind (apt-get install valgrind).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stages_ab import two_trees  # noqa: E402

STAGES = {"read": ("cycle_read",), "update": ("cycle_interlock", "cycle_arbitrate", "cycle_shape"),
          "publish": ("snapshot_fill",), "cycle": ("cycle_run",)}
PROBE = ("import json, sys; sys.path.insert(0, sys.argv[1]); import stages; "
         "print(json.dumps(stages.run(int(sys.argv[2]), 'sim', float(sys.argv[3]))['stages']['update']['count']))")
FUNCTION = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+\S*:__pyx_f_6v2g_rt_5_core_(\w+) ", re.M)


def per_stage(out: Path, events: str, cycles: int) -> dict:
    """The sum of callgrind's events (comma-separated) per cycle, by stage."""
    report = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", f"--show={events}",
                             f"--sort={events}", str(out)], capture_output=True, text=True, check=True).stdout
    total = {}
    for count, name in FUNCTION.findall(report):
        total.setdefault(name, int(count.replace(",", "")))   # the first line of a name is its own
    return {stage: round(sum(total.get(f, 0) for f in names) / cycles) for stage, names in STAGES.items()}


def instructions(python: str, src: Path, ports: int, seconds: float, cache: bool = False) -> dict:
    """Instructions per cycle by stage for one tree (cache: and L1 data misses, "<stage>_l1_misses")."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        run = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                              f"--cache-sim={'yes' if cache else 'no'}", python, "-P", "-c",
                              PROBE, str(src / "bench"), str(ports), str(seconds)],
                             capture_output=True, text=True, check=True, cwd="/")
        cycles = int(run.stdout.strip().splitlines()[-1])
        result = per_stage(out, "Ir", cycles)
        if cache:
            misses = [per_stage(out, e, cycles) for e in ("D1mr", "D1mw")]
            result |= {f"{st}_l1_misses": sum(m[st] for m in misses) for st in STAGES}
    return result


def main(argv=None) -> int:
    ap = two_trees(__doc__.splitlines()[0], 0.5)
    ap.add_argument("--cache", action="store_true", help="also L1 data-cache misses (callgrind's cache model)")
    a = ap.parse_args(argv)
    result = {"seconds": a.seconds, "cases": []}
    for p in a.ports:
        b = instructions(a.base_python, a.base_src.resolve(), p, a.seconds, a.cache)
        t = instructions(a.python, a.src.resolve(), p, a.seconds, a.cache)
        ratio = {k: round(t[k] / b[k], 3) if b[k] else None for k in b}
        result["cases"].append({"ports": p, "base": b, "this": t, "ratio": ratio})
        for k in b:
            what = "L1 misses" if k.endswith("_l1_misses") else "instructions"
            print(f"{p:4d} ports {k.removesuffix('_l1_misses'):8s} {b[k]:9d} -> {t[k]:9d} {what} per cycle   ratio {ratio[k]}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
