"""CAN / J1939: a SocketCAN raw socket (or a simulated one) whose frames the loop decodes itself,
and through which its write stage sends the setpoints of EVSEs with link = "can".

The signal table comes from a DBC file parsed with cantools; the loop gets, per signal,
its PGN, source address, bit position and scaling, and the source it feeds. Setpoint frames
follow hw/j1939/v2g-setpoint.dbc, from the address the controller claims ([can] address).
"""
from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cantools

from .. import _core
from . import DeviceError
from ..site import node_source

SECTION = "can"          # [can]: one bus

CAN_EFF_FLAG = 0x80000000
CAN_ERR_MASK = 0x1FFFFFFF
SOL_CAN_RAW = 101
CAN_RAW_ERR_FILTER = 2
ARPHRD_CAN = 280
FRAME = struct.Struct("=IB3x8s")          # struct can_frame
DEFAULT_DBC = "v2g-thermal.dbc"
SETPOINT_DBC = "v2g-setpoint.dbc"
DEFAULT_SIGNAL = "EVSE_Thermal.HeatSinkTemp"
PGN_SETPOINT, PGN_ADDRESS_CLAIMED = _core.J1939_PGNS["setpoint"], _core.J1939_PGNS["address_claimed"]
MODULE_TIMEOUT_MAX_S = 25.0               # a setpoint frame carries the timeout in 0.1 s, one byte


@dataclass(frozen=True)
class CanConfig:
    backend: str = "sim"                  # socketcan | sim
    interface: str = "can0"
    dbc: str = ""                         # "" = the packaged hw/j1939/v2g-thermal.dbc
    frames_per_cycle: int = 64
    address: int | None = None            # our J1939 source address (EVSEs with link = "can")
    name: int | None = None               # our J1939 NAME; None: identity number = address
    setpoint_interval_ms: int = 100       # a port's setpoint frames at most this often


def default_name(address: int) -> int:
    """A NAME with the address as identity number, not arbitrary-address capable: unique on a
    bus whose addresses are unique. A bus plan that assigns NAMEs sets [can] name."""
    return address


def check_config(cf, site) -> CanConfig:
    sec = cf.section("can")
    d = CanConfig()
    cfg = CanConfig(backend=sec.get_str("backend", d.backend, choices=("socketcan", "sim")),
                    interface=sec.get_str("interface", d.interface),
                    dbc=sec.get_str("dbc", d.dbc),
                    frames_per_cycle=sec.get_int("frames_per_cycle", d.frames_per_cycle, minval=1, maxval=64),
                    address=sec.get_int("address", None, minval=0, maxval=253),
                    name=sec.get_int("name", None, minval=0, maxval=2**63 - 1),
                    setpoint_interval_ms=sec.get_int("setpoint_interval_ms", d.setpoint_interval_ms,
                                                     minval=1, maxval=1000))
    check_setpoints(sec, cfg, site)
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
        if not n.heatsink_c and n.link != "can":
            sec.problem(None, f"[node.{n.id}] has can_address but neither heatsink_derate_c (a temperature it "
                              f"feeds) nor link = \"can\" (setpoints it takes): nothing uses it")
    return cfg


def can_evses(site) -> list:
    return [n for n in site.nodes if n.link == "can"]


def check_setpoints(sec, cfg: CanConfig, site) -> None:
    evses = can_evses(site)
    if not evses:
        return
    if cfg.address is None:
        names = ", ".join(n.id for n in evses[:4])
        sec.problem("address", f"required: EVSEs {names} have link = \"can\"; the controller sends their setpoints "
                               f"from this J1939 source address (0..253), one no other node on the bus uses")
    for n in evses:
        if n.can_address is None:
            sec.problem(None, f"[node.{n.id}] has link = \"can\" but no can_address: its power module's J1939 "
                              f"address is where its setpoint frames go")
        elif n.can_address == cfg.address:
            sec.problem("address", f"address {cfg.address} is EVSE {n.id!r}'s can_address too; give the "
                                   f"controller its own J1939 address")
    hold = site.control.output_hold_s
    if hold > MODULE_TIMEOUT_MAX_S:
        sec.problem(None, f"[control] output_hold_s = {hold:g} s, but a setpoint frame carries the power module's "
                          f"timeout as at most {MODULE_TIMEOUT_MAX_S:g} s; set output_hold_s to at most "
                          f"{MODULE_TIMEOUT_MAX_S:g} for EVSEs with link = \"can\"")


def feeds(site) -> list:
    """The heat-sink sources the loop feeds from J1939 frames (EVSEs with can_address and a
    heat-sink derate; one without is reported by check_config)."""
    from . import Feed
    return [Feed(node_source(n.id, "heatsink_c"), f"node.{n.id}", "can_address", ("heatsink_c",),
                 f"the CAN signal {n.can_signal}") for n in thermal_evses(site)]


def thermal_evses(site) -> list:
    return [n for n in site.nodes if n.can_address is not None and n.heatsink_c]


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
    """The native table row for one DBC signal (see CanSignal in native/io_can.pxd)."""
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
    for n in thermal_evses(site):
        msg_name, _, sig_name = n.can_signal.partition(".")
        msg = db.get_message_by_name(msg_name)
        source = node_source(n.id, "heatsink_c")
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
    ports = setpoint_ports(site)
    if ports:
        hold = min(site.control.output_hold_s, MODULE_TIMEOUT_MAX_S)
        name = cfg.name if cfg.name is not None else default_name(cfg.address)
        ctrl.attach_can_writer(cfg.address, name, hold, cfg.setpoint_interval_ms / 1e3, ports)
    return CanBus(sock), far, db


def setpoint_ports(site) -> list[tuple[str, int, int]]:
    """(port id, the power module's address, the port's number on its EVSE) for link = "can"."""
    address = {n.id: n.can_address for n in can_evses(site)}
    numbers: dict[str, int] = {}
    out = []
    for p in site.ports:
        if p.evse in address:
            k = numbers[p.evse] = numbers.get(p.evse, -1) + 1
            out.append((p.id, address[p.evse], k))
    return out


def setpoint_message():
    """V2G_Setpoint of hw/j1939/v2g-setpoint.dbc, for encoders and decoders outside the core."""
    text = resources.files("v2g_rt.data").joinpath(SETPOINT_DBC).read_text()
    return cantools.database.load_string(text, "dbc").get_message_by_name("V2G_Setpoint")


def safe_outputs(site) -> str:
    """Without a running controller (systemd ExecStopPost): claim [can] address, then send every
    port of every link = "can" EVSE 0 W with its contactor open. Encoded from the DBC (cantools),
    not by the core, which is not running. Raises DeviceError."""
    cfg = site.sections["can"]
    ports = setpoint_ports(site)
    if cfg.backend == "sim":
        return f"{len(ports)} ports: no physical bus (backend sim): the simulated modules stop with the controller"
    name = cfg.name if cfg.name is not None else default_name(cfg.address)
    message = setpoint_message()
    sock = open_socketcan(cfg.interface)
    try:
        sock.setblocking(True)
        sock.settimeout(1.0)
        claim_id = CAN_EFF_FLAG | (6 << 26) | ((PGN_ADDRESS_CLAIMED | 0xFF) << 8) | cfg.address
        sock.send(FRAME.pack(claim_id, 8, name.to_bytes(8, "little")))
        _await_claim(sock, cfg.address, name)
        for port, da, number in ports:
            data = message.encode({"Function": 1, "Port": number, "PowerSetpoint": 0, "Timeout": 0.1,
                                   "ContactorClose": 0, "Sequence": 0})
            sock.send(FRAME.pack(CAN_EFF_FLAG | (3 << 26) | ((PGN_SETPOINT | da) << 8) | cfg.address, 8,
                                 data.ljust(8, b"\xff")))
    except OSError as e:
        raise DeviceError(f"cannot send safe setpoints on {cfg.interface}: {e.strerror or e}. Remedy: check the bus "
                          f"(ip -details link show {cfg.interface}); the power modules fall back by their own "
                          f"timeout anyway") from e
    finally:
        sock.close()
    return f"{len(ports)} ports: 0 W and contactor open sent on {cfg.interface} from J1939 address {cfg.address}"


def _await_claim(sock: socket.socket, address: int, name: int) -> None:
    """J1939-81: 250 ms for a contending claim; one with a lower NAME keeps the address."""
    end = time.monotonic() + 0.25
    while (left := end - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            return
        can_id, dlc, data = FRAME.unpack(sock.recv(FRAME.size))
        if (can_id >> 8) & 0x3FF00 == PGN_ADDRESS_CLAIMED and can_id & 0xFF == address and int.from_bytes(data, "little") <= name:
            raise DeviceError(f"J1939 address {address} is claimed by a node with a lower NAME; no setpoint was sent. "
                              f"Remedy: give the controller an address of its own ([can] address)", "ERR_LINK_DOWN")


LISTEN_S = 3.0            # calibration: how long the bus is listened to for every configured address


def calibration_steps(site, bench) -> list:
    """One step: every EVSE whose thermal frames the loop decodes is heard (its frames pass the
    gate while we listen), and the controller holds its own address when it sends setpoints."""
    from ..calibrate import Step, Verdict
    from ..site import node_source

    cfg = site.sections["can"]
    listened = {n.can_address: node_source(n.id, "heatsink_c") for n in thermal_evses(site)}
    silent_ok = sorted({n.can_address for n in can_evses(site)} - set(listened))

    def run(b) -> Verdict:
        before = {a: b.ctrl.accepted(src) for a, src in listened.items()}
        b.settle(LISTEN_S)
        heard = sorted(a for a, src in listened.items() if b.ctrl.accepted(src) > before[a])
        missing = sorted(set(listened) - set(heard))
        claim = b.ctrl.device_stats()["can"]["setpoints"]["claim"] if setpoint_ports(site) else None
        detail = f"{len(heard)}/{len(listened)} addresses heard in {LISTEN_S:g} s" + (
            f"; {', '.join(map(str, silent_ok))} send no frames the loop decodes (not listened for)" if silent_ok else "")
        if missing:
            return Verdict.fail("ERR_CALIBRATION_CAN_SILENT", f"{detail}; not heard: {', '.join(map(str, missing))} "
                                f"on {cfg.interface if cfg.backend == 'socketcan' else 'the sim bus'}")
        if claim not in (None, "held"):
            return Verdict.fail("ERR_CALIBRATION_CAN_SILENT", f"{detail}; our address {cfg.address} is {claim}, not held")
        return Verdict(True, detail + (f"; address {cfg.address} held" if claim else ""),
                       result={"can": {"heard": heard}})
    return [Step("can.addresses", f"CAN: J1939 addresses of {len(listened)} EVSEs heard on the bus", run)]
