"""The scheduled-commands service: the grid commands that came with a start survive a restart.

Built before the loop starts, it submits the file's commands again (v2g_rt.schedule: wall-clock
start and expiry converted to the controller clock by Controller.submit; expired ones dropped).
A clock not yet synchronised cannot convert them: they are kept, in the file too, and submitted
once it is. Then it keeps the file current: at once, in the submitting thread, when a scheduled
command or a cancel is accepted (so an acknowledged command is on disk), and within a poll when
the loop's queue changed otherwise (a window opened, a command expired).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..schedule import ScheduleFileError, read, to_file, write
from . import Service

log = logging.getLogger("v2g_rt")

POLL_S = 0.5


class ScheduleService(Service):
    name = "schedule"

    def __init__(self, ctrl, path: Path, poll_s: float = POLL_S):
        super().__init__()
        self.ctrl, self.path, self.poll_s = ctrl, path, poll_s
        self.lock = threading.Lock()
        self.pending: list[dict] = []          # read from the file, not yet submitted (clock not synced)
        self.restored = 0
        self.dropped = 0
        self.writes = 0
        self.errors = 0
        self.saved: list[dict] | None = None
        self.broken = False                    # the file is not ours: never overwritten
        self.restore()
        ctrl.schedule_listeners.append(self.flush)

    def restore(self) -> None:
        try:
            commands = read(self.path)
        except ScheduleFileError as e:
            self.broken = True
            log.error("ERR_SCHEDULE_JOURNAL: %s is not a file of scheduled commands (%s): none restored, the file "
                      "is left as it is. Remedy: inspect it, remove it, resend the schedule", self.path, e)
            return
        self.pending = sorted(commands or [], key=lambda c: (_number(c["starts_at"]), str(c["id"])))
        self.resubmit()

    def resubmit(self) -> None:
        """Submit what the file held, in order of start (the window opened last wins, as before)."""
        if not self.pending or not self.ctrl.wall.synchronized():
            if self.pending and self.restored + self.dropped == 0:
                log.warning("ERR_CLOCK_UNSYNCED: %d scheduled commands wait for a synchronised clock before they "
                            "are restored from %s", len(self.pending), self.path)
            return
        pending, self.pending = self.pending, []
        for c in pending:
            cmd = {"kind": c["kind"], "id": c["id"], "value_w": c["value_w"], "starts_at": c["starts_at"],
                   "expires_at": c["expires_at"]}
            verdict = self.ctrl.submit(cmd, c["source"])
            if verdict:
                self.restored += 1
            elif verdict.code == "ERR_CLOCK_UNSYNCED":
                self.pending.append(c)
            else:
                self.dropped += 1
                level = logging.INFO if verdict.code == "ERR_CMD_EXPIRED" else logging.ERROR
                log.log(level, "scheduled %s %r from %s not restored: %s %s", c["kind"], c["id"], c["source"],
                        verdict.code, verdict.reason)
        if self.restored:
            log.info("%d scheduled commands restored from %s", self.restored, self.path)

    def run(self) -> None:
        while not self.stopping.wait(self.poll_s):
            self.resubmit()
            self.flush()

    def flush(self) -> bool:
        """Write the file if what it must hold changed; True when it is current on disk."""
        if self.broken:
            return False
        with self.lock:
            current = to_file(self.ctrl.scheduled()) + self.pending
            if current == self.saved:
                return True
            try:
                write(self.path, current, self.ctrl.site.name, self.ctrl.wall.synchronized())
            except OSError as e:
                self.errors += 1
                if self.errors == 1 or self.errors % 100 == 0:
                    log.error("ERR_SCHEDULE_JOURNAL: cannot write %s (%s; %d failures): scheduled commands would "
                              "not survive a restart", self.path, e, self.errors)
                return False
            self.saved = current
            self.writes += 1
            return True

    def stop(self) -> None:
        super().stop()
        self.flush()

    def stats(self) -> dict:
        return {"restored": self.restored, "dropped": self.dropped, "waiting": len(self.pending),
                "writes": self.writes, "errors": self.errors}


def _number(x) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0.0
