"""Grid commands the loop holds, seen from Python: which queue slot a scheduled command may take,
what each held command is called (the loop knows only id hashes), and the file that carries the
scheduled ones across a restart.

The loop (native/schedule.pxi) is the truth: it publishes, per grid kind, the active command and
MAX_SCHEDULED queue slots, each with the generation its submitter gave it. A slot is free when
its latest push has been taken (the published generation is ours) and the loop no longer holds
it; so no slot is handed out twice and a full queue is refused here, with its code, before the
command reaches the loop.

The file (scheduled-commands-SITE.json in the state directory) is written as the latched-fault
journal is (journal.write_file: atomic, fsync'd). It keeps the commands
that came with a start (queued, or active since their window opened) with wall-clock start and
expiry, because CLOCK_MONOTONIC does not survive a reboot; on start they are submitted again
through Controller.submit (so the same checks apply and the wall clock must be synchronised),
the expired ones dropped.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _core
from .journal import read_file, write_file

MAX_SCHEDULED = _core.CAPACITY["scheduled_per_kind"]
GRID_KINDS = tuple(k for k, v in sorted(_core.COMMAND_KINDS.items(), key=lambda kv: kv[1]) if v < _core.GRID_COMMANDS)
VERSION = 1


@dataclass
class Held:
    """A grid command as submitted: what the loop's id hash stands for."""
    kind: str
    source: str
    id: int | str
    value_w: float
    starts_ns: int | None            # None: its window opened when the loop took it
    expires_ns: int
    starts_at: float | None          # wall clock as sent; re-anchored when the clock steps
    expires_at: float | None
    pushed: int                      # its number among the pushes (Core.pushed)
    slot: int = -1
    wall_starts: float | None = None     # on the wall clock, as sent or as converted on receipt
    wall_expires: float | None = None


def _rows(raw: bytes, name: str) -> np.ndarray:
    from .controller import row_dtype
    return np.frombuffer(raw, row_dtype(name))


class Book:
    """The loop's queue slots and the names of the commands it holds (the caller holds its lock)."""

    def __init__(self, core):
        self.core = core
        self.gen = np.zeros((len(GRID_KINDS), MAX_SCHEDULED), np.uint32)   # the latest we pushed, per slot
        self.held: dict[int, Held] = {}

    def view(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The latest published (active per kind, queue per kind x slot, commands taken)."""
        active, queued, applied = self.core.read_schedule()
        return _rows(active, "active"), _rows(queued, "scheduled").reshape(len(GRID_KINDS), MAX_SCHEDULED), applied

    def free_slot(self, kind: int, queued: np.ndarray) -> int | None:
        row = queued[kind]
        free = np.flatnonzero((row["gen"] == self.gen[kind]) & (row["used"] == 0))
        return int(free[0]) if free.size else None

    def take_slot(self, kind: int, slot: int) -> int:
        """The generation of the slot's next push."""
        self.gen[kind, slot] += 1
        return int(self.gen[kind, slot])

    def note(self, h: int, held: Held) -> None:
        self.held[h] = held

    def prune(self, active: np.ndarray, queued: np.ndarray, applied: int) -> None:
        """Forget the commands the loop took and no longer holds."""
        holds = set(active["id_hash"][active["active"] != 0].tolist())
        holds.update(queued["id_hash"][queued["used"] != 0].tolist())
        for h in [h for h, c in self.held.items() if h not in holds and applied >= c.pushed]:
            del self.held[h]

    def listing(self, active: np.ndarray, queued: np.ndarray, applied: int, now_ns: int,
                wall_now: float) -> list[dict]:
        """Every command the loop holds, active first, then queued by start, kind by kind; then
        those sent that the loop has not taken yet ("pending")."""
        out = []
        shown = set()
        for k, kind in enumerate(GRID_KINDS):
            rows = [("active", active[k])] if active[k]["active"] else []
            rows += sorted((("queued", q) for q in queued[k] if q["used"]), key=lambda r: int(r[1]["starts_ns"]))
            rows += [("pending", {"id_hash": h, "value": c.value_w, "expires_ns": c.expires_ns,
                                  "starts_ns": now_ns if c.starts_ns is None else c.starts_ns})
                     for h, c in self.held.items() if c.kind == kind and applied < c.pushed]
            for state, r in rows:
                if int(r["id_hash"]) in shown:
                    continue
                shown.add(int(r["id_hash"]))
                held = self.held.get(int(r["id_hash"]))
                starts, expires = int(r["starts_ns"]), int(r["expires_ns"])
                at = (wall_now + (starts - now_ns) / 1e9, wall_now + (expires - now_ns) / 1e9)
                if held is not None and held.wall_expires is not None:     # stable: what it was sent as
                    at = (held.wall_starts if held.wall_starts is not None else at[0], held.wall_expires)
                out.append({"kind": kind, "state": state, "id": held.id if held else None,
                            "source": held.source if held else None, "value_w": float(r["value"]),
                            "scheduled": bool(held and held.starts_ns is not None),
                            "starts_ns": starts, "expires_ns": expires,
                            "starts_in_s": round((starts - now_ns) / 1e9, 3),
                            "expires_in_s": round((expires - now_ns) / 1e9, 3),
                            "starts_at": round(at[0], 3), "expires_at": round(at[1], 3)})
        return out


# ------------------------------------------------------------------ the file

class ScheduleFileError(ValueError):
    """The file exists but is not one of ours."""


def to_file(listing: list[dict]) -> list[dict]:
    """The entries worth keeping across a restart: those that came with a start."""
    return [{"kind": c["kind"], "source": c["source"], "id": c["id"], "value_w": c["value_w"],
             "starts_at": c["starts_at"], "expires_at": c["expires_at"]}
            for c in listing if c["scheduled"] and c["id"] is not None]


def write(path: Path, commands: list[dict], site_name: str, wall_synced: bool) -> None:
    """Atomically replace the file; OSError on failure (nothing half-written is left)."""
    write_file(path, {"version": VERSION, "site": site_name, "written_at": time.time(), "wall_synced": wall_synced,
                      "commands": commands})


def read(path: Path) -> list[dict] | None:
    """The commands in the file; None when there is none; ScheduleFileError when it is not one."""
    raw = read_file(path, ScheduleFileError)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ScheduleFileError(f"not JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("commands"), list):
        raise ScheduleFileError(f"expected {{\"version\": {VERSION}, \"commands\": [...]}}")
    keys = {"kind", "source", "id", "value_w", "starts_at", "expires_at"}
    for c in doc["commands"]:
        if not isinstance(c, dict) or set(c) != keys or not isinstance(c["source"], str):
            raise ScheduleFileError(f"a command is an object with exactly {', '.join(sorted(keys))}")
    return doc["commands"]
