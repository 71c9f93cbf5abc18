"""Fuzz target: the control socket's request handling (what an operator's client sends).

Contract: ControlServer.serve(who, raw) answers every byte string with a JSON-able
{"ok", "code", "reason", ...}: ok with no code, or not ok with an ERR_ code. Only a
well-formed request for a real port changes a port, and a caller outside the operator
group changes nothing whatever it sends.
"""
import json
import logging
import pathlib
import sys
import tempfile

import atheris

import _dedup

logging.disable(logging.CRITICAL)      # every input logs by design; the contract is checked, not the lines

with atheris.instrument_imports(include=["v2g_rt"]):
    from v2g_rt import Controller, RealTime, depot
    from v2g_rt.services import control
    from v2g_rt.services.control import AuditLog, ControlServer
    from v2g_rt.services.journal import JournalService

control.APPLY_TIMEOUT_S = 0.0        # virtual time: nobody steps the loop while serve() waits
SITE = depot(4, period_s=0.01, meter=False,
             rt=RealTime(priority=0, cpu=None, lock_memory=False, cpu_dma_latency_us=None))
DIR = pathlib.Path(tempfile.mkdtemp(prefix="fuzz-control-"))
CTRL = Controller(SITE, clock="virtual")
CTRL.step(1_000_000_000)
SERVER = ControlServer(CTRL, JournalService(CTRL, DIR / "latched.json"), DIR / "control.sock",
                       AuditLog(DIR / "audit.log"))
ROOT = {"pid": 1, "uid": 0, "user": "root", "gid": 0, "groups": {0}}
STRANGER = {"pid": 2, "uid": 4242, "user": "4242", "gid": 4242, "groups": {4242}}


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    who = ROOT if fdp.ConsumeBool() else STRANGER
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    before = CTRL.snapshot().site["commands_applied"]
    answer = SERVER.serve(who, raw)
    json.dumps(answer)
    assert isinstance(answer, dict) and isinstance(answer["ok"], bool), answer
    if answer["ok"]:
        assert answer["code"] is None and who is ROOT, answer
    else:
        assert isinstance(answer["code"], str) and answer["code"].startswith("ERR_"), answer
        assert isinstance(answer["reason"], str) and answer["reason"], answer
    CTRL.step(CTRL.now_ns() + 10_000_000)
    if who is STRANGER or not answer["ok"]:
        assert CTRL.snapshot().site["commands_applied"] == before, (who, raw, answer)


def main() -> None:
    atheris.Setup(sys.argv, _dedup.wrap(TestOneInput))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
