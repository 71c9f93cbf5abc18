"""Latched faults survive a restart through the journal, and every fault is logged with its code."""
import json
import logging
import math
import os
import stat
from dataclasses import replace

import pytest

from helpers import S, ev, make_site
from v2g_rt import Control, Controller
from v2g_rt.faults import FaultWatch
from v2g_rt.services.journal import JournalService
from v2g_rt.site import port_source


def site():
    s = make_site(2, ports_per_evse=2, meter=False, grid_import_w=1e6, transformer_w=1e6, group_w=1e6,
                  control=Control(port_ramp_w_per_s=math.inf))
    return replace(s, nodes=tuple(replace(n, contactor_feedback=True) if n.kind == "evse" else n for n in s.nodes))


def weld(c, t):
    for pid in c.port_ids:
        ev().publish(c, pid, t)
        c.measure(port_source(pid, "contactor"), 1.0 if pid.endswith(".2") else 0.0, t)


def latched_weld(journal):
    """A controller whose port evse001.1 latched a weld, with its journal service."""
    c = Controller(site(), clock="virtual")
    service = JournalService(c, journal)
    c.step(S)
    weld(c, S)
    c.step(S + 10**6)
    c.step(S + 3 * 10**8)              # after the 200 ms settle time: evse001.1 disagrees
    return c, service


def test_journal_restores_latched_faults_and_logs_them(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="v2g_rt")
    journal = tmp_path / "state" / "latched.json"
    c, service = latched_weld(journal)
    FaultWatch(c).poll()
    assert service.flush()
    doc = json.loads(journal.read_text())
    assert doc["version"] == 1 and doc["ports"] == {"evse001.1": {"bits": 0x10000, "faults": ["contactor"]}}
    assert doc["latch_counter"] == 1
    assert "ERR_CONTACTOR_MISMATCH: port evse001.1: contactor" in caplog.text
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.parent.stat().st_mode) == 0o700
    assert [p.name for p in journal.parent.iterdir()] == ["latched.json"], "no temporary file left"

    caplog.clear()
    again = Controller(site(), clock="virtual")
    service = JournalService(again, journal)          # a restart
    again.step(S)
    snap = again.snapshot()
    assert snap.port("evse001.1")["faults"] == 0x10000 and snap.port("evse001.2")["faults"] == 0
    assert "ERR_CONTACTOR_MISMATCH: port evse001.1: contactor restored" in caplog.text

    seq = int(snap.port("evse001.1")["latch_seq"])
    assert again.submit({"kind": "reset_fault", "id": "r", "port": "evse001.1", "latch_seq": seq, "expires_in_s": 9})
    assert "port evse001.1: latched faults reset by command 'r'" in caplog.text
    again.step(S + 1000)
    assert service.flush()
    assert json.loads(journal.read_text())["ports"] == {}


def test_a_reset_never_clears_a_latch_newer_than_the_one_it_names(tmp_path):
    c, _ = latched_weld(tmp_path / "j.json")
    old = int(c.snapshot().port("evse001.1")["latch_seq"])
    assert c.measure("port/evse001.2/contactor", 0.0, S + 3 * 10**8)   # evse001.2 now fails open: a newer latch
    for t in (S + 6 * 10**8, S + 7 * 10**8):
        c.step(t)
    # an operator screen from before the second latch resets evse001.2 by the old number
    assert c.submit({"kind": "reset_fault", "id": "late", "port": "evse001.2", "latch_seq": old, "expires_in_s": 9})
    assert c.submit({"kind": "reset_fault", "id": "ok", "port": "evse001.1", "latch_seq": old, "expires_in_s": 9})
    c.step(S + 8 * 10**8)
    snap = c.snapshot()
    assert snap.port("evse001.2")["faults"] & 0x10000 and snap.port("evse001.2")["latch_seq"] > old
    assert not snap.port("evse001.1")["faults"] & 0x10000


WRONG_SHAPES = ["[65536]", '"x"', "null", "1e400", '{"evse001.1": {"bits": {"deeper": 1}}}', "-1",
                '{"evse001.1": -1}', '{"evse001.1": true}', '{"evse001.1": 1.5}', '{"version": 99, "ports": {}}',
                "{not json", "[" * 100000, '{"evse001.1": 1e400}', '{"evse001.1": NaN}', "\x00\xff"]


@pytest.mark.parametrize("text", WRONG_SHAPES, ids=range(len(WRONG_SHAPES)))
def test_a_journal_of_the_wrong_shape_latches_every_port_off(tmp_path, caplog, text):
    journal = tmp_path / "latched.json"
    journal.write_text(text)
    c = Controller(site(), clock="virtual")
    JournalService(c, journal)
    c.step(S)
    assert "ERR_FAULT_JOURNAL" in caplog.text and "every port starts latched off" in caplog.text
    snap = c.snapshot()
    assert (snap.ports["faults"] & 0x20000).all() and (snap.ports["setpoint_w"] == 0).all()


def test_a_fifo_or_a_huge_file_is_not_read_as_a_journal(tmp_path, caplog):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    big.write_text("{" + " " * (2 << 20) + "}")
    for path in (fifo, big):
        c = Controller(site(), clock="virtual")
        JournalService(c, path)
        c.step(S)
        assert (c.snapshot().ports["faults"] & 0x20000).all()


def test_unknown_ports_and_bits_are_reported_and_kept(tmp_path, caplog):
    journal = tmp_path / "latched.json"
    journal.write_text(json.dumps({"version": 1, "ports": {"gone.1": {"bits": 0x10000},
                                                           "evse001.2": {"bits": 0x10000 | 0x400000}}}))
    c = Controller(site(), clock="virtual")
    service = JournalService(c, journal)
    c.step(S)
    assert "'gone.1', which this site does not have" in caplog.text
    assert "bits 0x400000 are not faults this version knows" in caplog.text
    assert c.snapshot().port("evse001.2")["faults"] == 0x10000 | 0x20000     # known bit + latched off
    assert service.flush()
    kept = json.loads(journal.read_text())["ports"]
    assert kept["gone.1"]["bits"] == 0x10000 and kept["evse001.2"]["bits"] & 0x400000


def test_the_legacy_journal_is_still_read(tmp_path):
    journal = tmp_path / "latched.json"
    journal.write_text(json.dumps({"evse001.1": 0x10000}))
    c = Controller(site(), clock="virtual")
    JournalService(c, journal)
    c.step(S)
    assert c.snapshot().port("evse001.1")["faults"] == 0x10000


def test_an_unwritable_journal_is_reported_once_not_per_poll(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("")
    c, service = latched_weld(blocked / "j.json")       # its directory is a file
    assert not service.flush() and not service.flush()
    assert caplog.text.count("ERR_FAULT_JOURNAL: cannot write") == 1


def test_transformer_hot_spot_and_can_bus_off_are_logged_with_their_codes(tmp_path, caplog):
    from v2g_rt import config
    from v2g_rt.sim.peers import attach

    site = config.load()
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    watch = FaultWatch(ctrl)
    ctrl.step(S)
    watch.poll()
    assert "ERR_TRANSFORMER_HOTSPOT" not in caplog.text and "ERR_CAN_BUS_OFF" not in caplog.text
    devices.can_peer.send_raw(0x20000000 | 0x40, bytes(8))           # CAN_ERR_FLAG | CAN_ERR_BUSOFF
    devices.i2c_peer.set_value("node/tx1/ambient_c", 79.0)            # a heat wave at the transformer
    ctrl.poll_io()
    ctrl.step(S + 1000)
    watch.poll()
    assert "ERR_CAN_BUS_OFF" in caplog.text
    assert ctrl.snapshot().node("tx1")["derate"] < 1.0
    assert "ERR_TRANSFORMER_HOTSPOT: node tx1" in caplog.text
    devices.close()
