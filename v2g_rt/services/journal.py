"""The fault journal service: restores the latched-fault journal into a controller before its
loop starts, then keeps it current.

A Python thread watches the loop's latch counter and the ports' persistent fault
bits (latched faults, out of service) and writes the journal within one poll
(20 ms) of a change, and once more on every stop path. The loop never writes
files. A journal that cannot be read as one is not "no faults": every port starts
latched off (FAULT_JOURNAL) until an operator resets it, and says why.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from .. import _core
from ..journal import KNOWN_BITS, Journal, JournalError, fault_names, read, write
from . import Service

log = logging.getLogger("v2g_rt")

POLL_S = 0.02


class JournalService(Service):
    """Restores the journal into a controller before its loop starts, then keeps it current."""

    name = "journal"

    def __init__(self, ctrl, path: Path, poll_s: float = POLL_S):
        super().__init__()
        self.ctrl, self.path, self.poll_s = ctrl, path, poll_s
        self.lock = threading.Lock()
        self.writes = 0
        self.errors = 0
        self.foreign: dict[str, int] = {}       # ports this site does not have: kept, reported
        self.saved: dict[str, int] | None = None
        self.restore()

    # ---------------------------------------------------------------- start

    def restore(self) -> None:
        ports = set(self.ctrl.port_ids)
        try:
            journal = read(self.path)
        except JournalError as e:
            log.error("ERR_FAULT_JOURNAL: %s is not a fault journal (%s): every port starts latched off. Remedy: "
                      "inspect the file and the ports, then `v2g-rt reset-fault --all`", self.path, e)
            self.ctrl.restore_faults({pid: _core.FAULTS["journal"] for pid in self.ctrl.port_ids})
            return
        if journal is None:
            self.saved = {}
            return
        restore = {}
        for pid, bits in journal.ports.items():
            if pid not in ports:
                self.foreign[pid] = bits
                log.error("ERR_FAULT_JOURNAL: %s names port %r, which this site does not have (faults %s); "
                          "kept in the journal, not applied", self.path, pid[:64], ", ".join(fault_names(bits)))
                continue
            if bits & ~KNOWN_BITS:
                log.error("ERR_FAULT_JOURNAL: port %s: journal bits 0x%x are not faults this version knows; kept in "
                          "the journal; the port starts latched off", pid, bits & ~KNOWN_BITS)
                self.foreign[pid] = bits & ~KNOWN_BITS
                bits = (bits & KNOWN_BITS) | _core.FAULTS["journal"]
            restore[pid] = bits
        oos = _core.FAULTS["out_of_service"]
        for pid in self.ctrl.restore_faults(restore):
            bits = restore[pid]
            log.log(logging.WARNING if bits == oos else logging.ERROR, "%s: port %s: %s restored from %s; %s",
                    _codes(bits), pid, ", ".join(n.replace("_", " ") for n in fault_names(bits)), self.path,
                    f"`v2g-rt port enable {pid}` puts it back in service" if bits == oos else
                    f"clear it with `v2g-rt reset-fault {pid}`")

    # ---------------------------------------------------------------- running

    def run(self) -> None:
        while not self.stopping.wait(self.poll_s):
            self.flush()

    def flush(self) -> bool:
        """Write the journal if what it must hold changed; True when it is current on disk."""
        with self.lock:
            snap = self.ctrl.snapshot()
            current = self.ctrl.latched_faults(snap)
            if current == self.saved:
                return True
            merged = dict(current)
            for pid, bits in self.foreign.items():
                merged[pid] = merged.get(pid, 0) | bits
            try:
                write(self.path, Journal(merged), self.ctrl.site.name, int(snap.site["latch_counter"]))
            except OSError as e:
                self.errors += 1
                if self.errors == 1 or self.errors % 500 == 0:
                    log.error("ERR_FAULT_JOURNAL: cannot write %s (%s; %d failures): latched faults would not survive "
                              "a restart. Remedy: free space, permissions of %s", self.path, e, self.errors,
                              self.path.parent)
                return False
            self.saved = current
            self.writes += 1
            return True

    def stop(self) -> None:
        """Stop watching after one last write (call after the loop stopped)."""
        super().stop()
        self.flush()

    def stats(self) -> dict:
        return {"writes": self.writes, "errors": self.errors}

    def health(self) -> dict:
        return {**super().health(), "current": self.saved == self.ctrl.latched_faults()}


def _codes(bits: int) -> str:
    from ..faults import PORT_CODES
    return ", ".join(PORT_CODES.get(n, "ERR_FAULT_JOURNAL") for n in fault_names(bits)) or "ERR_INTERNAL"
