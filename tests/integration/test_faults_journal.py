"""Latched faults survive a restart through the journal, and every fault is logged with its code."""
import json
import logging
import math
from dataclasses import replace

from helpers import S, ev, make_site
from v2g_rt import Control, Controller
from v2g_rt.faults import FaultWatch


def site():
    s = make_site(2, ports_per_evse=2, meter=False, grid_import_w=1e6, transformer_w=1e6, group_w=1e6,
                  control=Control(port_ramp_w_per_s=math.inf))
    return replace(s, nodes=tuple(replace(n, contactor_feedback=True) if n.kind == "evse" else n for n in s.nodes))


def weld(c, t):
    for pid in c.port_ids:
        ev().publish(c, pid, t)
        c.measure(f"port/{pid}/contactor", 1.0 if pid.endswith(".2") else 0.0, t)


def test_journal_restores_latched_faults_and_logs_them(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="v2g_rt")
    journal = tmp_path / "latched.json"
    c = Controller(site(), clock="virtual")
    watch = FaultWatch(c, journal)
    c.step(S)
    weld(c, S)
    c.step(S + 10**6)
    c.step(S + 3 * 10**8)              # after the 200 ms settle time: evse001.1 disagrees
    watch.poll()
    assert json.loads(journal.read_text()) == {"evse001.1": 0x10000}
    assert "ERR_CONTACTOR_MISMATCH: port evse001.1: contactor" in caplog.text

    caplog.clear()
    again = Controller(site(), clock="virtual")
    FaultWatch(again, journal)         # a restart
    again.step(S)
    snap = again.snapshot()
    assert snap.port("evse001.1")["faults"] == 0x10000 and snap.port("evse001.2")["faults"] == 0
    assert "ERR_CONTACTOR_MISMATCH: port evse001.1: latched fault restored" in caplog.text

    assert again.submit({"kind": "reset_fault", "id": "r", "port": "evse001.1", "expires_in_s": 9})
    assert "port evse001.1: latched faults reset by command 'r'" in caplog.text
    again.step(S + 1000)
    FaultWatch(again, journal).poll()
    assert json.loads(journal.read_text()) == {}


def test_unreadable_journal_is_reported_not_fatal(tmp_path, caplog):
    journal = tmp_path / "latched.json"
    journal.write_text("{not json")
    FaultWatch(Controller(site(), clock="virtual"), journal)
    assert "ERR_FAULT_JOURNAL" in caplog.text


def test_transformer_hot_spot_and_can_bus_off_are_logged_with_their_codes(tmp_path, caplog):
    from v2g_rt import config
    from v2g_rt.drivers import attach

    site = config.load()
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    watch = FaultWatch(ctrl, tmp_path / "j.json")
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
