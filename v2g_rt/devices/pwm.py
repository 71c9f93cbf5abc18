"""The control pilot's PWM (IEC 61851-1) through the PWM sysfs interface, one channel per port of a
link = "pwm" EVSE.

The loop's write stage turns each port's setpoint into a duty with the project's one
current <-> duty map (native pilot.pxi) and hands it to the native I/O thread, which writes
/sys/class/pwm/pwmchipN/pwmM/duty_cycle when it changed (exporting the channel and writing
period and enable first), reads it back, and counts refusals, missing files and readbacks
that disagree (native io_pwm.pxi). Nothing here writes while the controller runs.

A sim pwmchip is a directory laid out like /sys/class/pwm under a temporary path; its far
side (v2g_rt.sim.peers.pwm, never imported here) plays the chip. The I/O thread writes it
with the same code.

Config: [pwm.NAME] backend (sysfs|sim), chip (N of pwmchipN), channel (M of pwmM), port,
period_ns (default 1 ms: the pilot's 1 kHz), interval_ms (how often the I/O thread looks).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from .. import _core
from . import DeviceError

SECTION = "pwm"              # [pwm.NAME]: one table per pilot
SYSFS = "/sys/class/pwm"
PILOT_PERIOD_NS = 1_000_000  # IEC 61851-1: 1 kHz +- 0.5 %


@dataclass(frozen=True)
class PwmConfig:
    name: str
    backend: str             # sysfs | sim
    chip: int
    channel: int
    port: str
    period_ns: int
    interval_s: float

    def chip_dir(self, root: str) -> str:
        return os.path.join(root, f"pwmchip{self.chip}")


def check_config(cf, site) -> list[PwmConfig]:
    out = []
    ports = {p.id: p for p in site.ports}
    seen: dict[tuple, str] = {}
    for sec in cf.tables("pwm"):
        name = sec.name.split(".", 1)[1]
        cfg = PwmConfig(name=name, backend=sec.get_str("backend", "sysfs", choices=("sysfs", "sim")),
                        chip=sec.get_int("chip", 0, minval=0, maxval=1023),
                        channel=sec.get_int("channel", 0, minval=0, maxval=1023), port=sec.get_str("port"),
                        period_ns=sec.get_int("period_ns", PILOT_PERIOD_NS, minval=990_000, maxval=1_010_000),
                        interval_s=sec.get_float("interval_ms", 10.0, minval=1, maxval=1000, unit="ms") / 1e3)
        port = ports.get(cfg.port)
        if cfg.port and port is None:
            sec.problem("port", f"{cfg.port!r} is not a port of this site; ports are EVSE.N (e.g. "
                                f"{next(iter(ports), 'evse1.1')})", "ERR_CONFIG_DEVICE")
        elif port is not None and site.node(port.evse).link != "pwm":
            sec.problem("port", f"port {cfg.port} is on EVSE {port.evse}, whose link is "
                                f"{site.node(port.evse).link!r}; a PWM pilot drives a link = \"pwm\" EVSE's ports",
                        "ERR_CONFIG_DEVICE")
        for key, what in (((cfg.backend, cfg.chip, cfg.channel), "channel"), (cfg.port, "port")):
            if key in seen:
                sec.problem(what, f"the same {what} as [{seen[key]}]; one PWM channel per port", "ERR_CONFIG_DEVICE")
            seen.setdefault(key, sec.name)
        out.append(cfg)
    return out


def feeds(site) -> list:
    """A PWM pilot feeds no source: its duty read back is a statistic (device_stats()["pwm"])."""
    return []


class PwmDevice:
    """The chip directory the I/O thread writes; a sim one's temporary tree is removed at close."""

    def __init__(self, root: str, cfg: PwmConfig, owned: bool):
        self.root, self.cfg, self.owned = root, cfg, owned

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


def check_chip(cfg: PwmConfig, root: str = SYSFS) -> None:
    chip = cfg.chip_dir(root)
    if not os.path.isdir(chip):
        raise DeviceError(f"[pwm.{cfg.name}] {chip} does not exist. Remedy: enable the PWM controller in the board's "
                          f"device tree; `ls {root}` lists the chips")
    npwm = _read_int(os.path.join(chip, "npwm"))
    if npwm is not None and cfg.channel >= npwm:
        raise DeviceError(f"[pwm.{cfg.name}] pwmchip{cfg.chip} has {npwm} channels; channel {cfg.channel} does not "
                          f"exist")
    if not os.access(os.path.join(chip, "export"), os.W_OK):
        raise DeviceError(f"[pwm.{cfg.name}] no permission on {chip}/export. Remedy: the udev rule in hw/udev gives "
                          f"group pwm the pwmchips")


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def attach(ctrl, site):
    """Hand each pilot to the core; returns the devices, the root of the sim chips (None without
    them: their far side plays the pwmchips under it) and the sim pilots' configs."""
    devices, root, sim = [], None, []
    for cfg in site.sections["pwm"]:
        if cfg.backend == "sim":
            if root is None:
                root = tempfile.mkdtemp(prefix="v2g-pwm-")
                devices.append(PwmDevice(root, cfg, owned=True))
            sim.append(cfg)
            base = root
        else:
            check_chip(cfg)
            devices.append(PwmDevice(SYSFS, cfg, owned=False))
            base = SYSFS
        ctrl.add_pwm_channel(cfg.port, cfg.chip_dir(base), cfg.channel, cfg.period_ns, cfg.interval_s)
    return devices, root, sim


def safe_outputs(site) -> str:
    """Without a running controller (systemd ExecStopPost): every sysfs pilot to duty 100 %, a steady
    +12 V: IEC 61851-1's "no current available" (state A/B1), which every vehicle obeys by not
    drawing, and from which it resumes when a controller offers a current again. Disabling the
    output instead would leave the CP at whatever the driver idles at (often -12 V, state F, an
    EVSE fault to the vehicle): not a defined state. Raises DeviceError naming each pilot it
    could not reach."""
    failed, done = [], 0
    for cfg in site.sections.get("pwm") or ():
        if cfg.backend == "sim":
            continue
        pwm = os.path.join(cfg.chip_dir(SYSFS), f"pwm{cfg.channel}")
        try:
            if not os.path.isdir(pwm):
                _write(os.path.join(cfg.chip_dir(SYSFS), "export"), cfg.channel)
                time.sleep(0.05)           # udev sets the new channel's group
            period = _read_int(os.path.join(pwm, "period"))
            if not period:                 # freshly exported: a duty above the period is refused
                _write(os.path.join(pwm, "period"), cfg.period_ns)
            _write(os.path.join(pwm, "duty_cycle"), period or cfg.period_ns)
            _write(os.path.join(pwm, "enable"), 1)
            done += 1
        except OSError as e:
            failed.append(f"[pwm.{cfg.name}] port {cfg.port} ({pwm}): {e.strerror or e}")
    if failed:
        raise DeviceError("could not set the safe duty (100 %, +12 V) on " + "; ".join(failed) +
                          ". Remedy: check the pwmchip and its permissions (hw/udev); the vehicles keep the last "
                          "duty until then", "ERR_PWM_WRITE")
    sims = sum(1 for c in site.sections.get("pwm") or () if c.backend == "sim")
    return (f"{done} pilots at 100 % duty (+12 V, no current offered)" +
            (f"; {sims} simulated pilots stop with the controller" if sims else ""))


def _write(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(f"{value}\n")


# calibration: test currents whose duties on the map are whole quanta, on both of its segments:
# 10, 30, 50 % (6-51 A: I / 0.6) and 90 % (51-80 A: I / 2.5 + 64) where the port's rating allows
TEST_CURRENTS_A = (6.0, 18.0, 30.0, 65.0)


def calibration_steps(site, bench) -> list:
    """Per pilot: with a test box in state C at its port (calibrate.pilot_test_box), the port alone
    in service and the fleet setpoint at each test current, so the loop turns it into a duty as
    it turns any setpoint: the duty the I/O thread read back from sysfs and the engineer's logic
    analyser reading must both be within one pilot quantum (pilot_duty_step_pct) of the map's
    duty for that current (calibrate.duty_readback; ERR_CALIBRATION_DUTY). A sim site's test box
    is the SPI ADC far side's (its CP follows the chip's PWM) and its logic analyser reads the sim
    pwmchip's files. Afterwards the port is out of service again and the CP as it was."""
    from ..calibrate import CalibrationError, Step, duty_readback, pilot_test_box, port_alone, port_faults
    from ..pilot import pilot_current, pilot_duty, pilot_floor
    from .spi import cp_channel

    steps = []
    quantum = site.control.pilot_duty_step_pct
    for cfg in site.sections["pwm"]:
        port = next(p for p in site.ports if p.id == cfg.port)
        wpa = site.node(port.evse).watts_per_amp
        amps = [a for a in TEST_CURRENTS_A if a * wpa <= port.rating_charge_w]
        cp = cp_channel(site, cfg.port)
        if not amps or cp is None:
            continue
        chips = bench.devices.pwm_peer if cfg.backend == "sim" else None
        adcs = bench.devices.spi_peer
        adcs = adcs if adcs is not None and cp.source in adcs.by_source else None
        step_id, what = f"pwm.{cfg.name}.duty", f"pilot of port {cfg.port} ([pwm.{cfg.name}])"

        def set_duty(pct, cfg=cfg, wpa=wpa):
            amps = pilot_current(pct)
            bench.command("setpoint", value_w=amps * wpa)
            want = _core.pilot_duty_to_ns(pilot_duty(pilot_floor(amps, quantum)), cfg.period_ns)
            d = _read_back(bench, cfg, want, amps * wpa / site.control.port_ramp_w_per_s + 2.0)
            if d["duty_ns"] != want:
                raise CalibrationError("ERR_CALIBRATION_PILOT", f"pilot of port {cfg.port}: the loop offers "
                                       f"{100.0 * d['duty_ns'] / cfg.period_ns:g} %, not {pct:g} % for {amps:g} A; "
                                       f"port faults: {port_faults(bench, cfg.port)}")
            if d["readback_ns"] < 0:
                raise CalibrationError("ERR_CALIBRATION_DUTY", f"pilot of port {cfg.port}: no duty read back from "
                                       f"{d['path']} ({d['write_errors']} write and {d['readback_errors']} read "
                                       f"errors, last errno {d['last_errno']})")
            return 100.0 * d["readback_ns"] / cfg.period_ns

        measured = (lambda cfg=cfg, chips=chips: chips.duty(cfg.port) or 0.0) if chips else None
        plug = None
        if adcs is not None:
            duty = (lambda cfg=cfg, chips=chips: chips.duty(cfg.port)) if chips else None
            plug = lambda src=cp.source, adcs=adcs, duty=duty: adcs.plug(src, "C", duty)     # noqa: E731
        check = duty_readback(step_id, what, set_duty, tuple(pilot_duty(a) for a in amps), quantum + 1e-9,
                              measured, settle_s=0.0, section=f"pwm.{cfg.name}")

        def run(b, step_id=step_id, what=what, cfg=cfg, amps=amps, wpa=wpa, plug=plug, adcs=adcs, src=cp.source,
                check=check):
            try:
                refused = pilot_test_box(b, step_id, what, cfg.port, "ERR_CALIBRATION_PILOT", plug)
                if refused is not None:
                    return refused
                with port_alone(b, cfg.port, amps[0] * wpa):
                    return check.run(b)
            finally:
                if adcs is not None:
                    adcs.plug(src, None)
        steps.append(Step(step_id, f"{what}: duty at {', '.join(f'{a:g}' for a in amps)} A with a test box in "
                                   f"state C", run))
    return steps


def _read_back(bench, cfg: PwmConfig, want_ns: int, wait_s: float) -> dict:
    """The pilot's I/O statistics once the loop asks want_ns and the I/O thread read it back from
    sysfs, or as they are after wait_s."""
    waited = 0.0
    while True:
        d = next(d for d in bench.ctrl.device_stats()["pwm"] if d["port"] == cfg.port)
        if (d["duty_ns"] == d["readback_ns"] == want_ns) or waited >= wait_s:
            return d
        bench.settle(0.1)
        waited += 0.1
