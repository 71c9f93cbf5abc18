"""The kernel's J1939 stack (can-j1939) on vcan, through Python's socket module."""

import socket
import struct

import pytest

if not hasattr(socket, "CAN_J1939"):
    pytest.skip("this Python was built without CAN_J1939 support", allow_module_level=True)

PGN_ET1 = 0xFEEE  # engine temperature 1, a broadcast (PDU2) PGN
SOURCE_ADDRESS = 0x21
ET1_WIRE_ID = 0x18FEEE21  # default J1939 priority 6
CAN_FRAME = struct.Struct("=IB3x8s")
DATA = bytes([0x8C, 0x50, 0x3C, 0x2B, 0xFF, 0xFF, 0x7D, 0x00])


def raw_socket(iface: str) -> socket.socket:
    sock = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    sock.settimeout(5)
    sock.bind((iface,))
    return sock


def j1939_socket(iface: str, source_address: int) -> socket.socket:
    sock = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_J1939)
    sock.settimeout(5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind((iface, socket.J1939_NO_NAME, socket.J1939_NO_PGN, source_address))
    return sock


def test_j1939_broadcast_goes_out_as_extended_frame(vcan0):
    with raw_socket(vcan0) as raw, j1939_socket(vcan0, SOURCE_ADDRESS) as j1939:
        dest = (vcan0, socket.J1939_NO_NAME, PGN_ET1, socket.J1939_NO_ADDR)
        j1939.sendto(DATA, dest)
        can_id, dlc, data = CAN_FRAME.unpack(raw.recv(CAN_FRAME.size))
    assert can_id & socket.CAN_EFF_FLAG
    assert can_id & socket.CAN_EFF_MASK == ET1_WIRE_ID
    assert data[:dlc] == DATA


def test_raw_frame_decoded_by_j1939_socket(vcan0):
    with raw_socket(vcan0) as raw, j1939_socket(vcan0, socket.J1939_NO_ADDR) as j1939:
        raw.send(CAN_FRAME.pack(ET1_WIRE_ID | socket.CAN_EFF_FLAG, len(DATA), DATA))
        data, (iface, _name, pgn, source_address) = j1939.recvfrom(64)
    assert (iface, pgn, source_address) == (vcan0, PGN_ET1, SOURCE_ADDRESS)
    assert data == DATA
