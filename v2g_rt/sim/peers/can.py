"""The far side of the CAN sim backend: J1939 frames of the site's DBC, sent into the socket
pair whose near end the controller's loop drains exactly as it drains a SocketCAN socket."""
from __future__ import annotations

import socket

import cantools

from ...devices.can import CAN_EFF_FLAG, FRAME, signal_row


class SimCanPeer:
    """The far side of the sim backend: sends J1939 frames of the same DBC.

    Frames are packed from each signal's bit position and scaling (cantools' own
    encoder takes ~3 us per frame in pure Python, which dominated `simulate`).
    """

    def __init__(self, sock: socket.socket, db):
        self.sock, self.db = sock, db
        self._packers: dict[str, tuple] = {}

    def _packer(self, message: str) -> tuple:
        if message not in self._packers:
            msg = self.db.get_message_by_name(message)
            fields = [(sig.name, row[2], row[3], row[4], row[8], row[9])
                      for sig in msg.signals for row in [signal_row(msg, sig, 0, 0)]]
            self._packers[message] = (cantools.j1939.pgn_from_frame_id(msg.frame_id), msg.length, fields)
        return self._packers[message]

    def encode(self, message: str, values: dict) -> bytes:
        _, length, fields = self._packer(message)
        le = be = 0
        for name, shift, n, big, scale, offset in fields:
            raw = round((values.get(name, offset) - offset) / scale) & ((1 << n) - 1)
            if big:
                be |= raw << shift
            else:
                le |= raw << shift
        word = int.from_bytes(le.to_bytes(8, "little"), "little") | int.from_bytes(be.to_bytes(8, "big"), "little")
        return word.to_bytes(8, "little")[:length]

    def send(self, message: str, sa: int, values: dict, priority: int = 6) -> None:
        pgn = self._packer(message)[0]
        self.send_raw((priority << 26) | (pgn << 8) | sa | CAN_EFF_FLAG, self.encode(message, values))

    def send_raw(self, can_id: int, data: bytes) -> None:
        try:
            self.sock.send(FRAME.pack(can_id, len(data), data.ljust(8, b"\0")))
        except BlockingIOError:
            pass          # the loop is behind: frames are dropped, as on a full CAN receive queue

    def close(self) -> None:
        self.sock.close()
