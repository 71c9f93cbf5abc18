"""Faults as the operator sees them: every fault logged with its ERR code when it appears and
when it clears. Latched faults are kept on disk by v2g_rt.services.journal."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from . import _core
from .controller import Controller

log = logging.getLogger("v2g_rt")

PORT_CODES = {"contactor": "ERR_CONTACTOR_MISMATCH", "iso_timeout": "ERR_ISO_TIMEOUT",
              "overtemp": "ERR_EVSE_OVERTEMP", "temp_stale": "ERR_TEMP_STALE",
              "session_stale": "ERR_SESSION_STALE", "journal": "ERR_FAULT_JOURNAL",
              "out_of_service": "ERR_PORT_OUT_OF_SERVICE", "link_down": "ERR_LINK_DOWN",
              "pilot": "ERR_PILOT_STATE", "cp_diode": "ERR_CP_NO_DIODE"}
# Device counters that grow on bad input: (device kind, counter) -> its code
DEVICE_CODES = {("spi", "errors"): "ERR_SPI_TRANSFER", ("spi", "wire_break"): "ERR_SPI_WIRE_BREAK",
                ("spi", "over_range"): "ERR_SPI_OVER_RANGE", ("spi", "between_states"): "ERR_CP_BETWEEN_STATES",
                ("pwm", "write_errors"): "ERR_PWM_WRITE", ("pwm", "mismatches"): "ERR_PWM_READBACK"}
SAFE_CODES = {"overrun": "ERR_CYCLE_OVERRUN"}


def state_dir() -> Path:
    for candidate in (os.environ.get("STATE_DIRECTORY"), "/var/lib/v2g-rt"):
        if candidate and os.access(Path(candidate).parent if not Path(candidate).exists() else candidate, os.W_OK):
            return Path(candidate)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "v2g-rt"


class FaultWatch:
    """Call poll() about once a second beside a running (or stepped) controller."""

    def __init__(self, ctrl: Controller):
        self.ctrl = ctrl
        self.ports = {pid: 0 for pid in ctrl.port_ids}
        self.safe: set[str] = set()
        self.upstreams_waiting = 0
        self.upstreams_lost = 0
        self.stale_meters: set[str] = set()
        self.hot: set[str] = set()
        self.bus_off = 0
        self.feedback_lines = [c.name for c in ctrl.site.sections.get("gpio") or () if c.feedback]
        self.gpio: list[dict] = [{} for _ in self.feedback_lines]
        self.device_counts: dict[tuple, int] = {}

    def poll(self) -> None:
        snap = self.ctrl.snapshot()
        for pid, bits in zip(snap.port_ids, snap.ports["faults"]):
            bits = int(bits)
            old = self.ports[pid]
            for name, bit in _core.FAULTS.items():
                if bits & bit and not old & bit:
                    level = logging.WARNING if name == "out_of_service" else logging.ERROR
                    log.log(level, "%s: port %s: %s", PORT_CODES[name], pid, name.replace("_", " "))
                elif old & bit and not bits & bit:
                    log.info("port %s: %s cleared", pid, name.replace("_", " "))
            self.ports[pid] = bits
        safe = set(snap.site["safe_state"]) - {"stopped"}
        self._upstreams(snap.site["upstreams_waiting"], snap.site["upstreams_lost"])
        for reason in safe - self.safe:
            if reason == "upstream":        # each upstream's own line says whether it is lost or not yet heard
                log.info("Safe State (upstream): charge only, no discharge, until every upstream has been "
                         "healthy for %g s", self.ctrl.site.control.safe_exit_s)
            else:
                log.error("%s: Safe State (%s): charge only, no discharge", SAFE_CODES[reason], reason)
        for reason in self.safe - safe:
            log.info("Safe State (%s) ended", reason)
        self.safe = safe
        stale = {n.id for n in self.ctrl.site.nodes
                 if n.meter_max_age_s is not None and math.isnan(snap.node(n.id)["measured_w"])}
        for nid in stale - self.stale_meters:
            log.error("ERR_METER_STALE: node %s: meter value older than %g s; worst-case non-EV load assumed",
                      nid, self.ctrl.site.node(nid).meter_max_age_s)
        self.stale_meters = stale
        hot = {n.id for n in self.ctrl.site.nodes if n.thermal and snap.node(n.id)["derate"] < 1.0}
        for nid in hot - self.hot:
            log.warning("ERR_TRANSFORMER_HOTSPOT: node %s: hot spot %.1f C, limits derated to %.0f %%", nid,
                        snap.node(nid)["temperature_c"], 100 * snap.node(nid)["derate"])
        for nid in self.hot - hot:
            log.info("node %s: hot-spot derate ended", nid)
        self.hot = hot
        bus_off = self.ctrl.device_stats()["can"]["bus_off"]
        if bus_off > self.bus_off:
            log.error("ERR_CAN_BUS_OFF: the CAN controller went bus-off (%d times so far); J1939 temperatures "
                      "go stale and the interlock derates", bus_off)
        self.bus_off = bus_off
        devices = self.ctrl.device_stats()
        self._gpio(devices["gpio"]["inputs"])
        self._device_counters(devices)

    def _gpio(self, inputs: list[dict]) -> None:
        """Feedback lines: bounces (a warning at most once a poll) and a line that failed."""
        for name, now, old in zip(self.feedback_lines, inputs, self.gpio):
            if now["bounces"] > old.get("bounces", 0):
                log.warning("ERR_GPIO_BOUNCE: [gpio.%s]: %d bounces so far (edges undone within debounce_ms)",
                            name, now["bounces"])
            if now["read_errors"] > old.get("read_errors", 0):
                log.error("ERR_GPIO_LINE: [gpio.%s]: the line request failed (%s); its contactor feedback goes "
                          "stale", name, os.strerror(now["last_errno"]))
        self.gpio = inputs

    def _device_counters(self, stats: dict) -> None:
        """A bad-input counter of an SPI channel or PWM pilot that grew since the last poll: one
        line with its code per device and counter."""
        for (kind, counter), code in DEVICE_CODES.items():
            for k, dev in enumerate(stats.get(kind) or ()):
                n, key = dev.get(counter, 0), (kind, k, counter)
                if n > self.device_counts.get(key, 0):
                    log.error("%s: %s %s: %s %d times so far (last errno %s)", code, kind, dev.get("name", k),
                              counter.replace("_", " "), n, dev.get("last_errno", 0))
                self.device_counts[key] = n

    def _upstreams(self, waiting: int, lost: int) -> None:
        """An upstream not heard since start is waited for (INFO); one heard and then lost is an ERROR."""
        names = [up.name for up in self.ctrl.site.upstreams]
        for k, name in enumerate(names):
            bit = 1 << k
            if waiting & bit and not self.upstreams_waiting & bit:
                log.info("upstream %s: not heard yet since start; Safe State until it is", name)
            if lost & bit and not self.upstreams_lost & bit:
                log.error("ERR_UPSTREAM_LOST: upstream %s: no heartbeat for %g s", name, self.ctrl.site.upstreams[k].timeout_s)
            if self.upstreams_lost & bit and not lost & bit:
                log.info("upstream %s: heard again", name)
        self.upstreams_waiting, self.upstreams_lost = waiting, lost


def journal_path(site) -> Path:
    """The latched-fault journal (the site name is checked safe for a file name: site.SITE_NAME)."""
    return state_dir() / f"latched-faults-{site.name}.json"


def schedule_path(site) -> Path:
    """The scheduled grid commands kept across a restart (v2g_rt.schedule), beside the journal."""
    return state_dir() / f"scheduled-commands-{site.name}.json"


def audit_path(site) -> Path:
    """The operator actions' audit log, beside the journal."""
    return state_dir() / f"audit-{site.name}.log"
