"""The operator's way in: clear latched faults, take ports out of service and back, cancel grid
commands (active and scheduled) of a kind.

`v2g-rt reset-fault PORT|--all` and `v2g-rt port disable|enable PORT` talk to a
running controller over a local socket that only the operator group can open (the
kernel attests the caller: SO_PEERCRED, SO_PEERGROUPS). Each request, granted or
refused, is one line in an append-only audit log beside the journal (who, what,
when, verdict). A reset names the latch it clears by its sequence number, read from
the controller first: replayed later, it cannot clear a fault that latched after it.
The answer comes once the loop applied the change and the journal holds it, so a
crash right after the command cannot undo it.
"""
from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
import time
import uuid
from pathlib import Path

from .. import _core
from ..journal import fault_names
from ..localsock import MAX_REQUEST, LocalServer, group_id, peer
from . import SocketService
from .journal import JournalService

log = logging.getLogger("v2g_rt")

ACTIONS = ("ports", "reset_fault", "disable_port", "enable_port", "cancel")
GRID_KINDS = ("setpoint", "export_limit", "import_limit", "load_shed")
APPLY_TIMEOUT_S = 2.0
OUT_OF_SERVICE = _core.FAULTS["out_of_service"]


class AuditLog:
    """JSON lines, O_APPEND, fsync'd: what was asked, by whom, and what came of it."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()

    def record(self, who: dict, request: dict, verdict: dict) -> None:
        entry = {"t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "user": who.get("user"),
                 "uid": who.get("uid"), "pid": who.get("pid"), "action": request.get("action"),
                 "port": request.get("port"), "latch_seq": request.get("latch_seq"),
                 "ok": verdict.get("ok"), "code": verdict.get("code")}
        line = json.dumps(entry, default=str)[:4096] + "\n"
        with self.lock:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, line.encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                log.error("ERR_AUDIT_LOG: cannot append to %s (%s): %s by %s not recorded", self.path, e.strerror,
                          entry["action"], entry["user"])


def _answer(ok: bool, code: str | None = None, reason: str | None = None, **more) -> dict:
    return {"ok": ok, "code": code, "reason": reason, **more}


class ControlServer(SocketService):
    name = "control"

    def __init__(self, ctrl, journal: JournalService, path: Path, audit: AuditLog):
        super().__init__()
        self.ctrl, self.journal, self.audit = ctrl, journal, audit
        self.gid = group_id(ctrl.site.operator_group)
        self.requests = 0
        self.refused = 0
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 5.0

            def handle(self):
                who = peer(self.request)
                raw = self.rfile.readline(MAX_REQUEST + 1)
                answer = outer.serve(who, raw)
                self.wfile.write(json.dumps(answer).encode() + b"\n")

        self.server = LocalServer(path, Handler, ctrl.site.operator_group, "control")

    def allowed(self, who: dict) -> bool:
        return who["uid"] in (0, os.geteuid()) or (self.gid is not None and self.gid in who["groups"])

    def serve(self, who: dict, raw: bytes) -> dict:
        self.requests += 1
        request: dict = {}
        if not self.allowed(who):
            answer = _answer(False, "ERR_SOCKET_PERMISSION", f"user {who['user']} is not in group "
                             f"{self.ctrl.site.operator_group}")
        elif len(raw) > MAX_REQUEST:
            answer = _answer(False, "ERR_CONTROL_BAD_REQUEST", f"request longer than {MAX_REQUEST} bytes")
        else:
            try:
                request = json.loads(raw)
            except (ValueError, RecursionError):
                request = None
            answer = self.act(request) if isinstance(request, dict) else \
                _answer(False, "ERR_CONTROL_BAD_REQUEST", "expected one JSON object per line")
            request = request if isinstance(request, dict) else {}
        if not answer["ok"]:
            self.refused += 1
        if request.get("action") != "ports":
            self.audit.record(who, request, answer)
        return answer

    def act(self, request: dict) -> dict:
        action = request.get("action")
        if action not in ACTIONS:
            return _answer(False, "ERR_CONTROL_BAD_REQUEST", f"action {str(action)[:40]!r}; expected one of "
                           f"{', '.join(ACTIONS)}")
        if action == "ports":
            return _answer(True, ports=self.ports())
        if action == "cancel":
            return self.cancel(request.get("of"))
        pid = request.get("port")
        if not isinstance(pid, str) or pid not in self.ctrl.port_ids:
            return _answer(False, "ERR_CMD_BAD_PORT", f"port {str(pid)[:64]!r} is not a port of site "
                           f"{self.ctrl.site.name}")
        if action == "reset_fault":
            seq = request.get("latch_seq")
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
                return _answer(False, "ERR_CONTROL_BAD_REQUEST", "reset_fault needs the latch_seq it clears "
                               "(read it with the 'ports' action)")
            cmd = {"kind": "reset_fault", "id": f"control:reset:{pid}:{seq}", "port": pid, "latch_seq": seq}
        else:
            cid = request.get("id")
            cmd = {"kind": action, "port": pid,
                   "id": f"control:{action}:{cid}" if isinstance(cid, str) and 0 < len(cid) <= 64 else
                   f"control:{action}:{uuid.uuid4()}"}
        verdict = self.ctrl.submit({**cmd, "expires_in_s": 60}, source="control")
        if not verdict:
            return _answer(False, verdict.code, verdict.reason)
        row = self.wait_applied(pid, action, cmd.get("latch_seq", 0))
        journaled = self.journal.flush()
        faults = int(row["faults"])
        return _answer(True, port=pid, faults=fault_names(faults), latch_seq=int(row["latch_seq"]),
                       journaled=journaled,
                       still_latched=bool(faults & _core.LATCHED_FAULTS) if action == "reset_fault" else None)

    def cancel(self, kind) -> dict:
        """Every command of a kind ends, active and queued, from whichever source."""
        if kind not in GRID_KINDS:
            return _answer(False, "ERR_CONTROL_BAD_REQUEST", f"cancel needs 'of': one of {', '.join(GRID_KINDS)}")
        verdict = self.ctrl.submit({"kind": "cancel", "id": f"control:cancel:{uuid.uuid4()}", "of": kind,
                                    "expires_in_s": 60}, source="control")
        if not verdict:
            return _answer(False, verdict.code, verdict.reason)
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while any(c["kind"] == kind for c in self.ctrl.scheduled()) and time.monotonic() < deadline:
            time.sleep(0.002)
        return _answer(True, of=kind, left=[c for c in self.ctrl.scheduled() if c["kind"] == kind])

    def wait_applied(self, pid: str, action: str, seq: int):
        """The port's row once it shows the command's effect (or after APPLY_TIMEOUT_S: then the
        caller reports what it sees, a newer latch for example)."""
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while True:
            row = self.ctrl.snapshot().port(pid)
            faults = int(row["faults"])
            if action == "disable_port":
                done = faults & OUT_OF_SERVICE
            elif action == "enable_port":
                done = not faults & OUT_OF_SERVICE
            else:
                done = not faults & _core.LATCHED_FAULTS or int(row["latch_seq"]) > seq
            if done or time.monotonic() > deadline:
                return row
            time.sleep(0.002)

    def ports(self) -> list[dict]:
        snap = self.ctrl.snapshot()
        return [{"id": pid, "faults": fault_names(int(r["faults"])), "latched": bool(r["faults"] & _core.LATCHED_FAULTS),
                 "out_of_service": bool(r["faults"] & OUT_OF_SERVICE), "latch_seq": int(r["latch_seq"])}
                for pid, r in zip(snap.port_ids, snap.ports)]

    def stats(self) -> dict:
        return {"requests": self.requests, "refused": self.refused}
