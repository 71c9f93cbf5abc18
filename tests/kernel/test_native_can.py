"""The loop's own J1939 reader: frames in, exact signal values in the image, bad frames counted.

Sim backend everywhere; in the kernel-test guest also SocketCAN on vcan0, with frames
sent by python-can and by can-utils' cansend.
"""
import socket
import subprocess

import pytest

from helpers import BACKENDS, CAN_SITE as SITE, IN_GUEST
from v2g_rt import Controller, config
from v2g_rt.devices import DeviceError
from v2g_rt.devices.can import CAN_EFF_FLAG, FRAME
from v2g_rt.sim.peers import attach

S = 1_000_000_000
CAN_ERR_FLAG, CAN_ERR_BUSOFF = 0x20000000, 0x40
class Sender:
    """The far side: the sim peer, or python-can on vcan0."""

    def __init__(self, backend, devices):
        self.backend = backend
        if backend == "sim":
            self.peer = devices.can_peer
        else:
            import can
            self.bus = can.Bus(channel="vcan0", interface="socketcan")

    def send(self, can_id, data, extended=True):
        if self.backend == "sim":
            self.peer.send_raw(can_id | (CAN_EFF_FLAG if extended else 0), bytes(data))
        else:
            import can
            self.bus.send(can.Message(arbitration_id=can_id, data=bytes(data), is_extended_id=extended))

    def close(self):
        if self.backend != "sim":
            self.bus.shutdown()


@pytest.fixture(params=BACKENDS["can"])
def rig(request):
    yield from make_rig(request.param, 64)


def make_rig(backend, budget):
    site = config.parse(SITE.format(backend=backend, budget=budget), "can-test.toml")
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    ctrl.step(S)
    sender = Sender(backend, devices)
    yield ctrl, sender
    sender.close()
    devices.close()


def settle(ctrl):
    for _ in range(5):                      # vcan delivery is asynchronous
        ctrl.run_steps(1)
    return ctrl.snapshot()


def temp_bytes(celsius):
    raw = round((celsius + 273) / 0.03125)
    return [raw & 0xFF, raw >> 8]


def test_frames_decode_to_exact_values(rig):
    ctrl, tx = rig
    tx.send(0x18FF1021, temp_bytes(65.5) + [100, 101, 65, 0x00, 0x00, 0xFF])      # EVSE_Thermal from 0x21
    tx.send(0x18FEEE22, [0x8C, 0x50, 0x3C, 0x2B, 0xFF, 0xFF, 0x7D, 0x00])         # ET1: coolant 0x8C = 100 C
    tx.send(0x18EF0523, temp_bytes(42.25) + [0] * 6)                                # PDU1 to DA 0x05 from 0x23
    snap = settle(ctrl)
    assert snap.node("e1")["temperature_c"] == 65.5
    assert snap.node("e2")["temperature_c"] == 100.0
    assert snap.node("e3")["temperature_c"] == 42.25
    assert snap.node("e2")["derate"] == 0.0 and snap.node("e1")["derate"] == 1.0
    can = ctrl.device_stats()["can"]
    assert can["decoded"] == 3 and can["unknown_pgn"] == 0


def test_pdu1_destination_is_not_part_of_the_pgn(rig):
    ctrl, tx = rig
    for da, temp in ((0x05, 30.0), (0xFF, 31.0)):
        tx.send(0x18EF0023 | da << 8, temp_bytes(temp) + [0] * 6)
        assert settle(ctrl).node("e3")["temperature_c"] == temp


def test_wrong_source_unknown_pgn_and_11_bit_frames_are_counted_not_used(rig):
    ctrl, tx = rig
    tx.send(0x18FF1021, temp_bytes(50.0) + [0] * 6)
    settle(ctrl)
    tx.send(0x18FF1099, temp_bytes(80.0) + [0] * 6)      # EVSE_Thermal, but from SA 0x99
    tx.send(0x18FECA21, [0] * 8)                          # DM1: a PGN we do not decode
    tx.send(0x123, [1, 2, 3], extended=False)
    snap = settle(ctrl)
    assert snap.node("e1")["temperature_c"] == 50.0
    can = ctrl.device_stats()["can"]
    assert can["unknown_pgn"] == 2 and can["non_j1939"] == 1


def test_not_available_out_of_range_and_short_frames_leave_the_value_stale(rig):
    ctrl, tx = rig
    tx.send(0x18FF1021, temp_bytes(50.0) + [0] * 6)
    t_good = settle(ctrl).t_ns
    tx.send(0x18FF1021, [0xFF, 0xFF] + [0] * 6)           # J1939 "not available"
    tx.send(0x18FF1021, [0x00, 0xFE] + [0] * 6)           # J1939 "error" range
    tx.send(0x18FF1021, temp_bytes(300.0) + [0] * 6)     # beyond the DBC's maximum
    tx.send(0x18FF1021, [0x20])                           # one byte: cannot carry a 16-bit signal
    snap = settle(ctrl)
    assert snap.node("e1")["temperature_c"] == 50.0       # nothing replaced the last good value
    can = ctrl.device_stats()["can"]
    assert can["not_available"] == 2 and can["out_of_range"] == 1 and can["short_frames"] == 1
    assert t_good < snap.t_ns


def test_stale_temperature_reaches_the_interlock():
    site = config.parse(SITE.format(backend="sim", budget=64).replace("heatsink_max_age_s = 3600",
                                                                         "heatsink_max_age_s = 0.01"), "t.toml")
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    ctrl.step(S)
    devices.can_peer.send_raw(0x18FF1021 | CAN_EFF_FLAG, bytes(temp_bytes(40.0) + [0] * 6))
    ctrl.run_steps(2)
    assert ctrl.snapshot().node("e1")["derate"] == 1.0
    ctrl.run_steps(20)                                     # 20 ms without a frame: stale
    snap = ctrl.snapshot()
    assert snap.node("e1")["derate"] == 0.0 and snap.node("e1")["faults"]
    devices.close()


@pytest.mark.parametrize("backend", BACKENDS["can"])
def test_frame_budget_bounds_a_cycle(backend):
    for ctrl, tx in make_rig(backend, 8):
        for k in range(20):
            tx.send(0x18FF1021, temp_bytes(40.0 + k) + [0] * 6)
        ctrl.run_steps(1)
        first = ctrl.device_stats()["can"]
        settle(ctrl)
        can = ctrl.device_stats()["can"]
        assert first["frames"] <= 8 and first["budget_full"] >= 1
        assert can["frames"] == 20 and ctrl.snapshot().node("e1")["temperature_c"] == 59.0


def test_error_and_bus_off_frames_are_counted():
    """Sim only: vcan cannot carry controller error frames."""
    for ctrl, tx in make_rig("sim", 64):
        tx.peer.send_raw(CAN_ERR_FLAG | CAN_ERR_BUSOFF, bytes(8))
        tx.peer.send_raw(CAN_ERR_FLAG | 0x4, bytes(8))
        tx.peer.sock.send(b"\x01\x02\x03")                   # a malformed frame on the socket
        can = settle(ctrl) and ctrl.device_stats()["can"]
        assert can["error_frames"] == 2 and can["bus_off"] == 1 and can["short_frames"] == 1


def test_motorola_signal_decodes_like_cantools():
    from v2g_rt.devices.can import load_dbc, signal_row
    db = load_dbc("")
    msg = db.get_message_by_name("EVSE_Thermal")
    site = config.parse(SITE.format(backend="sim", budget=64), "t.toml")
    ctrl = Controller(site, clock="virtual")
    row = signal_row(msg, msg.get_signal_by_name("CoolantPressure"), 0x21, ctrl.source_index("node/e2/heatsink_c"))
    far, near = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    near.setblocking(False)
    ctrl.attach_can(near.fileno(), 64, [row])
    ctrl.step(S)
    data = msg.encode({"HeatSinkTemp": 20, "Module1Temp": 20, "Module2Temp": 20, "InletAirTemp": 20,
                       "CoolantPressure": 234.5})
    far.send(FRAME.pack(0x18FF1021 | CAN_EFF_FLAG, 8, data))
    ctrl.run_steps(1)
    assert ctrl.snapshot().node("e2")["temperature_c"] == msg.decode(data)["CoolantPressure"] == 234.5
    far.close()
    near.close()


if IN_GUEST:      # cansend needs vcan0
    def test_cansend_frame_decodes_on_vcan():
        for ctrl, tx in make_rig("socketcan", 64):
            frame = "18FF1021#" + "".join(f"{b:02X}" for b in temp_bytes(77.0)) + "000000000000"
            subprocess.run(["cansend", "vcan0", frame], check=True)
            assert settle(ctrl).node("e1")["temperature_c"] == 77.0


def test_missing_interface_is_a_clear_error():
    site = config.parse(SITE.format(backend="socketcan", budget=64).replace('interface = "vcan0"',
                                                                             'interface = "can7"'), "t.toml")
    with pytest.raises(DeviceError) as e:
        attach(Controller(site, clock="virtual"), site)
    assert "can7" in str(e.value) and "Remedy" in str(e.value) and e.value.code == "ERR_DEVICE_MISSING"


def test_sim_peer_encodes_like_cantools():
    """The plant's fast frame packer agrees with cantools' encoder (little- and big-endian signals)."""
    from v2g_rt.devices.can import load_dbc
    from v2g_rt.sim.peers import SimCanPeer
    db = load_dbc("")
    peer = SimCanPeer(None, db)
    values = {"HeatSinkTemp": 71.28125, "Module1Temp": 60, "Module2Temp": 61, "InletAirTemp": 24,
              "CoolantPressure": 1234.5}
    assert peer.encode("EVSE_Thermal", values) == db.get_message_by_name("EVSE_Thermal").encode(values)
    et1 = {"EngCoolantTemp": 90, "EngFuelTemp1": 40, "EngOilTemp1": 101.5, "EngTurbo1OilTemp": 99.0,
           "EngIntercoolerTemp": 30}
    assert peer.encode("ET1", et1) == db.get_message_by_name("ET1").encode(et1)


def test_dlc_above_8_is_malformed_not_decoded():
    """Sim only: vcan refuses such frames at send. A can_frame with can_dlc 12 was decoded as 8 bytes."""
    for ctrl, tx in make_rig("sim", 64):
        tx.send(0x18FF1021, temp_bytes(50.0) + [0] * 6)
        settle(ctrl)
        tx.peer.sock.send(FRAME.pack(0x18FF1021 | CAN_EFF_FLAG, 12, bytes(temp_bytes(80.0) + [0] * 6)))
        snap = settle(ctrl)
        can = ctrl.device_stats()["can"]
        assert can["bad_dlc"] == 1 and can["decoded"] == 1
        assert snap.node("e1")["temperature_c"] == 50.0


def test_a_decoded_value_outside_the_sources_range_is_refused_by_the_gate():
    """A DBC range wider than the source kind's (a pressure wired to a heat sink by mistake):
    the decoder's own range check passes it, the measurement gate does not."""
    from v2g_rt.devices.can import load_dbc, signal_row
    msg = load_dbc("").get_message_by_name("EVSE_Thermal")
    ctrl = Controller(config.parse(SITE.format(backend="sim", budget=64), "t.toml"), clock="virtual")
    row = signal_row(msg, msg.get_signal_by_name("CoolantPressure"), 0x21, ctrl.source_index("node/e2/heatsink_c"))
    far, near = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    near.setblocking(False)
    ctrl.attach_can(near.fileno(), 64, [row])
    ctrl.step(S)
    values = {"HeatSinkTemp": 20, "Module1Temp": 20, "Module2Temp": 20, "InletAirTemp": 20}
    for kpa in (100.0, 1234.5):
        far.send(FRAME.pack(0x18FF1021 | CAN_EFF_FLAG, 8, msg.encode({**values, "CoolantPressure": kpa})))
        ctrl.run_steps(1)
    assert ctrl.snapshot().node("e2")["temperature_c"] == 100.0
    assert ctrl.device_stats()["can"]["gate_rejected"] == 1
    assert ctrl.stats()["rejected_by_source"]["node/e2/heatsink_c"] == {"ERR_MEAS_BAD_VALUE": 1}


@pytest.mark.skipif(not IN_GUEST, reason="SO_RXQ_OVFL needs SocketCAN: the kernel-test guest runs this")
def test_frames_the_kernel_dropped_are_counted():
    import can
    site = config.parse(SITE.format(backend="socketcan", budget=64), "t.toml")
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    devices.can.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)   # the kernel's minimum
    ctrl.step(S)
    bus = can.Bus(channel="vcan0", interface="socketcan")
    sent = 500
    for k in range(sent):
        bus.send(can.Message(arbitration_id=0x18FF1021, data=bytes(temp_bytes(40.0) + [0] * 6)))
    for _ in range(sent // 64 + 10):
        ctrl.run_steps(1)
    # The kernel stamps its drop count on the frames it queues after the drops: the next one tells.
    bus.send(can.Message(arbitration_id=0x18FF1021, data=bytes(temp_bytes(41.0) + [0] * 6)))
    bus.shutdown()
    for _ in range(10):
        ctrl.run_steps(1)
    stats = ctrl.device_stats()["can"]
    devices.close()
    assert stats["kernel_dropped"] > 0
    assert stats["frames"] + stats["kernel_dropped"] == sent + 1


def test_a_source_the_can_reader_owns_takes_nothing_from_python(rig):
    """measure() refused it, measure_many() wrote it: now the gate refuses both, counted."""
    ctrl, tx = rig
    src = "node/e1/heatsink_c"
    tx.send(0x18FF1021, temp_bytes(50.0) + [0] * 6)
    settle(ctrl)
    assert ctrl.measure(src, 20.0).code == "ERR_MEAS_DEVICE_OWNED"
    assert ctrl.measure_many([ctrl.source_index(src)], [20.0]) == 0
    snap = settle(ctrl)
    assert snap.node("e1")["temperature_c"] == 50.0
    assert ctrl.stats()["rejected_by_source"][src] == {"ERR_MEAS_DEVICE_OWNED": 2}
