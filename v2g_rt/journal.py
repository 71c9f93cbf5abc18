"""The latched-fault journal: what only an operator may clear survives any restart.

A Python thread watches the loop's latch counter and the ports' persistent fault
bits (latched faults, out of service) and writes the journal within one poll
(20 ms) of a change, and once more on every stop path. The loop never writes
files. Each write is atomic: a unique temporary file in the same directory,
fsync of the file, rename over the journal, fsync of the directory; 0600 in a
0700 directory.

A journal that cannot be read as one is not "no faults": every port starts
latched off (FAULT_JOURNAL) until an operator resets it, and says why.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import _core

log = logging.getLogger("v2g_rt")

VERSION = 1
MAX_BYTES = 1 << 20
POLL_S = 0.02
KNOWN_BITS = sum(bit for bit in _core.FAULTS.values() if bit & _core.PERSISTENT_FAULTS)   # named, restorable
FAULT_NAMES = {bit: name for name, bit in _core.FAULTS.items()}


class JournalError(ValueError):
    """The journal exists but is not a journal: its shape, its size or its bytes are wrong."""


@dataclass
class Journal:
    ports: dict[str, int] = field(default_factory=dict)   # port id -> persistent fault bits


def fault_names(bits: int) -> list[str]:
    return [FAULT_NAMES.get(1 << k, f"bit{k}") for k in range(32) if bits >> k & 1]


def read(path: Path) -> Journal | None:
    """The journal at path; None when there is none yet; JournalError when it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise JournalError(f"cannot open it: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise JournalError("it is not a regular file")
        if st.st_size > MAX_BYTES:
            raise JournalError(f"{st.st_size} bytes, more than a journal's {MAX_BYTES}")
        raw = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        doc = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        raise JournalError(f"not JSON ({type(e).__name__})") from None
    return _shape(doc)


def _refuse_constant(name):
    raise ValueError(f"{name} is not a fault set")


def _shape(doc) -> Journal:
    if isinstance(doc, dict) and doc.get("version") == VERSION and isinstance(doc.get("ports"), dict):
        ports = doc["ports"]
    elif isinstance(doc, dict) and "version" not in doc:
        ports = doc                       # the journal written before versions: {port: bits}
    else:
        raise JournalError(f"expected {{\"version\": {VERSION}, \"ports\": {{port: bits}}}}, found {type(doc).__name__}"
                           + (f" version {doc.get('version')!r}" if isinstance(doc, dict) else ""))
    out = Journal()
    for pid, bits in ports.items():
        if isinstance(bits, dict):
            bits = bits.get("bits")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits < 2**32:
            raise JournalError(f"port {pid[:64]!r}: fault bits {str(bits)[:40]} are not an unsigned 32-bit integer")
        if bits:
            out.ports[pid] = bits
    return out


def write(path: Path, journal: Journal, site_name: str, latch_counter: int) -> None:
    """Atomically replace the journal; OSError on failure (nothing half-written is left)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    doc = {"version": VERSION, "site": site_name, "written_at": time.time(), "latch_counter": latch_counter,
           "ports": {pid: {"bits": bits, "faults": fault_names(bits)} for pid, bits in sorted(journal.ports.items())}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")   # 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class JournalService(threading.Thread):
    """Restores the journal into a controller before its loop starts, then keeps it current."""

    def __init__(self, ctrl, path: Path, poll_s: float = POLL_S):
        super().__init__(name="v2g-journal", daemon=True)
        self.ctrl, self.path, self.poll_s = ctrl, path, poll_s
        self.stopping = threading.Event()
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
            current = self._current(snap)
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

    def _current(self, snap) -> dict[str, int]:
        bits = snap.ports["faults"] & _core.PERSISTENT_FAULTS
        return {pid: int(b) for pid, b in zip(snap.port_ids, bits) if b}

    def stop(self) -> None:
        """Stop watching after one last write (call after the loop stopped)."""
        self.stopping.set()
        if self.is_alive():
            self.join()
        self.flush()

    def health(self) -> dict:
        return {"writes": self.writes, "errors": self.errors, "current": self.saved == self._current(self.ctrl.snapshot())}


def _codes(bits: int) -> str:
    from .faults import PORT_CODES
    return ", ".join(PORT_CODES.get(n, "ERR_FAULT_JOURNAL") for n in fault_names(bits)) or "ERR_INTERNAL"
