"""python-can's socketcan interface against the kernel's vcan driver."""

import shutil
import subprocess

import pytest

can = pytest.importorskip("can")

RECV_TIMEOUT_S = 5.0


def j1939_can_id(priority: int, pgn: int, source_address: int) -> int:
    return priority << 26 | pgn << 8 | source_address


# Priority 6, PGN 65262 (0xFEEE, engine temperature 1), source address 0x21.
ET1_ID = j1939_can_id(6, 0xFEEE, 0x21)
# PGN 65265 (0xFEF1, cruise control/vehicle speed) from the same source.
CCVS_ID = j1939_can_id(6, 0xFEF1, 0x21)
PGN_MASK = 0x3FFFF << 8


def open_bus(channel: str, **kwargs):
    return can.Bus(interface="socketcan", channel=channel, **kwargs)


def assert_frame(msg, can_id: int, data: bytes, channel: str) -> None:
    assert msg is not None, "no frame received"
    assert msg.is_extended_id
    assert msg.arbitration_id == can_id
    assert msg.dlc == len(data)
    assert bytes(msg.data) == data
    assert not msg.is_error_frame
    assert msg.channel == channel


def test_j1939_id_layout():
    assert ET1_ID == 0x18FEEE21


def test_extended_frame_between_two_buses(vcan0):
    data = bytes([0x8C, 0x50, 0x3C, 0x2B, 0xFF, 0xFF, 0x7D, 0x00])
    with open_bus(vcan0) as tx, open_bus(vcan0) as rx:
        tx.send(can.Message(arbitration_id=ET1_ID, is_extended_id=True, data=data))
        assert_frame(rx.recv(timeout=RECV_TIMEOUT_S), ET1_ID, data, vcan0)


def test_cansend_frame_received_by_python_can(vcan0):
    cansend = shutil.which("cansend")
    if cansend is None:
        pytest.skip("cansend (can-utils) not installed")
    with open_bus(vcan0) as rx:
        subprocess.run([cansend, vcan0, "18FEEE21#0102030405060708"], check=True)
        assert_frame(rx.recv(timeout=RECV_TIMEOUT_S), ET1_ID, bytes(range(1, 9)), vcan0)


def test_kernel_filter_passes_only_matching_pgn(vcan0):
    pgn_filter = [{"can_id": ET1_ID & PGN_MASK, "can_mask": PGN_MASK, "extended": True}]
    with open_bus(vcan0, can_filters=pgn_filter) as rx, open_bus(vcan0) as tx:
        tx.send(can.Message(arbitration_id=CCVS_ID, is_extended_id=True, data=b"\x01"))
        tx.send(can.Message(arbitration_id=ET1_ID, is_extended_id=True, data=b"\x02"))
        assert_frame(rx.recv(timeout=RECV_TIMEOUT_S), ET1_ID, b"\x02", vcan0)
        assert rx.recv(timeout=0.2) is None
