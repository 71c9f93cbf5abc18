"""CAN / J1939: a SocketCAN raw socket (or a simulated one) whose frames the loop decodes itself.

The signal table comes from a DBC file parsed with cantools; the loop gets, per signal,
its PGN, source address, bit position and scaling, and the source it feeds.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cantools

from . import DeviceError

SECTION = "can"          # [can]: one bus

CAN_EFF_FLAG = 0x80000000
CAN_ERR_MASK = 0x1FFFFFFF
SOL_CAN_RAW = 101
CAN_RAW_ERR_FILTER = 2
ARPHRD_CAN = 280
FRAME = struct.Struct("=IB3x8s")          # struct can_frame
DEFAULT_DBC = "v2g-thermal.dbc"
DEFAULT_SIGNAL = "EVSE_Thermal.HeatSinkTemp"


@dataclass(frozen=True)
class CanConfig:
    backend: str = "sim"                  # socketcan | sim
    interface: str = "can0"
    dbc: str = ""                         # "" = the packaged hw/j1939/v2g-thermal.dbc
    frames_per_cycle: int = 64


def check_config(cf, site) -> CanConfig:
    sec = cf.section("can")
    d = CanConfig()
    cfg = CanConfig(backend=sec.get_str("backend", d.backend, choices=("socketcan", "sim")),
                    interface=sec.get_str("interface", d.interface),
                    dbc=sec.get_str("dbc", d.dbc),
                    frames_per_cycle=sec.get_int("frames_per_cycle", d.frames_per_cycle, minval=1, maxval=64))
    try:
        db = load_dbc(cfg.dbc, site.source)
    except DeviceError as e:
        sec.problem("dbc", str(e))
        return cfg
    for n in site.nodes:
        if n.can_address is None:
            continue
        msg, _, sig = n.can_signal.partition(".")
        try:
            db.get_message_by_name(msg).get_signal_by_name(sig)
        except KeyError:
            names = sorted(f"{m.name}.{s.name}" for m in db.messages for s in m.signals)
            sec.problem(None, f"[node.{n.id}] can_signal {n.can_signal!r} is not in the DBC; it has {', '.join(names)}")
        if not n.heatsink_c:
            sec.problem(None, f"[node.{n.id}] has can_address but no heatsink_derate_c: nothing to feed")
    return cfg


def feeds(site) -> list:
    """The heat-sink sources the loop feeds from J1939 frames (EVSEs with can_address and a
    heat-sink derate; one without is reported by check_config)."""
    from . import Feed
    return [Feed(f"node/{n.id}/heatsink_c", f"node.{n.id}", "can_address", ("heatsink_c",),
                 f"the CAN signal {n.can_signal}") for n in site.nodes if n.can_address is not None and n.heatsink_c]


def load_dbc(path: str, config_file: str = ""):
    try:
        if not path:
            return cantools.database.load_string(resources.files("v2g_rt.data").joinpath(DEFAULT_DBC).read_text(),
                                                 "dbc")
        p = Path(path)
        if not p.is_absolute() and config_file and not config_file.startswith("<"):
            p = Path(config_file).parent / p
        return cantools.database.load_file(str(p))
    except (OSError, cantools.database.UnsupportedDatabaseFormatError, ValueError) as e:
        raise DeviceError(f"cannot load the DBC {path or DEFAULT_DBC}: {e}", "ERR_CONFIG_VALUE") from e


def signal_row(msg, sig, sa: int, input_index: int) -> tuple:
    """The native table row for one DBC signal (see CanSignal in native/image.pxd)."""
    pgn = cantools.j1939.pgn_from_frame_id(msg.frame_id)
    n = sig.length
    if sig.byte_order == "little_endian":
        shift, big, min_dlc = sig.start, 0, (sig.start + n + 7) // 8
    else:  # Motorola: DBC start is the MSB in sawtooth numbering
        msb = (sig.start // 8) * 8 + (7 - sig.start % 8)
        shift, big, min_dlc = 64 - msb - n, 1, (msb + n - 1) // 8 + 1
    mask = (1 << n) - 1
    if sig.is_signed:
        raw_max = mask
    else:  # SAE J1939-71: the top of each range means "error" and "not available"
        raw_max = {8: 0xFA, 16: 0xFAFF, 32: 0xFAFFFFFF}.get(n, mask - 2 if n >= 2 else mask)
    lo = sig.minimum if sig.minimum is not None else 0.0
    hi = sig.maximum if sig.maximum is not None else 0.0
    return (pgn, sa, shift, n, big, int(sig.is_signed), min_dlc, raw_max, float(sig.scale), float(sig.offset),
            float(lo), float(hi), input_index)


def open_socketcan(iface: str) -> socket.socket:
    net = Path("/sys/class/net") / iface
    if not net.exists():
        raise DeviceError(f"CAN interface {iface} does not exist. Remedy: load the controller's driver (or "
                          f"`modprobe vcan && ip link add dev {iface} type vcan` to test), check [can] interface")
    if int((net / "type").read_text()) != ARPHRD_CAN:
        raise DeviceError(f"{iface} is not a CAN interface; check [can] interface")
    try:
        sock = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    except OSError as e:
        raise DeviceError(f"cannot open a raw CAN socket ({e.strerror}). Remedy: `modprobe can-raw`; the service "
                          f"needs CAP_NET_RAW") from e
    sock.setsockopt(SOL_CAN_RAW, CAN_RAW_ERR_FILTER, struct.pack("=I", CAN_ERR_MASK))   # see bus-off
    # Each frame then carries the kernel's count of frames dropped on a full receive queue.
    sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RXQ_OVFL", 40), 1)
    sock.bind((iface,))
    sock.setblocking(False)
    if (net / "operstate").read_text().strip() not in ("up", "unknown"):
        raise DeviceError(f"CAN interface {iface} is down. Remedy: `ip link set {iface} up type can bitrate 250000`")
    return sock


class CanBus:
    def __init__(self, sock: socket.socket):
        self.sock = sock

    def close(self) -> None:
        self.sock.close()


def attach(ctrl, site):
    cfg = site.sections["can"]
    db = load_dbc(cfg.dbc, site.source)
    rows = []
    for n in site.nodes:
        if n.can_address is None:
            continue
        msg_name, _, sig_name = n.can_signal.partition(".")
        msg = db.get_message_by_name(msg_name)
        source = f"node/{n.id}/heatsink_c"
        rows.append(signal_row(msg, msg.get_signal_by_name(sig_name), n.can_address, ctrl.source_index(source)))
        ctrl.claim_source(source, "can")
    far = None
    if cfg.backend == "socketcan":
        sock = open_socketcan(cfg.interface)
    else:       # sim: a socket pair; the far end goes to whoever plays the bus (v2g_rt.sim.peers)
        sock, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        far.setblocking(False)
    ctrl.attach_can(sock.fileno(), cfg.frames_per_cycle, rows)
    return CanBus(sock), far, db
