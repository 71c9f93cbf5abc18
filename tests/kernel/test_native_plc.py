"""The loop's own PLC link-quality reader: probes out, CM_NW_STATS answers and CM_ATTEN_CHAR in,
loss through the gate to the interlock (ERR_ISO_TIMEOUT), bad MMEs counted per kind.

Sim backend (an AF_UNIX datagram socket pair carrying Ethernet frames) everywhere; backend
"packet" (AF_PACKET on a veth pair, the far end in a network namespace the test creates) where
the test runs as root with veth, which the kernel-test guest must provide.
"""
import os
import socket

import pytest

from helpers import IN_GUEST, plc_site
from v2g_rt import Controller, _core, config
from v2g_rt.devices.plc import trip_cycles
from v2g_rt.sim.peers import attach
from v2g_rt.sim.peers.plc import EV_MAC, GARBAGE, SimPlcModem, VethPair, atten_char_ind, mme, veth_missing

S = 1_000_000_000
PERIOD_NS = 10_000_000
INTERVAL_CYCLES = 10                  # probe_interval_ms = 100 at a 10 ms period
WINDOW = 20
ISO_TIMEOUT = _core.FAULTS["iso_timeout"]


NO_VETH = veth_missing()
BACKENDS = ["sim", "packet"] if IN_GUEST or NO_VETH is None else ["sim"]


class Rig:
    def __init__(self, backend, budget=16):
        self.backend, self.veth = backend, None
        interface = ""
        if backend == "packet":
            assert NO_VETH is None, NO_VETH      # the guest loads veth: a missing one is a failure
            self.veth = VethPair(str(os.getpid() % 100000))
            interface = self.veth.near
        site = config.parse(plc_site(backend=backend, interface=interface, budget=budget,
                                     extra="attenuation_limit_db = 35\n"), "plc-test.toml")
        self.ctrl = Controller(site, clock="virtual")
        self.devices = attach(self.ctrl, site)
        self.modem = (self.devices.plc_peer.modems["e1.1"] if backend == "sim"
                      else SimPlcModem(self.veth.far_socket()))
        self.ctrl.step(S)
        self.modem.poll(self.ctrl.now_ns())

    def steps(self, n: int) -> None:
        """n cycles, the modem answering between them (its frames reach the next read stage)."""
        for _ in range(n):
            self.ctrl.run_steps(1, PERIOD_NS)
            self.modem.poll(self.ctrl.now_ns())

    def plug(self) -> None:
        self.ctrl.measure("port/e1.1/connected", 1.0)

    def stats(self) -> dict:
        return self.ctrl.device_stats()["plc"][0]

    def faults(self) -> int:
        return int(self.ctrl.snapshot().port("e1.1")["faults"])

    def close(self):
        self.devices.close()
        if self.veth:
            self.modem.close()
            self.veth.close()


@pytest.fixture(params=BACKENDS)
def rig(request):
    r = Rig(request.param)
    yield r
    r.close()


def fill_window(rig) -> None:
    rig.steps(INTERVAL_CYCLES * (WINDOW + 1))
    st = rig.stats()
    assert st["link_up"] and st["window_filled"] == WINDOW and st["loss"] == 0.0


def test_answered_probes_bring_the_link_up_with_no_loss(rig):
    rig.plug()
    fill_window(rig)
    st = rig.stats()
    assert st["stations"] == 1 and (st["tx_mbps"], st["rx_mbps"]) == (9, 8)
    assert st["modem"] == rig.modem.mac.hex(":")          # learnt from the first answer
    assert st["answers"] == st["probes_sent"] - 1 and st["lost"] == 0
    assert rig.ctrl.snapshot().port("e1.1")["faults"] == 0
    assert rig.ctrl.stats()["measurements"]["accepted"] >= WINDOW + 1       # each outcome through the gate
    assert rig.ctrl.measure("port/e1.1/plc_loss", 0.5).code == "ERR_MEAS_DEVICE_OWNED"   # the device's alone


def test_loss_onset_stops_the_port_with_iso_timeout_at_its_deadline(rig):
    rig.plug()
    fill_window(rig)
    sent = rig.stats()["probes_sent"]
    while rig.stats()["probes_sent"] == sent:              # the cycle whose write stage probes
        rig.ctrl.run_steps(1, PERIOD_NS)
    rig.modem.loss = 1.0                                   # this probe and all after go unanswered
    rig.modem.poll(rig.ctrl.now_ns())
    deadline = trip_cycles(WINDOW, 0.05, INTERVAL_CYCLES)
    rig.steps(deadline - 1)                                # the second lost probe is on the image
    assert not rig.faults() & ISO_TIMEOUT and rig.stats()["lost"] == 2
    rig.steps(1)                                           # and the interlock takes it
    assert rig.faults() & ISO_TIMEOUT
    assert rig.stats()["lost"] == 2 and rig.stats()["loss"] == pytest.approx(2 / WINDOW)


def test_a_lost_link_counts_as_loss(rig):
    rig.plug()
    fill_window(rig)
    rig.modem.link_up = False                              # the modem answers: no station in the AVLN
    rig.steps(INTERVAL_CYCLES * 3)
    st = rig.stats()
    assert not st["link_up"] and st["stations"] == 0 and st["lost"] >= 2
    assert rig.faults() & ISO_TIMEOUT


def test_a_link_not_yet_up_is_slac_matching_not_loss(rig):
    rig.modem.link_up = False                              # the modem answers; no vehicle modem yet
    rig.plug()
    rig.steps(INTERVAL_CYCLES * WINDOW)
    st = rig.stats()
    assert not st["link_up"] and st["loss"] == 0.0 and st["lost"] == 0 and rig.faults() == 0
    rig.modem.link_up = True
    rig.steps(INTERVAL_CYCLES * 2)
    assert rig.stats()["link_up"] and rig.stats()["window_filled"] <= 2 and rig.faults() == 0


def test_a_new_vehicle_starts_with_a_clean_window(rig):
    rig.plug()
    fill_window(rig)
    rig.modem.link_up = False                              # the first vehicle's link goes
    rig.steps(INTERVAL_CYCLES * 3)
    assert rig.faults() & ISO_TIMEOUT
    rig.ctrl.measure("port/e1.1/connected", 0.0)           # it leaves; the session's fault with it
    rig.steps(INTERVAL_CYCLES)
    rig.plug()                                             # the next one, SLAC still matching
    rig.steps(INTERVAL_CYCLES * 3)
    st = rig.stats()
    assert not st["link_up"] and st["loss"] == 0.0 and rig.faults() == 0


def test_an_unanswered_probe_is_lost_even_before_the_link(rig):
    rig.modem.loss = 1.0                                   # a dead modem: no session can start
    rig.plug()
    rig.steps(INTERVAL_CYCLES * 3)
    assert rig.stats()["loss"] >= 2 / 3 and rig.faults() & ISO_TIMEOUT     # the first probe was answered


def test_loss_below_the_limit_keeps_the_port(rig):
    rig.plug()
    fill_window(rig)
    rig.modem.loss = 0.05                                  # one probe in 20: not above the limit
    rig.steps(INTERVAL_CYCLES * WINDOW * 2)
    assert rig.stats()["loss"] == pytest.approx(1 / WINDOW)
    assert not rig.faults() & ISO_TIMEOUT


def test_attenuation_is_the_average_of_the_groups_and_only_warns(rig):
    rig.plug()
    fill_window(rig)
    rig.modem.attenuation([20] * 29 + [30] * 29)
    rig.steps(1)
    st = rig.stats()
    assert st["attenuation_db"] == 25.0 and not st["attenuation_high"] and st["atten_reports"] == 1
    rig.modem.attenuation([40] * 58)
    rig.steps(1)
    st = rig.stats()
    assert st["attenuation_db"] == 40.0 and st["attenuation_high"] and st["atten_over"] == 1
    assert rig.faults() == 0                               # ERR_PLC_ATTENUATION warns; loss stops a port


@pytest.mark.parametrize("kind", GARBAGE)
def test_bad_mmes_are_counted_per_kind_never_data(rig, kind):
    rig.plug()
    fill_window(rig)
    before = rig.stats()
    rig.modem.garbage(kind)
    rig.steps(1)
    st = rig.stats()
    counter = {"mmv": "wrong_mmv", "type": "wrong_type", "short": "wrong_length", "stations": "wrong_length",
               "groups": "wrong_length", "unknown_mac": "unknown_mac"}[kind]
    assert st[counter] == before[counter] + 1
    assert (st["link_up"], st["atten_reports"], st["loss"], st["stations"]) == (True, 0, 0.0, 1)
    assert st["attenuation_db"] is None                    # no report was taken
    assert rig.faults() == 0


def test_a_burst_is_drained_within_the_budget_per_cycle():
    r = Rig("sim", budget=4)
    try:
        r.ctrl.run_steps(1, PERIOD_NS)                     # takes the answer to the first probe
        for _ in range(10):
            r.modem.garbage("type")
        r.ctrl.run_steps(1, PERIOD_NS)
        assert r.stats()["wrong_type"] == 4 and r.stats()["budget_full"] == 1
        r.ctrl.run_steps(2, PERIOD_NS)
        assert r.stats()["wrong_type"] == 10
    finally:
        r.close()


def test_the_slac_stacks_own_atten_char_is_seen_on_the_way_out():
    """A SLAC stack on the controller's host sends CM_ATTEN_CHAR.IND through the same interface:
    the packet socket sees it as outgoing and takes it; the stack's other frames are counted as
    outgoing, not as bad MMEs (and the kernel never hands a socket its own probes)."""
    if "packet" not in BACKENDS:
        pytest.skip(NO_VETH)
    r = Rig("packet")
    try:
        slac = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88E1))
        slac.bind((r.veth.near, 0x88E1))
        mac = bytes.fromhex(open(f"/sys/class/net/{r.veth.near}/address").read().strip().replace(":", ""))
        slac.send(atten_char_ind(EV_MAC, mac, [33] * 58))
        slac.send(mme(EV_MAC, mac, 0x6065, bytes(30)))      # CM_SLAC_PARAM.CNF
        slac.close()
        r.steps(1)
        st = r.stats()
        assert st["attenuation_db"] == 33.0 and st["atten_reports"] == 1
        assert (st["outgoing"], st["wrong_type"]) == (1, 0)
    finally:
        r.close()
