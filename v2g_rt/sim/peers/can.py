"""The far side of the CAN sim backend: J1939 frames of the site's DBC, sent into the socket
pair whose near end the controller's loop drains exactly as it drains a SocketCAN socket, and
the power modules of EVSEs with link = "can", which take the loop's setpoint frames from it."""
from __future__ import annotations

import socket
from dataclasses import dataclass
import cantools

from ...devices.can import CAN_EFF_FLAG, FRAME, PGN_ADDRESS_CLAIMED, PGN_SETPOINT, setpoint_message, signal_row


def j1939_fields(can_id: int) -> tuple[int, int, int]:
    """(PGN, destination address or 255 for PDU2, source address) of a 29-bit identifier."""
    pf, ps = (can_id >> 16) & 0xFF, (can_id >> 8) & 0xFF
    pgn = (can_id >> 8) & (0x3FF00 if pf < 240 else 0x3FFFF)
    return pgn, ps if pf < 240 else 255, can_id & 0xFF


@dataclass
class Setpoint:
    power_w: float
    closed: bool
    timeout_s: float
    sequence: int
    t_ns: int


class PowerModule:
    """A power module at a J1939 address: applies setpoint frames for its ports, decoded by the
    DBC with cantools (never by the controller's own encoder) and, like a real one, falls back to 0 W with its contactors open when a port's last frame is older than the
    timeout that frame carried (its own dead-man, whatever the controller does)."""

    def __init__(self, address: int, ports: int, message=None):
        self.address, self.ports = address, ports
        self.message = message or setpoint_message()
        self.last: dict[int, Setpoint] = {}
        self.frames = 0
        self.ignored = 0              # other functions, ports it does not have

    def receive(self, can_id: int, data: bytes, t_ns: int) -> bool:
        pgn, da, _ = j1939_fields(can_id)
        if pgn != PGN_SETPOINT or da != self.address:
            return False
        v = self.message.decode(data, decode_choices=False)
        if v.get("Function") != 1 or not 0 <= v["Port"] < self.ports:
            self.ignored += 1
            return True
        self.frames += 1
        self.last[v["Port"]] = Setpoint(float(v["PowerSetpoint"]), bool(v["ContactorClose"]), float(v["Timeout"]),
                                        int(v["Sequence"]), t_ns)
        return True

    def output(self, port: int, t_ns: int) -> tuple[float, bool]:
        """(W, contactor closed) the module applies at t_ns."""
        s = self.last.get(port)
        if s is None or t_ns - s.t_ns > s.timeout_s * 1e9:
            return 0.0, False
        return s.power_w, s.closed


class SimCanPeer:
    """The far side of the sim backend: sends J1939 frames of the same DBC.

    Frames are packed from each signal's bit position and scaling (cantools' own
    encoder takes ~3 us per frame in pure Python, which dominated `simulate`).
    """

    def __init__(self, sock: socket.socket, db):
        self.sock, self.db = sock, db
        self._packers: dict[str, tuple] = {}
        self.modules: dict[int, PowerModule] = {}
        self.claims: list[tuple[int, int]] = []      # (source address, NAME) of address claims seen
        self.unknown = 0                             # frames no module took

    def module(self, address: int, ports: int) -> PowerModule:
        self.modules[address] = PowerModule(address, ports)
        return self.modules[address]

    def poll(self, t_ns: int) -> int:
        """Take every frame the controller sent (stamped t_ns); the number taken."""
        n = 0
        while True:
            try:
                raw = self.sock.recv(FRAME.size)
            except OSError:                          # BlockingIOError: every frame taken
                return n
            if len(raw) != FRAME.size:
                return n
            n += 1
            can_id, dlc, data = FRAME.unpack(raw)
            can_id &= 0x1FFFFFFF
            pgn, da, sa = j1939_fields(can_id)
            if pgn == PGN_ADDRESS_CLAIMED:
                self.claims.append((sa, int.from_bytes(data[:dlc], "little")))
            elif da not in self.modules or not self.modules[da].receive(can_id, data[:dlc], t_ns):
                self.unknown += 1

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
