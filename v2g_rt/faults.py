"""Faults as the operator sees them: every fault logged with its ERR code when it appears and
when it clears, and latched faults kept on disk so that they survive a restart."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from . import _core
from .controller import Controller

log = logging.getLogger("v2g_rt")

PORT_CODES = {"contactor": "ERR_CONTACTOR_MISMATCH", "iso_timeout": "ERR_ISO_TIMEOUT",
              "overtemp": "ERR_EVSE_OVERTEMP", "temp_stale": "ERR_TEMP_STALE",
              "session_stale": "ERR_SESSION_STALE"}
SAFE_CODES = {"link": "ERR_UPSTREAM_LOST", "overrun": "ERR_CYCLE_OVERRUN"}


def state_dir() -> Path:
    for candidate in (os.environ.get("STATE_DIRECTORY"), "/var/lib/v2g-rt"):
        if candidate and os.access(Path(candidate).parent if not Path(candidate).exists() else candidate, os.W_OK):
            return Path(candidate)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "v2g-rt"


class FaultWatch:
    """Call poll() about once a second beside a running (or stepped) controller."""

    def __init__(self, ctrl: Controller, journal: Path):
        self.ctrl, self.journal = ctrl, journal
        self.ports = {pid: 0 for pid in ctrl.port_ids}
        self.safe: set[str] = set()
        self.stale_meters: set[str] = set()
        self.hot: set[str] = set()
        self.bus_off = 0
        self.saved: dict[str, int] = {}
        try:
            saved = json.loads(journal.read_text())
        except FileNotFoundError:
            saved = {}
        except (OSError, ValueError) as e:
            log.error("ERR_FAULT_JOURNAL: cannot read %s (%s); latched faults from before the restart are lost", journal, e)
            saved = {}
        for pid in ctrl.restore_faults(saved):
            log.error("%s: port %s: latched fault restored from %s; clear it with a reset_fault command",
                      _codes(saved[pid]), pid, journal)
        self.saved = {pid: saved[pid] for pid in saved if pid in self.ports}

    def poll(self) -> None:
        snap = self.ctrl.snapshot()
        for pid, bits in zip(snap.port_ids, snap.ports["faults"]):
            bits = int(bits)
            old = self.ports[pid]
            for name, bit in _core.FAULTS.items():
                if bits & bit and not old & bit:
                    log.error("%s: port %s: %s", PORT_CODES[name], pid, name.replace("_", " "))
                elif old & bit and not bits & bit:
                    log.info("port %s: %s cleared", pid, name.replace("_", " "))
            self.ports[pid] = bits
        safe = set(snap.site["safe_state"])
        for reason in safe - self.safe:
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
        latched = self.ctrl.latched_faults()
        if latched != self.saved:
            self._save(latched)

    def _save(self, latched: dict[str, int]) -> None:
        try:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.journal.with_suffix(".tmp")
            tmp.write_text(json.dumps(latched, indent=1) + "\n")
            os.replace(tmp, self.journal)
            self.saved = latched
        except OSError as e:
            log.error("ERR_FAULT_JOURNAL: cannot write %s (%s); latched faults would not survive a restart",
                      self.journal, e)


def _codes(bits: int) -> str:
    return ", ".join(PORT_CODES[n] for n, b in _core.FAULTS.items() if int(bits) & b) or "ERR_INTERNAL"


def journal_path(site) -> Path:
    safe_name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in site.name)
    return state_dir() / f"latched-faults-{safe_name}.json"
