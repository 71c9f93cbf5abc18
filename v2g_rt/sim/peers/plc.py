"""The far side of a PLC modem: a simulated HomePlug Green PHY modem answering the controller's
CM_NW_STATS.REQ probes on the far end of a real interface (an AF_PACKET socket on the other end
of a veth pair, or the AF_UNIX datagram socket pair of the sim backend, which carries the same
Ethernet frames), with configurable loss, latency, link state, the SLAC stack's CM_ATTEN_CHAR.IND
and garbage frames. Frames are built here from the HomePlug AV 1.1 layout, never by the core."""
from __future__ import annotations

import heapq
import socket
import struct
import threading

ETH_P_HOMEPLUG = 0x88E1
CM_NW_STATS, CM_ATTEN_CHAR = 0x6048, 0x606C
REQ, CNF, IND, RSP = 0, 1, 2, 3
MODEM_MAC = bytes.fromhex("00b052a1b2c3")     # the simulated QCA7000
EV_MAC = bytes.fromhex("00b052e0e1e2")        # the vehicle's modem, the one station of the AVLN
UNKNOWN_MAC = bytes.fromhex("00b052dead00")
GARBAGE = ("mmv", "type", "short", "stations", "groups", "unknown_mac")


def mme(dst: bytes, src: bytes, mmtype: int, payload: bytes = b"", mmv: int = 1) -> bytes:
    """An Ethernet frame carrying one MME (MMV, MMTYPE little-endian, FMI 0), padded to 60 bytes."""
    frame = dst + src + struct.pack("!H", ETH_P_HOMEPLUG) + struct.pack("<BHH", mmv, mmtype, 0) + payload
    return frame.ljust(60, b"\0")


def nw_stats_cnf(dst: bytes, src: bytes, stations: list[tuple[bytes, int, int]]) -> bytes:
    body = bytes([len(stations)]) + b"".join(da + struct.pack("<HH", tx, rx) for da, tx, rx in stations)
    return mme(dst, src, CM_NW_STATS | CNF, body)


def atten_char_ind(dst: bytes, src: bytes, groups: list[int], ev: bytes = EV_MAC) -> bytes:
    """CM_ATTEN_CHAR.IND as an EVSE's SLAC stack sends it (ISO 15118-3): application and security
    type, the EV's address, RunID, source and responder ids, the sounds, then NumGroups and AAG."""
    body = bytes(2) + ev + bytes(8) + bytes(17) + bytes(17) + bytes([10, len(groups)]) + bytes(groups)
    return mme(dst, src, CM_ATTEN_CHAR | IND, body)


class SimPlcModem:
    """One modem. poll(t_ns) reads the probes that arrived and sends the answers due; a share
    `loss` of the probes goes unanswered (spread evenly, so a test knows which), each answer
    leaves `latency_ns` after its probe arrived."""

    def __init__(self, sock: socket.socket, mac: bytes = MODEM_MAC):
        self.sock, self.mac = sock, mac
        self.loss = 0.0
        self.latency_ns = 0
        self.link_up = True
        self.rates = (9, 8)                      # Mbit/s, a Green PHY link's average PHY rates
        self.probes = self.answered = self.dropped = 0
        self._debt = 0.0
        self._due: list[tuple[int, int, bytes]] = []
        self._seq = 0

    def _send(self, frame: bytes) -> None:
        try:
            self.sock.send(frame)
        except BlockingIOError:
            pass                                  # a full queue loses the frame, as a wire would

    def poll(self, t_ns: int) -> None:
        while True:
            try:
                frame = self.sock.recv(2048)
            except BlockingIOError:
                break
            if len(frame) >= 19 and struct.unpack_from("<H", frame, 15)[0] == CM_NW_STATS | REQ:
                self._probe(frame[6:12], t_ns)
        while self._due and self._due[0][0] <= t_ns:
            self._send(heapq.heappop(self._due)[2])

    def _probe(self, src: bytes, t_ns: int) -> None:
        self.probes += 1
        self._debt += self.loss
        if self._debt >= 1.0:
            self._debt -= 1.0
            self.dropped += 1
            return
        self.answered += 1
        stations = [(EV_MAC, *self.rates)] if self.link_up else []
        self._seq += 1
        heapq.heappush(self._due, (t_ns + self.latency_ns, self._seq, nw_stats_cnf(src, self.mac, stations)))

    def attenuation(self, groups: list[int], to: bytes = EV_MAC) -> None:
        """The SLAC stack's CM_ATTEN_CHAR.IND (as the controller's host would see it on the wire)."""
        self._send(atten_char_ind(to, self.mac, groups))

    def garbage(self, kind: str, to: bytes = b"\xff" * 6) -> None:
        """A frame the controller must count and never take: see GARBAGE."""
        frame = {
            "mmv": lambda: nw_stats_cnf(to, self.mac, [(EV_MAC, 1, 1)])[:14] + b"\x00"
                           + nw_stats_cnf(to, self.mac, [(EV_MAC, 1, 1)])[15:],
            "type": lambda: mme(to, self.mac, 0xA039, bytes(20)),
            "short": lambda: nw_stats_cnf(to, self.mac, [])[:18],
            "stations": lambda: mme(to, self.mac, CM_NW_STATS | CNF, bytes([200]) + EV_MAC + b"\x09\x00\x08\x00"),
            "groups": lambda: atten_char_ind(to, self.mac, [20] * 58)[:70] + bytes([200]) + bytes(10),
            "unknown_mac": lambda: nw_stats_cnf(to, UNKNOWN_MAC, [(EV_MAC, 1, 1)]),
        }[kind]()
        self._send(frame)

    def close(self) -> None:
        self.sock.close()


class SimPlcPeer:
    """The far sides of the sim backend's modems, by port id."""

    def __init__(self, ends: dict, configs=()):
        self.modems = {port: SimPlcModem(end) for port, end in ends.items()}

    def poll(self, t_ns: int) -> None:
        for m in self.modems.values():
            m.poll(t_ns)

    def close(self) -> None:
        for m in self.modems.values():
            m.close()


class VethPair:
    """A veth pair for a test or a benchmark (root): the near end in this network namespace for
    the controller, the far end in a fresh namespace, where far_socket() opens the modem's own
    AF_PACKET socket from a thread that enters it (setns changes the calling thread only)."""

    def __init__(self, tag: str):
        self.ns, self.near, self.far = f"v2gplc{tag}", f"plc{tag}n", f"plc{tag}f"
        _ip("netns", "add", self.ns)
        try:
            _ip("link", "add", self.near, "type", "veth", "peer", "name", self.far)
            _ip("link", "set", self.far, "netns", self.ns)
            _ip("-n", self.ns, "link", "set", self.far, "up")
            _ip("link", "set", self.near, "up")
        except BaseException:
            self.close()
            raise

    def far_socket(self) -> socket.socket:
        out: dict = {}

        def enter() -> None:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            try:
                with open(f"/run/netns/{self.ns}") as f:
                    if libc.setns(f.fileno(), 0x40000000) != 0:          # CLONE_NEWNET
                        raise OSError(ctypes.get_errno(), f"setns into {self.ns}")
                out["sock"] = packet_socket(self.far)
            except OSError as e:
                out["error"] = e
        t = threading.Thread(target=enter)
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out["sock"]

    def close(self) -> None:
        import subprocess
        subprocess.run(["ip", "link", "del", self.near], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def _ip(*args: str) -> None:
    import subprocess
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode:
        raise OSError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def veth_missing() -> str | None:
    """Why a VethPair cannot be made here, or None."""
    import os
    if os.geteuid() != 0:
        return "needs root for a veth pair and a network namespace"
    probe = f"v2gq{os.getpid() % 100000}"
    try:
        _ip("link", "add", probe, "type", "veth", "peer", "name", probe + "b")
    except OSError as e:
        return f"no veth here: {e}"
    _ip("link", "del", probe)
    return None


def packet_socket(interface: str) -> socket.socket:
    """The far end's own AF_PACKET socket on its side of the veth pair."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_HOMEPLUG))
    sock.bind((interface, ETH_P_HOMEPLUG))
    sock.setblocking(False)
    return sock
