"""Service-manager integration: sd_notify readiness and a watchdog fed only while the loop is healthy.

systemd's WatchdogSec= and a hardware watchdog (/dev/watchdog) both restart or
reset the box when nobody feeds them. We feed them from the loop's health, not
from a Python timer: if the loop stops completing cycles or overruns repeatedly,
the feeding stops and the service manager / the hardware act.
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct

from . import Service

log = logging.getLogger("v2g_rt")

WDIOC_SETTIMEOUT = 0xC0045706     # _IOWR('W', 6, int)
WDIOC_KEEPALIVE = 0x80045705      # _IOR('W', 5, int)


def notify(message: str) -> bool:
    """Send one sd_notify message; False when not run by systemd (no NOTIFY_SOCKET)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(path)
        s.sendall(message.encode())
    return True


class LoopHealth:
    """Healthy when the loop completed cycles since the last look and is not overrunning in a row."""

    def __init__(self, ctrl, max_overrun_streak: int):
        self.ctrl, self.max_streak = ctrl, max_overrun_streak
        self.last_cycles = -1

    def check(self) -> tuple[bool, str]:
        if not self.ctrl.running:
            return False, "loop not running"
        s = self.ctrl.stats()
        stalled = s["cycles"] == self.last_cycles
        self.last_cycles = s["cycles"]
        if stalled:
            return False, f"loop stalled at cycle {s['cycles']}"
        if s["overrun_streak"] >= self.max_streak:
            return False, f"{s['overrun_streak']} overruns in a row"
        return True, "ok"


class HardwareWatchdog:
    """/dev/watchdog: set its timeout, pet it, and disarm it on a clean stop (magic close)."""

    def __init__(self, device: str, timeout_s: int):
        self.fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self.fd, WDIOC_SETTIMEOUT, struct.pack("i", timeout_s))
        except OSError as e:
            log.warning("ERR_WATCHDOG: %s does not take a %d s timeout (%s); using its default", device, timeout_s, e)

    def pet(self) -> None:
        os.write(self.fd, b"\0")

    def disarm(self) -> None:
        os.write(self.fd, b"V")
        os.close(self.fd)


class Watchdog(Service):
    """Feeds systemd's watchdog and the hardware watchdog while the loop is healthy."""

    name = "watchdog"

    def __init__(self, ctrl, interval_s: float, hardware: HardwareWatchdog | None, max_overrun_streak: int):
        super().__init__()
        self.loop = LoopHealth(ctrl, max_overrun_streak)
        self.interval_s, self.hardware = interval_s, hardware
        self.fed = 0
        self.refused = 0

    def run(self) -> None:
        while not self.stopping.wait(self.interval_s):
            ok, why = self.loop.check()
            if ok:
                notify("WATCHDOG=1")
                if self.hardware:
                    self.hardware.pet()
                self.fed += 1
            else:
                self.refused += 1
                log.error("ERR_LOOP_UNHEALTHY: not feeding the watchdog: %s", why)

    def stop(self, clean: bool = True) -> None:
        """Stop feeding; a clean stop disarms the hardware watchdog (magic close)."""
        super().stop()
        if self.hardware and clean:
            self.hardware.disarm()

    def stats(self) -> dict:
        return {"fed": self.fed, "refused": self.refused}


def watchdog_interval_s() -> float | None:
    """Half of systemd's WatchdogSec, from WATCHDOG_USEC (None when systemd set no watchdog for us)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6
