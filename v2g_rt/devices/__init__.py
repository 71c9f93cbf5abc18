"""Devices: open and configure kernel devices with the Python libraries, then hand their fds
to the native core, which does the reads and writes (the loop for CAN and GPIO, the I/O thread
for I2C, SPI and PWM sysfs); a sim I2C sensor or SPI ADC is served on the Python side instead."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import V2GError
from ..site import Problem, Site


class DeviceError(V2GError):
    """A device that cannot be opened or configured; the message names the device and the remedy."""

    def __init__(self, message: str, code: str = "ERR_DEVICE_MISSING"):
        super().__init__(code, message)


def kinds() -> tuple:
    """The registry: every device kind's module. Each declares SECTION (its config section, or
    table prefix), check_config(cf, site), feeds(site) and attach(ctrl, site) -> (handles, the
    end of a sim backend the far side takes (a socket pair's far end, the bus of I2C sensors
    served on the Python side) or None, what the far side needs to play it)."""
    from . import can, gpio, i2c, plc, pwm, spi
    return (can, i2c, gpio, spi, pwm, plc)


@dataclass
class Devices:
    """What attach() opened for a controller, per device kind (SECTION), and the simulator's
    far sides of sim backends: devices.can, devices.i2c, devices.can_peer, devices.i2c_peer."""
    handles: dict = field(default_factory=dict)
    peers: dict = field(default_factory=dict)

    def __getattr__(self, name):
        if name in ("handles", "peers"):
            raise AttributeError(name)
        kind, _, peer = name.partition("_peer")
        if kind in {m.SECTION for m in kinds()}:
            return (self.peers if name.endswith("_peer") else self.handles).get(kind)
        raise AttributeError(name)

    def close(self) -> None:
        for h in self.handles.values():
            for dev in (h if isinstance(h, list) else [h]):
                dev.close()
        for peer in self.peers.values():
            peer.close()


class Served:
    """Sensors of a sim backend, served on the Python side (Controller.add_served_sensors runs
    them): each sensor has period_ns, next_ns, read(transfer, t_ns) and stats(). Its far side
    plugs in with plug(transfer); until then (and after close) unplugged answers."""

    def __init__(self, unplugged):
        self.sensors: list = []
        self.unplugged = self.transfer = unplugged

    def plug(self, transfer) -> None:
        self.transfer = transfer

    def schedule(self, start_ns: int) -> None:
        """Spread the first reads over the periods, as the I/O thread does."""
        n = len(self.sensors)
        for k, s in enumerate(self.sensors):
            s.next_ns = start_ns + s.period_ns * k // n

    def next_ns(self) -> int:
        return min(s.next_ns for s in self.sensors)

    def poll(self, now_ns: int, catch_up: bool) -> None:
        """Read every sensor due by now_ns: with catch_up (virtual time) once per period passed,
        so the reads are as many as the periods; without (real time) once, and on from now: a
        late thread skips periods, never bursts."""
        if self.sensors[0].next_ns is None:
            self.schedule(now_ns)
        for s in self.sensors:
            while s.next_ns <= now_ns:
                s.read(self.transfer, now_ns)
                s.next_ns += s.period_ns
                if not catch_up and s.next_ns <= now_ns:
                    s.next_ns = now_ns + s.period_ns

    def stats(self) -> list[dict]:
        return [s.stats() for s in self.sensors]

    def close(self) -> None:
        self.transfer = self.unplugged


@dataclass(frozen=True)
class Feed:
    """A source a device feeds natively, and where the config says so."""
    source: str
    section: str
    option: str
    kinds: tuple[str, ...]     # source kinds the device's value can be
    what: str                  # the device's value, for messages ("a tmp117 temperature")


def check_feeds(site: Site, feeders=None) -> list[Problem]:
    """Each device (of the modules feeders, default every kind) feeds an existing source of its
    own kind, never an upstream heartbeat, and no source has two devices writing it."""
    feeds = [f for m in (feeders or kinds()) if site.sections.get(m.SECTION) for f in m.feeds(site)]
    kinds_of = site.source_kinds()
    writers: dict[str, Feed] = {}
    out = []
    for f in feeds:
        why = _feed_problem(f, kinds_of, writers)
        if why:
            out.append(Problem(f.section, f.option, why, "ERR_CONFIG_DEVICE"))
        writers.setdefault(f.source, f)
    return out


def _feed_problem(f: Feed, kinds: dict[str, str], writers: dict[str, Feed]) -> str | None:
    kind = kinds.get(f.source)
    if kind == "heartbeat":
        return (f"{f.source} is an upstream heartbeat: only the upstream itself may show it is alive, "
                f"devices never feed it; choose a {'/'.join(f.kinds) or 'measurement'} source")
    if kind is None or kind not in f.kinds:
        fits = [name for name, k in kinds.items() if k in f.kinds]
        shown = ", ".join(fits[:6]) + (f" and {len(fits) - 6} more" if len(fits) > 6 else "")
        found = "is not a source of this site" if kind is None else f"is a {kind} source"
        return f"{f.source!r} {found}; {f.what} can feed: {shown or 'no source of this site'}"
    if f.source in writers:
        w = writers[f.source]
        return f"{f.source} is already fed by [{w.section}] {w.option}; give each source one device"
    return None


def attach(ctrl, site, peers=None) -> Devices:
    """Open the site's devices and hand them to ctrl (before it steps or starts).

    A sim backend's end for the far side is handed to peers[SECTION](end, what), the simulator's side
    (v2g_rt.sim.peers.attach passes its own); devices never import the simulator."""
    devices = Devices()
    far = []
    try:
        for m in kinds():
            if not site.sections.get(m.SECTION):
                continue
            devices.handles[m.SECTION], sock, what = m.attach(ctrl, site)
            far.append(sock)
            if sock is not None:
                devices.peers[m.SECTION] = _peer(peers, m.SECTION)(sock, what)
    except BaseException:
        devices.close()
        for sock in far:
            if sock is not None:
                sock.close()
        raise
    return devices


def _peer(peers, kind: str):
    if not peers or kind not in peers:
        raise DeviceError(f"[{kind}] backend = \"sim\": the simulated far side is not running here. Remedy: start through "
                          f"v2g_rt.app (v2g-rt run / simulate), or use a real backend", "ERR_DEVICE_MISSING")
    return peers[kind]
