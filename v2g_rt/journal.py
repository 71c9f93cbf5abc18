"""The latched-fault journal's file: what only an operator may clear survives any restart.

v2g_rt.services.journal keeps it current. Each write is atomic: a unique temporary
file in the same directory, fsync of the file, rename over the journal, fsync of
the directory; 0600 in a 0700 directory.
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import _core

VERSION = 1
MAX_BYTES = 1 << 20
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
    raw = read_file(path, JournalError)
    if raw is None:
        return None
    try:
        doc = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        raise JournalError(f"not JSON ({type(e).__name__})") from None
    return _shape(doc)


def read_file(path: Path, error) -> bytes | None:
    """A state file's bytes (a regular file of at most MAX_BYTES, not followed through a link);
    None when there is none; `error` (an exception class) says why it cannot be one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise error(f"cannot open it: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error("it is not a regular file")
        if st.st_size > MAX_BYTES:
            raise error(f"{st.st_size} bytes, more than a state file's {MAX_BYTES}")
        return os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)


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
    write_file(path, {"version": VERSION, "site": site_name, "written_at": time.time(), "latch_counter": latch_counter,
                      "ports": {pid: {"bits": bits, "faults": fault_names(bits)}
                                for pid, bits in sorted(journal.ports.items())}})


def write_file(path: Path, doc: dict) -> None:
    """Atomically replace a state file with doc as JSON (replace_file)."""
    replace_file(path, json.dumps(doc, indent=1) + "\n")


def replace_file(path: Path, text: str) -> None:
    """Atomically replace path with text: a unique temporary file (0600) in the same directory
    (made 0700 if missing), fsync, rename, fsync of the directory. OSError on failure, with the
    previous file left as it was and no temporary file behind."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")   # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
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
