"""PLC link quality per port: the HomePlug Green PHY modem of each ISO 15118 port, measured by
the loop itself through management messages (MMEs, ethertype 0x88E1) on the modem's interface.

Why MMEs on Ethernet rather than a serial modem: the QCA7000/7005 modems of EVSE boards appear
under Linux as Ethernet interfaces (qcaspi over SPI, qca_uart over a UART), and the SLAC stack
and the ISO 15118 stack already speak to them there; the same interface answers CM_NW_STATS and
carries the SLAC stack's CM_ATTEN_CHAR. A serial AT-style modem link exists on no board we know.

This module opens an AF_PACKET SOCK_RAW socket bound to the interface and 0x88E1, nonblocking,
and hands its fd to the core (native/io_plc.pxi), which probes, drains and publishes the loss.
The sim backend hands over one end of an AF_UNIX SOCK_DGRAM socket pair carrying the same
Ethernet frames; the far side (v2g_rt.sim.peers.plc, never imported here) plays the modem.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from . import DeviceError
from ..site import port_source

SECTION = "plc"          # [plc.NAME]: one table per port's modem

ETH_P_HOMEPLUG = 0x88E1
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
# Classic BPF: keep frames of ethertype 0x88E1, drop the rest (the ISO 15118 IPv6 traffic).
HOMEPLUG_ONLY = [(0x28, 0, 0, 12), (0x15, 0, 1, ETH_P_HOMEPLUG), (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]
ARPHRD_ETHER = 1
QCA_LOCAL = "00:b0:52:00:00:01"      # Qualcomm's local management address: the modem on the wire answers
SIM_MAC = bytes.fromhex("02005647520a")   # our address on a sim interface (locally administered)


@dataclass(frozen=True)
class PlcConfig:
    name: str
    backend: str              # packet | sim
    interface: str
    port: str
    mac: bytes | None         # the modem's address; None: probe QCA_LOCAL and learn it
    probe_interval_s: float
    loss_window: int
    attenuation_limit_db: float
    frames_per_cycle: int


def trip_cycles(window: int, limit: float, interval_cycles: int) -> int:
    """Cycles from the first unanswered probe to ERR_ISO_TIMEOUT in the image, on a full window
    of answered probes: a probe is lost when the next goes out, the loss is over the limit after
    floor(limit * window) + 1 lost probes, and the interlock sees it in the next cycle's update."""
    return (int(limit * window + 1e-9) + 1) * interval_cycles + 1


def parse_mac(text: str) -> bytes | None:
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        return None
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        return None


def check_config(cf, site) -> list[PlcConfig]:
    out = []
    ports = {p.id: p for p in site.ports}
    iso = {n.id for n in site.nodes if getattr(n, "iso15118", False)}
    for sec in cf.tables("plc"):
        name = sec.name.split(".", 1)[1]
        port = sec.get_str("port")
        if port and port not in ports:
            sec.problem("port", f"{port!r} is not a port of this site; ports are named EVSE.N "
                                f"({', '.join(list(ports)[:4])}...)")
            port = ""                       # reported once: feeds() skips it
        elif port and ports[port].evse not in iso:
            sec.problem("port", f"{port}'s EVSE {ports[port].evse!r} has no PLC: set iso15118 = true in "
                                f"[node.{ports[port].evse}] (its ports then report plc_loss)")
            port = ""
        mac_text = sec.get_str("mac", "")
        mac = parse_mac(mac_text) if mac_text else None
        if mac_text and mac is None:
            sec.problem("mac", f"expected a MAC address like \"00:b0:52:12:34:56\", found {mac_text!r}")
        interval_ms = sec.get_float("probe_interval_ms", 100.0, minval=10, maxval=10000, unit="ms")
        window = sec.get_int("loss_window", 20, minval=1, maxval=1024)
        cfg = PlcConfig(name=name, backend=sec.get_str("backend", "packet", choices=("packet", "sim")),
                        interface=sec.get_str("interface", ""), port=port, mac=mac,
                        probe_interval_s=interval_ms / 1e3, loss_window=window,
                        attenuation_limit_db=sec.get_float("attenuation_limit_db", 30.0, minval=0, maxval=255,
                                                           unit="dB"),
                        frames_per_cycle=sec.get_int("frames_per_cycle", 16, minval=1, maxval=16))
        if cfg.backend == "packet" and not cfg.interface:
            sec.problem("interface", "required with backend = \"packet\": the modem's network interface "
                                     "(for a QCA7000 on SPI, the qcaspi netdev, e.g. \"eth1\")")
        age = site.control.session_max_age_s
        if cfg.probe_interval_s >= age:
            sec.problem("probe_interval_ms", f"{interval_ms:g} ms: the loss is published once per probe, so the "
                                             f"interval must be below [control] session_max_age_s ({age:g} s)")
        out.append(cfg)
    return out


def feeds(site) -> list:
    """Each modem feeds its port's plc_loss; a second writer of it is a config error (check_feeds)."""
    from . import Feed
    return [Feed(port_source(cfg.port, "plc_loss"), f"plc.{cfg.name}", "port", ("plc_loss",),
                 f"the PLC modem on {cfg.interface or 'the sim interface'}")
            for cfg in site.sections.get("plc") or () if cfg.port]


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER with a classic BPF program (struct sock_fprog)."""
    import ctypes
    code = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HP", len(program), ctypes.addressof(buf))     # native: padding before the pointer
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_packet(cfg: PlcConfig) -> tuple[socket.socket, bytes]:
    """The modem's interface as an AF_PACKET socket for 0x88E1 frames, and its own address."""
    net = Path("/sys/class/net") / cfg.interface
    if not net.exists():
        raise DeviceError(f"[plc.{cfg.name}] interface {cfg.interface} does not exist. Remedy: load the modem's "
                          f"driver (qcaspi or qca_uart, see the board's device tree), check [plc.{cfg.name}] interface")
    if int((net / "type").read_text()) != ARPHRD_ETHER:
        raise DeviceError(f"[plc.{cfg.name}] {cfg.interface} is not an Ethernet interface; a Green PHY modem "
                          f"appears as one (qcaspi, qca_uart)")
    # ETH_P_ALL, not 0x88E1: only "all" taps see the frames this host sends, and the SLAC stack's
    # CM_ATTEN_CHAR.IND goes out through this interface. The filter keeps the rest in the kernel.
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError as e:
        raise DeviceError(f"[plc.{cfg.name}] cannot open a packet socket: the service needs CAP_NET_RAW "
                          f"(hw/systemd: AmbientCapabilities=CAP_NET_RAW)") from e
    attach_filter(sock, HOMEPLUG_ONLY)
    sock.bind((cfg.interface, ETH_P_ALL))
    sock.setblocking(False)
    mac = bytes.fromhex((net / "address").read_text().strip().replace(":", ""))
    if (net / "operstate").read_text().strip() not in ("up", "unknown"):
        sock.close()
        raise DeviceError(f"[plc.{cfg.name}] {cfg.interface} is down. Remedy: `ip link set {cfg.interface} up`")
    return sock, mac


class SimEnds(dict):
    """The far ends of the sim modems' socket pairs, by port id."""

    def close(self) -> None:
        for end in self.values():
            end.close()


class PlcModem:
    def __init__(self, sock: socket.socket, cfg: PlcConfig):
        self.sock, self.cfg = sock, cfg

    def close(self) -> None:
        self.sock.close()


def attach(ctrl, site):
    """Open each modem and hand it to the core; returns the open modems, the far ends of the
    sim ones ({port: socket}, None without) and their configs."""
    modems, far, sim = [], SimEnds(), []
    try:
        for cfg in site.sections["plc"]:
            if cfg.backend == "packet":
                sock, mac = open_packet(cfg)
            else:
                sock, end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                end.setblocking(False)
                far[cfg.port] = end
                sim.append(cfg)
                mac = SIM_MAC
            modems.append(PlcModem(sock, cfg))
            ctrl.attach_plc(sock.fileno(), cfg.port, mac, cfg.mac, cfg.loss_window, cfg.probe_interval_s,
                            cfg.attenuation_limit_db, cfg.frames_per_cycle)
    except BaseException:
        for m in modems:
            m.close()
        far.close()
        raise
    return modems, (far or None), sim
