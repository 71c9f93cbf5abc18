"""Fuzz target: the latched-fault journal reader and its restore at start-up.

Contract: journal.read() returns None (no journal), a Journal of ports with 32-bit
fault bits, or raises JournalError — nothing else. A JournalService built over any
file never raises; when the file is not a journal every port starts latched off
(FAULT_JOURNAL), and no port is ever left enabled with bits the file asked for.
"""
import logging
import pathlib
import sys
import tempfile

import atheris

import _dedup

logging.disable(logging.CRITICAL)      # every input logs by design; the contract is checked, not the lines

with atheris.instrument_imports(include=["v2g_rt"]):
    from v2g_rt import Controller, RealTime, _core, depot
    from v2g_rt.journal import Journal, JournalError, read
    from v2g_rt.services.journal import JournalService

SITE = depot(4, period_s=0.01, meter=False,
             rt=RealTime(priority=0, cpu=None, lock_memory=False, cpu_dma_latency_us=None))
PATH = pathlib.Path(tempfile.mkdtemp(prefix="fuzz-journal-")) / "latched.json"
S = 1_000_000_000


def TestOneInput(data: bytes) -> None:
    PATH.write_bytes(data)
    try:
        journal = read(PATH)
        bad = False
    except JournalError:
        journal, bad = None, True
    assert journal is None or isinstance(journal, Journal), journal
    if journal is not None:
        assert all(isinstance(p, str) and isinstance(b, int) and 0 < b < 2**32 for p, b in journal.ports.items())
    ctrl = Controller(SITE, clock="virtual")
    JournalService(ctrl, PATH)
    ctrl.step(S)
    faults = ctrl.snapshot().ports["faults"]
    if bad:
        assert (faults & _core.FAULTS["journal"]).all(), faults
    elif journal is not None:
        for pid, bits in journal.ports.items():
            if pid in ctrl.port_ids and bits & _core.PERSISTENT_FAULTS:
                assert faults[ctrl.port_ids.index(pid)], (pid, bits)


def main() -> None:
    atheris.Setup(sys.argv, _dedup.wrap(TestOneInput))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
