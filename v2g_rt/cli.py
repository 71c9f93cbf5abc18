"""The `v2g-rt` command: run, simulate, calibrate, check, status, explain, bench, modbus read, pki init."""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path

from . import config as site_config
from . import errors, logs
from .config import ConfigError
from .localsock import ClientError

log = logging.getLogger("v2g_rt")


def _load(path):
    return _or_exit(site_config.load, path)


def _or_exit(load, *args):
    """load(*args), or every config problem printed and exit status 2."""
    try:
        return load(*args)
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        raise SystemExit(2)


def cmd_check(args) -> int:
    site = _load(args.file)
    if args.calibration:
        _calibrated(site, args.calibration, required=True)
    links = sorted({n.link for n in site.nodes if n.link})
    mqtt = site.sections.get("mqtt")
    print(f"OK: {args.file}: site {site.name!r}, {len(site.nodes)} nodes, {len(site.ports)} ports, "
          f"period {site.period_s * 1e3:g} ms, links {', '.join(links)}"
          + (f", MQTT {mqtt.host}:{mqtt.port} under {mqtt.prefix}/" if mqtt else ""))
    return 0


def cmd_explain(args) -> int:
    if args.list or not args.code:
        for e in errors.CATALOGUE.values():
            print(f"{e.code:<26} {e.meaning}")
        return 0
    try:
        e = errors.lookup(args.code)
    except KeyError as k:
        print(k.args[0], file=sys.stderr)
        return 2
    print(f"{e.code}\n  meaning: {e.meaning}\n  likely cause: {e.cause}\n  remedy: {e.remedy}")
    return 0


def cmd_status(args) -> int:
    from .services.status import default_socket, query, render

    path = Path(args.socket) if args.socket else default_socket(_load(args.config) if args.config else None)
    while True:
        try:
            doc = query(path)
        except ClientError as e:
            print(e, file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(doc))
        else:
            if args.watch:
                print("\033[H\033[2J", end="")
            print(render(doc))
        if not args.watch:
            return 0
        time.sleep(args.watch)


def _control_path(args) -> Path:
    from .services.status import control_socket
    return Path(args.socket) if args.socket else control_socket(_load(args.config) if args.config else None)


def _control(path: Path, message: dict) -> dict:
    from .localsock import request
    return request(path, message, "control")


def cmd_reset_fault(args) -> int:
    """Clear latched faults, each by the sequence number of the latch the operator saw."""
    path = _control_path(args)
    try:
        ports = _control(path, {"action": "ports"})
        if not ports["ok"]:
            print(f"{ports['code']}: {ports['reason']}", file=sys.stderr)
            return 1
        rows = {p["id"]: p for p in ports["ports"]}
        if args.port and args.port not in rows:
            print(f"ERR_CMD_BAD_PORT: {args.port!r} is not a port of this site; ports with latched faults: "
                  f"{', '.join(p for p, r in rows.items() if r['latched']) or 'none'}", file=sys.stderr)
            return 2
        targets = [rows[args.port]] if args.port else [r for r in rows.values() if r["latched"]]
        failed = 0
        for row in targets:
            if not row["latched"]:
                print(f"{row['id']}: no latched fault")
                continue
            answer = _control(path, {"action": "reset_fault", "port": row["id"], "latch_seq": row["latch_seq"]})
            if not answer["ok"]:
                failed += 1
                print(f"{row['id']}: {answer['code']}: {answer['reason']}", file=sys.stderr)
            elif answer["still_latched"]:
                failed += 1
                print(f"{row['id']}: ERR_FAULT_RELATCHED: still latched ({', '.join(answer['faults'])}, latch "
                      f"#{answer['latch_seq']}): it latched again after latch #{row['latch_seq']} you cleared; "
                      f"find the cause before another reset", file=sys.stderr)
            else:
                print(f"{row['id']}: cleared {', '.join(row['faults'])} (latch #{row['latch_seq']})"
                      + ("" if answer["journaled"] else "; ERR_FAULT_JOURNAL: not yet in the journal"))
        if not targets:
            print("no port has a latched fault")
        return 1 if failed else 0
    except ClientError as e:
        print(e, file=sys.stderr)
        return 1


def cmd_port(args) -> int:
    path = _control_path(args)
    try:
        answer = _control(path, {"action": f"{args.action}_port", "port": args.port})
    except ClientError as e:
        print(e, file=sys.stderr)
        return 1
    if not answer["ok"]:
        print(f"{answer['code']}: {answer['reason']}", file=sys.stderr)
        return 2 if answer["code"] == "ERR_CMD_BAD_PORT" else 1
    state = "out of service" if args.action == "disable" else "in service"
    print(f"{args.port}: {state}" + (f" (faults: {', '.join(answer['faults'])})" if answer["faults"] else "")
          + ("" if answer["journaled"] else "; ERR_FAULT_JOURNAL: not yet in the journal"))
    return 0


def cmd_cancel(args) -> int:
    """End every grid command of a kind, active and scheduled."""
    try:
        answer = _control(_control_path(args), {"action": "cancel", "of": args.kind})
    except ClientError as e:
        print(e, file=sys.stderr)
        return 1
    if not answer["ok"]:
        print(f"{answer['code']}: {answer['reason']}", file=sys.stderr)
        return 1
    print(f"{args.kind}: cancelled" + (f"; {len(answer['left'])} still held (arrived since)" if answer["left"] else ""))
    return 0


LINKS_AVAILABLE = ("sim", "can", "modbus", "ocpp", "pwm")
LINK_SECTIONS = {"ocpp": "[ocpp] with listen, ca, cert and key"}     # links served by a service section


def _unavailable_links(site) -> list[str]:
    out = []
    for n in site.nodes:
        where = f"ERR_LINK_UNAVAILABLE: {site.source}: [node.{n.id}] link: {n.link!r}"
        if n.link in LINK_SECTIONS and not site.sections.get(n.link):
            out.append(f"{where} is served by its service, which this config lacks; add {LINK_SECTIONS[n.link]}")
        elif n.link not in (None, *LINKS_AVAILABLE):
            out.append(f"{where} is not available in this version; use link = "
                       f"{' or '.join(map(repr, LINKS_AVAILABLE))}")
    return out


def _calibrated(site, path=None, required=False):
    """The site with its calibration applied (calibration.toml in the state directory by default)."""
    from . import calibration
    return _or_exit(calibration.load, Path(path) if path else calibration.default_path(), site, required)


def cmd_calibrate(args) -> int:
    from . import calibration
    from .calibrate import calibrate
    from .devices import DeviceError

    site = _load(args.config)
    out = Path(args.out) if args.out else calibration.default_path()
    ask = _ask_terminal if sys.stdin.isatty() else None
    t0 = time.monotonic()
    try:
        outcome, written = calibrate(site, out, args.answers, args.inject, show=lambda line: _print(line, flush=True),
                                     ask_terminal=ask)
    except DeviceError as e:
        print(f"{e}\nERR_CALIBRATION_INTERRUPTED: a device could not be opened; {out} left as it was", file=sys.stderr)
        return 1
    seconds = time.monotonic() - t0
    if written is None:
        print(f"calibration FAILED: {len(outcome.failed)} of {outcome.steps} steps; nothing written, {out} left as "
              f"it was ({seconds:.1f} s)", file=sys.stderr)
        for step, verdict in outcome.failed:
            print(f"  {step.id}: {verdict.code}: {verdict.detail}", file=sys.stderr)
        return 1
    _print(f"calibration passed: {outcome.steps} steps in {seconds:.1f} s; wrote {written}")
    return 0


def _ask_terminal(step_id, q) -> str:
    hint = "yes/no" if q.confirm else f"{q.lo:g} .. {q.hi:g} {q.unit}".strip()
    return input(f"  [{step_id}] {q.prompt} ({hint}): ")


def cmd_run(args) -> int:
    from .app import App
    from .devices import DeviceError

    site = _calibrated(_load(args.config))
    logfile = logs.setup(foreground=True)
    problems = _unavailable_links(site)
    if problems:
        for p in problems:
            log.error("%s", p)
        return 2
    try:
        app = App(site)                  # restores latched faults before the loop runs
    except DeviceError as e:
        log.error("%s", e)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):   # SIGHUP: the terminal went away
        signal.signal(sig, lambda *_: stop.set())
    app.start(logfile)
    t0 = time.monotonic()
    tty = sys.stdout.isatty()
    last_line = 0.0
    try:
        while not stop.wait(1.0):
            elapsed = time.monotonic() - t0
            app.poll()
            if tty or elapsed - last_line >= 10:
                _print(("\r" if tty else "") + _status_line(app.ctrl), end="" if tty else "\n", flush=True)
                last_line = elapsed
            if args.duration and elapsed >= args.duration:
                break
    finally:
        app.stop()
        if tty:
            _print()
    summary = _summary(app.ctrl, time.monotonic() - t0, app.plant)
    _print(json.dumps(summary, indent=2))
    log.info("stopped: %s", json.dumps(summary))
    return 0


def _print(*args, **kw) -> None:
    """print() that outlives a closed stdout (a pipe to `head`, a terminal gone): the loop runs on."""
    try:
        print(*args, **kw)
    except (BrokenPipeError, ValueError, OSError):
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass


def _status_line(ctrl) -> str:
    s = ctrl.snapshot().site
    st = ctrl.stats()
    sp = "none" if s["setpoint_w"] != s["setpoint_w"] else f"{s['setpoint_w'] / 1e3:.1f} kW"
    return (f"fleet {s['fleet_w'] / 1e3:7.1f} kW  setpoint {sp:>10}  charging {s['ports_charging']:3d}  "
            f"discharging {s['ports_discharging']:3d}  binding {s['binding']:<14} "
            f"wake p99 {st['wake_latency'].get('p99_us', 0):6.0f} us  overruns {st['overruns']}"
            + (f"  SAFE STATE ({'+'.join(s['safe_state'])})" if s["safe_state"] else ""))


def _peak_rss_kb() -> int:
    """This program's peak resident set. ru_maxrss keeps the high-water mark of the address space
    exec replaced (Linux), so a `v2g-rt run` started from a big parent by fork + exec reported the
    parent's size; VmHWM belongs to the current address space."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _summary(ctrl, seconds, plant) -> dict:
    st = ctrl.stats()
    out = {"seconds": round(seconds, 1), "cycles": st["cycles"], "overruns": st["overruns"],
           "skipped_periods": st["skipped_periods"], "wake_latency_us": st["wake_latency"],
           "compute_us": st["compute"], "rt": {k: v for k, v in (st["rt"] or {}).items() if k != "loop_tid"},
           "peak_rss_mb": round(_peak_rss_kb() / 1024, 1),
           "devices": ctrl.device_stats()}
    if plant:
        out["plant"] = plant.plant.summary()
    return out


def _safe_can(site) -> str:
    from .devices.can import safe_outputs
    return safe_outputs(site)


def _safe_modbus(site) -> str:
    from .services.modbus import safe_outputs
    return safe_outputs(site)


def _safe_pwm(site) -> str:
    from .devices.pwm import safe_outputs
    return safe_outputs(site)


# What puts an EVSE link's outputs in their safe state once the controller is gone
# (systemd ExecStopPost), per link kind: site -> what was done (raises DeviceError). Every link's
# far side also falls back by itself (its dead-man): this only makes it immediate.
SAFE_OUTPUTS = {
    "sim": lambda site: "no physical output: the simulated EVs stop with the controller",
    "can": _safe_can,
    "modbus": _safe_modbus,
    "pwm": _safe_pwm,
    "ocpp": lambda site: "nothing to send: each station falls back by itself to its stack-level-0 TxDefaultProfile "
                         "(charge only) once our TxProfile's validity ends",
}


def cmd_safe_outputs(args) -> int:
    from .devices import DeviceError

    site = _load(args.config)
    by_link: dict[str, list[str]] = {}
    for n in site.nodes:
        if n.link:
            by_link.setdefault(n.link, []).append(n.id)
    code = 0
    for link, evses in sorted(by_link.items()):
        action = SAFE_OUTPUTS.get(link)
        if action is None:
            print(f"ERR_LINK_UNAVAILABLE: {len(evses)} EVSEs on link {link!r}: no safe-output action in this "
                  f"version", file=sys.stderr)
            code = 1
            continue
        try:
            print(f"{len(evses)} EVSEs on link {link!r}: {action(site)}")
        except DeviceError as e:
            print(f"{len(evses)} EVSEs on link {link!r}: {e}", file=sys.stderr)
            code = 1
    if site.sections.get("gpio"):              # contactors wired to GPIO, whatever the link
        from .devices.gpio import safe_outputs
        try:
            print(f"GPIO: {safe_outputs(site)}")
        except DeviceError as e:
            print(f"GPIO: {e}", file=sys.stderr)
            code = 1
    return code


def cmd_simulate(args) -> int:
    from .sim.drive import SIMULATE_PERIOD_S, simulate

    site = _load(args.config)
    out = Path(args.out)

    def progress(f):
        print(f"\r{f * 100:5.1f} %", end="", file=sys.stderr, flush=True)

    period_s = args.period_ms / 1e3 if args.period_ms else max(site.period_s, SIMULATE_PERIOD_S)
    summary = simulate(site, args.hours, out, period_s=period_s,
                       sample_s=args.sample_s, progress=progress if sys.stderr.isatty() else None)
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / 'timeline.csv'}, {out / 'timeline.png'}, {out / 'summary.json'}", file=sys.stderr)
    return 0 if summary["limit_violations"] == 0 else 3


def cmd_modbus_read(args) -> int:
    """Read a [modbus.NAME] device's map once: each value with its register and unit."""
    import asyncio

    from .services.modbus import Failure, read_once

    site = _load(args.config)
    devices = {cfg.name: cfg for cfg in site.sections.get("modbus") or ()}
    cfg = devices.get(args.name)
    if cfg is None:
        print(f"ERR_CONFIG_VALUE: {site.source}: no [modbus.{args.name}]; Modbus devices of this site: "
              f"{', '.join(devices) or 'none'}", file=sys.stderr)
        return 2
    try:
        rmap, values = asyncio.run(read_once(cfg))
    except Failure as f:
        print(f"{f.code}: [modbus.{cfg.name}] {cfg.host}:{cfg.port} unit {cfg.unit}: {f}", file=sys.stderr)
        return 1
    print(f"[modbus.{cfg.name}] {cfg.host}:{cfg.port} unit {cfg.unit}: {rmap.source}")
    for point, value, code in values:
        shown = code or ("no value" if value is None else f"{value:.6g} {point.unit}".rstrip())
        print(f"  {point.name:<20} {point.table} {point.register:<24} {shown}")
    return 1 if any(code for _, _, code in values) else 0


def cmd_pki_init(args) -> int:
    """The site CA, the controller's server certificate and one client certificate per station."""
    from . import pki

    written = pki.init(args.dir, args.station, args.server_name)
    for path in written:
        print(path)
    print(f"the CA's key {Path(args.dir) / 'ca.key'} signs new certificates: keep it offline once the stations "
          f"are installed", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from . import bench

    loads = tuple(x.strip() for x in args.load.split(","))
    bad = [x for x in loads if x not in ("none", "python", "stress")]
    if bad or args.period_us < 10 or args.duration <= 0 or args.window <= 0 or not 1 <= args.ports <= 256:
        print(f"bench: expected --load from none,python,stress (found {','.join(bad) or 'ok'}), --period-us >= 10, "
              f"--duration and --window > 0, --ports 1..256", file=sys.stderr)
        return 2
    setup = bench.Setup(period_us=args.period_us, window_s=args.window,
                        windows=max(1, round(args.duration / args.window)), ports=args.ports, loads=loads,
                        priority=args.priority, cpu=args.cpu, load_threads=args.load_threads,
                        baseline=bench.find_baseline(args.baseline))
    result = bench.run(setup)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        bench.plot(result, Path(args.plot))
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="v2g-rt", description="V2G local controller with a native real-time cycle")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the real-time loop (default: the built-in simulated site)")
    r.add_argument("--config", help="site config (TOML); default: the built-in 50-port simulated depot")
    r.add_argument("--duration", type=float, help="stop after this many seconds")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("simulate", help="run the site in virtual time as fast as possible")
    s.add_argument("--config")
    s.add_argument("--hours", type=float, required=True)
    s.add_argument("--out", required=True, help="directory for timeline.csv, timeline.png, summary.json")
    s.add_argument("--period-ms", type=float,
                   help="cycle period in virtual time (default: the site's period, at least 10 ms)")
    s.add_argument("--sample-s", type=float, default=60.0, help="timeline sample interval")
    s.set_defaults(func=cmd_simulate)
    ca = sub.add_parser("calibrate", help="guided commissioning: devices, pilots' duty, contactors, meter sign and "
                                          "CT, port phases; "
                                          "writes calibration.toml")
    ca.add_argument("--config", help="site config (TOML); default: the built-in simulated depot")
    ca.add_argument("--out", help="where to write the result (default: $STATE_DIRECTORY/calibration.toml)")
    ca.add_argument("--answers", help="answers keyed by step id (TOML or JSON): runs without questions")
    ca.add_argument("--inject", choices=("reversed-ct", "swapped-phases", "dead-channel", "welded-contactor"),
                    help="simulated site only: the plant miswires itself; calibration must find it")
    ca.set_defaults(func=cmd_calibrate)
    c = sub.add_parser("check", help="validate a site config (and a calibration file with --calibration)")
    c.add_argument("file")
    c.add_argument("--calibration", help="also check this calibration file against the site")
    c.set_defaults(func=cmd_check)
    st = sub.add_parser("status", help="show a running controller's state")
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", type=float, nargs="?", const=1.0, help="refresh every N s (default 1)")
    st.add_argument("--socket", help="status socket path")
    st.add_argument("--config", help="find the socket path in this site config")
    st.set_defaults(func=cmd_status)
    rf = sub.add_parser("reset-fault", help="clear latched faults of a port (or --all) on a running controller")
    target = rf.add_mutually_exclusive_group(required=True)
    target.add_argument("port", nargs="?")
    target.add_argument("--all", action="store_true", help="every port with a latched fault")
    rf.add_argument("--socket", help="control socket path")
    rf.add_argument("--config", help="find the socket path in this site config")
    rf.set_defaults(func=cmd_reset_fault)
    po = sub.add_parser("port", help="take a port out of service, or put it back (on a running controller)")
    po.add_argument("action", choices=("disable", "enable"))
    po.add_argument("port")
    po.add_argument("--socket", help="control socket path")
    po.add_argument("--config", help="find the socket path in this site config")
    po.set_defaults(func=cmd_port)
    ca = sub.add_parser("cancel", help="end every grid command of a kind, active and scheduled (on a running controller)")
    ca.add_argument("kind", choices=("setpoint", "export_limit", "import_limit", "load_shed"))
    ca.add_argument("--socket", help="control socket path")
    ca.add_argument("--config", help="find the socket path in this site config")
    ca.set_defaults(func=cmd_cancel)
    e = sub.add_parser("explain", help="explain an ERR_... code")
    e.add_argument("code", nargs="?")
    e.add_argument("--list", action="store_true")
    e.set_defaults(func=cmd_explain)
    so = sub.add_parser("safe-outputs", help="put every EVSE output in its safe state (systemd ExecStopPost)")
    so.add_argument("--config")
    so.set_defaults(func=cmd_safe_outputs)
    mb = sub.add_parser("modbus", help="Modbus devices of a site: read one's map once (wiring check)")
    mb_sub = mb.add_subparsers(dest="modbus_command", required=True)
    mr = mb_sub.add_parser("read", help="read every value of [modbus.NAME] once and print it with register and unit")
    mr.add_argument("--config", help="site config (TOML) with the [modbus.NAME] section")
    mr.add_argument("name")
    mr.set_defaults(func=cmd_modbus_read)
    pk = sub.add_parser("pki", help="certificates for OCPP Security Profile 3")
    pk_sub = pk.add_subparsers(dest="pki_command", required=True)
    pi = pk_sub.add_parser("init", help="create a site CA, the controller's certificate and one per station")
    pi.add_argument("dir")
    pi.add_argument("--station", action="append", required=True, metavar="ID",
                    help="a station (EVSE node) id; repeat for each station")
    pi.add_argument("--server-name", action="append", default=[], metavar="NAME",
                    help="a DNS name or IP address of the controller (default: localhost and 127.0.0.1); repeat")
    pi.set_defaults(func=cmd_pki_init)
    b = sub.add_parser("bench", help="cycle jitter side by side with cyclictest and a Python loop")
    b.add_argument("--period-us", type=int, default=1000)
    b.add_argument("--duration", type=float, default=60.0, help="seconds per contender and load")
    b.add_argument("--window", type=float, default=2.0, help="seconds per window; contenders alternate")
    b.add_argument("--ports", type=int, default=50)
    b.add_argument("--load", default="none", help="none, python, stress, or a comma list run in alternation")
    b.add_argument("--load-threads", type=int, default=4, help="busy Python threads for --load python")
    b.add_argument("--priority", type=int, default=80)
    b.add_argument("--cpu", type=int, help="CPU for every contender (default: the last one)")
    b.add_argument("--baseline", help="a Python baseline file to run instead of the packaged v2g_rt/python_cycle.py")
    b.add_argument("--json", help="write the results as JSON")
    b.add_argument("--plot", help="write a latency histogram PNG")
    b.set_defaults(func=cmd_bench)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except errors.V2GError as err:
        print(err, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
