"""The simulated plant: the far side of every interface of a simulated site.

EVs arrive and leave, charge along a curve that tapers near full and follow the
controller's outputs; the building draws a base load; a simulated DMS sends a
setpoint schedule with export periods and heartbeats; the grid frequency has
events. The plant reaches the controller only through measure()/submit(), and
reads only the published snapshot, exactly as real services and devices do. It
also keeps the books a commissioning engineer asks for: energy delivered,
setpoint tracking, unmet departures and limit violations, computed from its own
state, not from the controller's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import _core
from ..config import _show, is_number
from ..controller import Controller
from ..pilot import pilot_current
from ..site import PHASES, Site, node_source, port_source, upstream_heartbeat

SECTION = "sim"          # [sim]: the simulated site's plant

S = 1_000_000_000
FAULT_BITS = _core.FAULTS
TAPER_FROM_SOC = 0.8           # EVs charge at full power up to 80 %, then taper linearly to 0 at 100 %
BASE_PHASE_SHARE = (0.45, 0.30, 0.25)   # a building's load is never balanced: L1 carries the most
FREE = "free"                  # schedule value: no setpoint, the default profile applies


@dataclass(frozen=True)
class PlantConfig:
    seed: int = 1
    step_s: float = 1.0
    start_hour: float = 0.0
    occupancy: float = 0.6                    # share of ports with an EV at the start
    arrivals_per_port_h: float = 0.05
    dwell_h: tuple[float, float] = (3.0, 14.0)
    capacity_wh: tuple[float, float] = (40_000.0, 100_000.0)
    arrival_soc: tuple[float, float] = (0.15, 0.6)
    target_soc: tuple[float, float] = (0.8, 1.0)
    ev_max_charge_w: tuple[float, float] = (7_400.0, 22_000.0)
    ev_max_discharge_w: tuple[float, float] = (5_000.0, 11_000.0)
    min_soc: float = 0.2
    v2g_share: float = 0.6
    base_load_w: tuple[float, float] = (15_000.0, 60_000.0)   # night .. midday
    setpoint_schedule: tuple = ((0.0, FREE), (1.0, 120_000.0), (5.0, FREE),
                                (17.0, -60_000.0), (20.0, FREE))
    setpoint_refresh_s: float = 10.0
    setpoint_ahead_s: float = 0.0             # the DMS announces each scheduled setpoint this long ahead
    dms_upstream: str = "dms"                 # the [upstream.NAME] whose heartbeat the simulated DMS sends
    dms_outages: tuple = ()                   # ((hour, seconds), ...): heartbeats stop
    frequency_hz: float = 50.0
    frequency_events: tuple = ((9.0, -0.3, 60.0),)   # ((hour, deviation Hz, seconds), ...)
    ambient_c: tuple[float, float] = (5.0, 20.0)
    heatsink_faults: tuple = ()               # (("evse07", hour, seconds), ...): a fan fails, +35 C
    contactor_welds: tuple = ()               # (("evse03.1", hour), ...): the contactor stays closed
    plc_noise: tuple = ()                     # (("evse05.2", hour, seconds), ...): 12 % PLC packet loss
    ocpp_stations: bool = False               # `run`: simulated stations connect to [ocpp] (sim/peers/ocpp.py)


def check_config(cf, site: Site) -> PlantConfig:
    """The [sim] section, checked with the config accessors (called by config.parse)."""
    sec = cf.section("sim")
    d = PlantConfig()
    pair = lambda name: sec.get_pair(name, getattr(d, name))   # noqa: E731
    cfg = PlantConfig(
        seed=sec.get_int("seed", d.seed, minval=0),
        step_s=sec.get_float("step_s", d.step_s, above=0, maxval=60, unit="s"),
        start_hour=sec.get_float("start_hour", d.start_hour, minval=0, maxval=24, unit="h"),
        occupancy=sec.get_float("occupancy", d.occupancy, minval=0, maxval=1),
        arrivals_per_port_h=sec.get_float("arrivals_per_port_h", d.arrivals_per_port_h, minval=0, maxval=10),
        dwell_h=pair("dwell_h"), capacity_wh=pair("capacity_wh"), arrival_soc=pair("arrival_soc"),
        target_soc=pair("target_soc"), ev_max_charge_w=pair("ev_max_charge_w"),
        ev_max_discharge_w=pair("ev_max_discharge_w"),
        min_soc=sec.get_float("min_soc", d.min_soc, minval=0, maxval=1),
        v2g_share=sec.get_float("v2g_share", d.v2g_share, minval=0, maxval=1),
        base_load_w=pair("base_load_w"),
        setpoint_schedule=_schedule(sec, "setpoint_schedule", d.setpoint_schedule),
        setpoint_refresh_s=sec.get_float("setpoint_refresh_s", d.setpoint_refresh_s, above=0, maxval=3600, unit="s"),
        setpoint_ahead_s=sec.get_float("setpoint_ahead_s", d.setpoint_ahead_s, minval=0, maxval=86400, unit="s"),
        dms_upstream=sec.get_str("dms_upstream", d.dms_upstream),
        dms_outages=_rows(sec, "dms_outages", d.dms_outages, 2),
        frequency_hz=sec.get_float("frequency_hz", d.frequency_hz, minval=45, maxval=65, unit="Hz"),
        frequency_events=_rows(sec, "frequency_events", d.frequency_events, 3),
        ambient_c=pair("ambient_c"),
        heatsink_faults=_events(sec, "heatsink_faults", 2, {n.id for n in site.nodes if n.kind == "evse"}),
        contactor_welds=_events(sec, "contactor_welds", 1, {p.id for p in site.ports}),
        plc_noise=_events(sec, "plc_noise", 2, {p.id for p in site.ports}),
        ocpp_stations=sec.get_bool("ocpp_stations", d.ocpp_stations),
    )
    if cfg.ocpp_stations and "ocpp" not in cf.data:
        sec.problem("ocpp_stations", "simulated OCPP stations connect to the [ocpp] server; this config has none")
    for name in ("arrival_soc", "target_soc"):
        lo, hi = getattr(cfg, name)
        if lo < 0 or hi > 1:
            sec.problem(name, f"expected SoC values from 0 to 1, found [{lo:g}, {hi:g}]")
    if cfg.dwell_h[0] <= 0 or cfg.capacity_wh[0] <= 0:
        sec.problem("dwell_h" if cfg.dwell_h[0] <= 0 else "capacity_wh", "expected positive values")
    return cfg


def _rows(sec, option, default, width):
    raw, given = sec._get(option, default)
    if not given:
        return default
    ok = isinstance(raw, list) and all(
        isinstance(r, list) and len(r) == width and all(map(is_number, r))
        for r in raw)
    if not ok:
        sec.problem(option, f"expected a list of [{width} numbers] rows, found {_show(raw)}")
        return default
    return tuple(tuple(float(v) for v in r) for r in raw)


def _events(sec, option, numbers, known):
    """[[id, number, ...], ...] with ids from known."""
    raw, given = sec._get(option, ())
    if not given:
        return ()
    ok = isinstance(raw, list) and all(
        isinstance(r, list) and len(r) == numbers + 1 and isinstance(r[0], str) and
        all(map(is_number, r[1:])) for r in raw)
    if not ok:
        sec.problem(option, f"expected [[id, {numbers} number(s)], ...], found {_show(raw)}")
        return ()
    unknown = sorted({r[0] for r in raw} - known)
    if unknown:
        sec.problem(option, f"unknown id(s) {', '.join(unknown)}")
    return tuple((r[0], *map(float, r[1:])) for r in raw)


def _schedule(sec, option, default):
    raw, given = sec._get(option, default)
    if not given:
        return default
    ok = isinstance(raw, list) and all(
        isinstance(r, list) and len(r) == 2 and isinstance(r[0], (int, float)) and 0 <= r[0] < 24 and
        (r[1] == FREE or (isinstance(r[1], (int, float)) and not isinstance(r[1], bool) and abs(r[1]) <= 1e9))
        for r in raw)
    if not ok or [r[0] for r in raw] != sorted(r[0] for r in raw):
        sec.problem(option, f'expected [[hour 0..24, W or "free"], ...] sorted by hour, found {_show(raw)}')
        return default
    return tuple((float(h), v if v == FREE else float(v)) for h, v in raw)


@dataclass
class Books:
    """What the plant measured of the controller's work."""
    energy_charged_wh: float = 0.0
    energy_discharged_wh: float = 0.0
    tracking_abs_wh: float = 0.0              # |fleet − setpoint| integrated while a setpoint is active
    tracked_s: float = 0.0
    max_tracking_error_w: float = 0.0
    departures: int = 0
    unmet_departures: int = 0
    unmet_energy_wh: float = 0.0
    arrivals: int = 0
    limit_violations: int = 0
    worst_violation_w: float = 0.0
    violations_by_node: dict = field(default_factory=dict)


PEER_POLL_S = 0.01               # how often the drivers let the fast far sides (GPIO contactors, PLC modems) act


class Plant:
    """Vectorised EV fleet, base load, DMS and grid for one site."""

    pilot_vehicles = True        # vehicles arrive at direct-wired pilots too (not at commissioning)

    def __init__(self, site: Site, ctrl: Controller, cfg: PlantConfig, t0_ns: int, devices=None):
        self.site, self.ctrl, self.cfg = site, ctrl, cfg
        self.can_peer = devices.can_peer if devices else None      # far sides of sim device backends
        self.i2c_peer = devices.i2c_peer if devices else None
        self.gpio_peer = devices.gpio_peer if devices else None
        self.spi_peer = devices.spi_peer if devices else None
        self.pwm_peer = devices.pwm_peer if devices else None
        self.plc_peer = devices.plc_peer if devices else None      # modems the loop probes itself
        self.rng = np.random.default_rng(cfg.seed)
        self.t0_ns = t0_ns
        n = len(site.ports)
        self.n = n
        self.port_charge = np.array([p.rating_charge_w for p in site.ports])
        self.port_discharge = np.array([p.rating_discharge_w for p in site.ports])
        self.occupied = np.zeros(n, bool)
        self.soc = np.zeros(n)
        self.cap = np.ones(n)
        self.target = np.zeros(n)
        self.departure_ns = np.zeros(n, np.int64)
        self.ev_charge = np.zeros(n)
        self.ev_discharge = np.zeros(n)
        self.v2g = np.zeros(n, bool)
        self.power = np.zeros(n)
        self.books = Books()
        self.base_w = 0.0
        # independent check of every node limit: which ports are below each node
        index = {nd.id: i for i, nd in enumerate(site.nodes)}
        self.below = np.zeros((len(site.nodes), n), bool)
        for j, p in enumerate(site.ports):
            node = p.evse
            while node is not None:
                self.below[index[node], j] = True
                node = site.node(node).parent
        self.imp = np.array([nd.import_limit_w for nd in site.nodes])
        self.exp = np.array([nd.export_limit_w for nd in site.nodes])
        self.root = next(i for i, nd in enumerate(site.nodes) if nd.parent is None)
        self.meter = next((node_source(nd.id, "power_w") for nd in site.nodes if nd.parent is None and nd.meter_max_age_s), None)
        # a meter with phases: the building's load unbalanced (BASE_PHASE_SHARE), each port's power
        # spread over the phases its EVSE is wired to
        root = site.nodes[self.root]
        self.phase_meter = [node_source(root.id, f"power_l{k}_w") for k in (1, 2, 3)] \
            if root.meter_max_age_s and root.meter_phases else []
        mask = np.array([[PHASES[site.node(p.evse).phases] >> k & 1 for k in range(3)] for p in site.ports], float)
        self.phase_share = mask / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        self.port_amps = self.phase_share / np.array([site.node(p.evse).voltage_v for p in site.ports])[:, None]
        self.phase_limited = [(i, nd) for i, nd in enumerate(site.nodes) if math.isfinite(nd.phase_limit_a)]
        self.heartbeat = upstream_heartbeat(cfg.dms_upstream)
        if self.heartbeat not in ctrl.sources:
            self.heartbeat = None
        self._fields = ("connected", "soc", "capacity_wh", "energy_request_wh", "departure_in_s",
                        "max_charge_w", "max_discharge_w", "min_soc", "v2g", "power_w")
        # ports whose far side is a real peer (a Modbus charger, an OCPP station) are that peer's to
        # report, not the plant's; a direct-wired pilot's vehicle shows itself on the CP alone
        self.mine = np.array([site.node(p.evse).link not in ("modbus", "ocpp", "pwm") for p in site.ports], bool)
        self._idx = np.array([[ctrl.source_index(port_source(p.id, f)) for p in site.ports] for f in self._fields],
                             np.int32)[:, self.mine]
        self._last_setpoint = None
        self._next_refresh_ns = t0_ns
        self._cmd_seq = 0
        self._announced: set[int] = set()    # starts (s) of setpoints sent ahead
        # far side of the sensors: EVSE heat sinks, contactors, PLC modems, transformer ambient
        port_index = {p.id: j for j, p in enumerate(site.ports)}
        self.hot_evses = [(nd, self.below[index[nd.id]], sum(p.rating_charge_w for p in site.ports if p.evse == nd.id))
                          for nd in site.nodes if nd.kind == "evse" and nd.heatsink_c]
        self.heatsink = np.zeros(len(self.hot_evses))
        # contactors wired to GPIO lines are the GPIO far side's: it moves them and reports them
        wired = set(self.gpio_peer.contactors) if self.gpio_peer else set()
        self.gpio_ports = [(j, p.id) for j, p in enumerate(site.ports) if p.id in wired]
        self.contactor = [(j, ctrl.source_index(port_source(p.id, "contactor"))) for j, p in enumerate(site.ports)
                          if port_source(p.id, "contactor") in ctrl.sources and p.id not in wired]
        modems = self.plc_peer.modems if self.plc_peer else {}
        self.plc = [(j, ctrl.source_index(port_source(p.id, "plc_loss"))) for j, p in enumerate(site.ports)
                    if port_source(p.id, "plc_loss") in ctrl.sources and p.id not in modems]
        self.plc_modems = [(j, modems[p.id]) for j, p in enumerate(site.ports) if p.id in modems]
        self.ambient_sources = [node_source(nd.id, "ambient_c") for nd in site.nodes
                                if node_source(nd.id, "ambient_c") in ctrl.sources]
        # transformers with a top-oil sensor: their oil follows load (IEC 60076-7, first order)
        self.oil = [(nd, self.below[index[nd.id]], node_source(nd.id, "top_oil_c")) for nd in site.nodes
                    if nd.thermal and node_source(nd.id, "top_oil_c") in ctrl.sources]
        self.top_oil = np.zeros(len(self.oil))
        # EVSEs with link = "can": their power modules take the loop's J1939 setpoint frames
        self.can_ports = []
        for nd in site.nodes:
            if nd.link == "can" and self.can_peer:
                js = [j for j, p in enumerate(site.ports) if p.evse == nd.id]
                module = self.can_peer.module(nd.can_address, len(js))
                self.can_ports += [(j, module, k) for k, j in enumerate(js)]
        on_can = {j for j, _, _ in self.can_ports}
        self.mailbox_ports = [p.id for j, p in enumerate(site.ports) if j not in on_can]
        self.welded = {port_index[pid]: h for pid, h in cfg.contactor_welds}
        self.closed = np.zeros(n, bool)
        self.faults_seen: dict[str, set] = {}
        # a direct-wired pilot's vehicle shows itself on the CP alone: it plugs into the SPI ADC's
        # pilot (state B), closes S2 (C) while the PWM offers a current and draws what the duty the
        # pwmchip drives offers (the pilot map), within its own limits
        self.pilots = [(j, port_source(p.id, "cp_v"), p.id, site.node(p.evse).watts_per_amp)
                       for j, p in enumerate(site.ports)
                       if self.pilot_vehicles and site.node(p.evse).link == "pwm" and self.spi_peer and self.pwm_peer
                       and port_source(p.id, "cp_v") in self.spi_peer.by_source and p.id in self.pwm_peer.configs]
        self.hosts = self.mine.copy()             # ports where the plant's vehicles arrive
        self.hosts[[j for j, *_ in self.pilots]] = True
        occupied = (self.rng.random(n) < cfg.occupancy) & self.hosts
        for j in np.flatnonzero(occupied):
            self._arrive(j, t0_ns)

    # ------------------------------------------------------------ the world

    def hour(self, t_ns: int) -> float:
        return (self.cfg.start_hour + (t_ns - self.t0_ns) / 3.6e12) % 24.0

    def base_load(self, t_ns: int) -> float:
        lo, hi = self.cfg.base_load_w
        h = self.hour(t_ns)
        return lo + (hi - lo) * max(0.0, math.sin(math.pi * (h - 6.0) / 14.0)) if 6 <= h <= 20 else lo

    def frequency(self, t_ns: int) -> float:
        f = self.cfg.frequency_hz + 0.01 * math.sin(t_ns / S / 7.0)
        h = self.hour(t_ns)
        for start, dev, seconds in self.cfg.frequency_events:
            if start <= h < start + seconds / 3600:
                f += dev
        return f

    def scheduled_setpoint(self, t_ns: int):
        h = self.hour(t_ns)
        value = self.cfg.setpoint_schedule[-1][1] if self.cfg.setpoint_schedule else FREE
        for start, v in self.cfg.setpoint_schedule:
            if start <= h:
                value = v
        return value

    def dms_up(self, t_ns: int) -> bool:
        h = self.hour(t_ns)
        return not any(start <= h < start + seconds / 3600 for start, seconds in self.cfg.dms_outages)

    def ev_max_charge(self) -> np.ndarray:
        taper = np.clip((1.0 - self.soc) / (1.0 - TAPER_FROM_SOC), 0.0, 1.0)
        return np.minimum(self.ev_charge, self.port_charge) * taper

    def ev_max_discharge(self) -> np.ndarray:
        room = np.maximum(self.soc - self.cfg.min_soc, 0.0) > 1e-6
        return np.where(self.v2g & room, np.minimum(self.ev_discharge, self.port_discharge), 0.0)

    def _arrive(self, j: int, t_ns: int) -> None:
        c, r = self.cfg, self.rng
        self.occupied[j] = True
        self.cap[j] = r.uniform(*c.capacity_wh)
        self.soc[j] = r.uniform(*c.arrival_soc)
        self.target[j] = max(r.uniform(*c.target_soc), self.soc[j])
        self.departure_ns[j] = t_ns + int(r.uniform(*c.dwell_h) * 3.6e12)
        self.ev_charge[j] = r.uniform(*c.ev_max_charge_w)
        self.ev_discharge[j] = r.uniform(*c.ev_max_discharge_w)
        self.v2g[j] = r.random() < c.v2g_share
        self.power[j] = 0.0
        self.books.arrivals += 1
        for k, src, pid, _ in self.pilots:
            if k == j:
                self.v2g[j] = False                # a pilot offers a charging current only
                self.spi_peer.plug(src, "B", lambda pid=pid: self.pwm_peer.duty(pid))

    # ------------------------------------------------------------ one step

    def advance(self, t_ns: int, dt_s: float) -> None:
        """Apply the controller's published outputs over [t, t + dt]."""
        snap = self.ctrl.snapshot()
        out = self.ctrl.outputs(take=self.mailbox_ports)       # what a charger would be told
        valid = out["valid_until_ns"] >= t_ns                  # dead-man: stale outputs mean 0 W
        self.closed = out["contactor_closed"].astype(bool)
        setpoint = out["setpoint_w"]
        if self.can_ports:                                     # what the power modules were sent
            self.can_peer.poll(t_ns)
            for j, module, k in self.can_ports:
                setpoint[j], self.closed[j] = module.output(k, t_ns)
                valid[j] = True                                # the module applies its own timeout
        for j, hour in self.welded.items():
            if self.hour(t_ns) >= hour:
                self.closed[j] = True                          # welded: closed whatever the command
                if self.gpio_peer and self.site.ports[j].id in self.gpio_peer.contactors:
                    self.gpio_peer.contactors[self.site.ports[j].id].weld()
        if self.gpio_ports:                                    # what the GPIO-wired contactors did
            self.poll_peers(t_ns)
            for j, pid in self.gpio_ports:
                self.closed[j] = self.gpio_peer.closed(pid)
        for j, _, pid, wpa in self.pilots:                    # what the PWM offers the vehicle
            duty = self.pwm_peer.duty(pid)
            setpoint[j] = pilot_current(duty) * wpa if duty is not None and 0.0 < duty < 100.0 else 0.0
            valid[j] = True                                    # the pilot is steady: no dead-man
        want = np.where(valid & self.occupied & (self.closed | ~self._has_contactor()), setpoint, 0.0)
        p = np.clip(want, -self.ev_max_discharge(), self.ev_max_charge())
        # never beyond full or below the minimum within the step
        room_up = (1.0 - self.soc) * self.cap * 3600.0 / dt_s
        room_down = np.maximum(self.soc - self.cfg.min_soc, 0.0) * self.cap * 3600.0 / dt_s
        p = np.clip(p, -room_down, room_up)
        self.power = p
        self.soc = np.clip(self.soc + p * dt_s / 3600.0 / self.cap, 0.0, 1.0)
        b = self.books
        b.energy_charged_wh += float(p[p > 0].sum()) * dt_s / 3600.0
        b.energy_discharged_wh += float(-p[p < 0].sum()) * dt_s / 3600.0
        setpoint = snap.site["setpoint_w"]
        if not math.isnan(setpoint):
            err = abs(float(p.sum()) - setpoint)
            b.tracking_abs_wh += err * dt_s / 3600.0
            b.tracked_s += dt_s
            b.max_tracking_error_w = max(b.max_tracking_error_w, err)
        flows = self.below @ p
        flows[self.root] += self.base_w
        imp = self.imp.copy()
        exp = self.exp.copy()
        imp[self.root] = min(imp[self.root], snap.site["import_limit_w"])
        exp[self.root] = min(exp[self.root], snap.site["export_limit_w"])
        over = np.maximum(flows - imp, -exp - flows)
        for name, bit in FAULT_BITS.items():
            for j in np.flatnonzero(snap.ports["faults"] & bit):
                self.faults_seen.setdefault(name, set()).add(self.site.ports[j].id)
        violations = [(self.site.nodes[i].id, float(over[i])) for i in np.flatnonzero(over > 1.0)]
        for i, nd in self.phase_limited:                       # per phase, in A
            amps = self.below[i] @ (p[:, None] * self.port_amps)
            if i == self.root:
                amps = amps + self.base_w * np.array(BASE_PHASE_SHARE) / nd.voltage_v
            violations += [(f"{nd.id}/L{k + 1}", (abs(a) - nd.phase_limit_a) * nd.voltage_v)
                           for k, a in enumerate(amps) if abs(a) > nd.phase_limit_a + 0.01]
        for nid, w in violations:
            b.limit_violations += 1
            b.worst_violation_w = max(b.worst_violation_w, w)
            b.violations_by_node[nid] = b.violations_by_node.get(nid, 0) + 1
        self.last_snapshot = snap

    def events(self, t_ns: int) -> None:
        """Departures, arrivals and the DMS at time t."""
        b = self.books
        leaving = self.occupied & (self.departure_ns <= t_ns)
        for j in np.flatnonzero(leaving):
            b.departures += 1
            short = (self.target[j] - self.soc[j]) * self.cap[j]
            if short > 0.01 * self.cap[j]:
                b.unmet_departures += 1
                b.unmet_energy_wh += short
        self.occupied &= ~leaving
        self.power[leaving] = 0.0
        for j, src, _, _ in self.pilots:
            if leaving[j]:
                self.spi_peer.plug(src, None)
        free = np.flatnonzero(~self.occupied & self.hosts)
        rate = self.cfg.arrivals_per_port_h * self.cfg.step_s / 3600.0
        for j in free[self.rng.random(free.size) < rate]:
            self._arrive(j, t_ns)
        self._dms(t_ns)

    def _dms(self, t_ns: int) -> None:
        if not self.dms_up(t_ns):
            return
        self._announce(t_ns)
        value = self.scheduled_setpoint(t_ns)
        if value != self._last_setpoint or t_ns >= self._next_refresh_ns:
            self._cmd_seq += 1
            cid = f"sim-dms-{self._cmd_seq}"
            expiry = t_ns + int(3 * self.cfg.setpoint_refresh_s * S)
            if value == FREE:
                cmd = {"kind": "cancel", "id": cid, "of": "setpoint", "expires_ns": expiry}
            else:
                cmd = {"kind": "setpoint", "id": cid, "value_w": value, "expires_ns": expiry}
            if value != FREE or self._last_setpoint not in (None, FREE):
                verdict = self.ctrl.submit(cmd)
                if not verdict and verdict.code != "ERR_CMD_QUEUE_FULL":
                    raise RuntimeError(f"simulated DMS command rejected: {verdict.reason}")
            self._last_setpoint = value
            self._next_refresh_ns = t_ns + int(self.cfg.setpoint_refresh_s * S)

    def _announce(self, t_ns: int) -> None:
        """Scheduled setpoints starting within setpoint_ahead_s, sent once each as commands with
        a start, as a DMS with a day-ahead plan does (stopping a setpoint, FREE, is a cancel when
        it applies: a cancel has no start)."""
        ahead_ns = int(self.cfg.setpoint_ahead_s * S)
        if not ahead_ns:
            return
        h = self.hour(t_ns)
        for start, value in self.cfg.setpoint_schedule:
            t_start = t_ns + int(((start - h) % 24.0) * 3.6e12)
            if value == FREE or not t_ns < t_start <= t_ns + ahead_ns or t_start // S in self._announced:
                continue
            self._announced.add(t_start // S)
            self._cmd_seq += 1
            cmd = {"kind": "setpoint", "id": f"sim-dms-{self._cmd_seq}", "value_w": value, "starts_ns": t_start,
                   "expires_ns": t_start + int(3 * self.cfg.setpoint_refresh_s * S)}
            verdict = self.ctrl.submit(cmd)
            if not verdict and verdict.code not in ("ERR_CMD_QUEUE_FULL", "ERR_CMD_SCHEDULE_FULL"):
                raise RuntimeError(f"simulated DMS command rejected: {verdict.reason}")

    def publish(self, t_ns: int) -> None:
        """Everything the site's devices and services report, stamped t."""
        occ = self.occupied
        request = np.where(occ, np.maximum(self.target - self.soc, 0.0) * self.cap, 0.0)
        values = np.stack([
            occ.astype(float), np.where(occ, self.soc, 0.0), self.cap, request,
            np.where(occ, (self.departure_ns - t_ns) / S, 0.0),
            np.where(occ, self.ev_max_charge(), 0.0), np.where(occ, self.ev_max_discharge(), 0.0),
            np.full(self.n, self.cfg.min_soc), self.v2g.astype(float), self.power])
        values[4] = np.clip(values[4], -1e7, 1e8)
        values = values[:, self.mine]
        accepted = self.ctrl.measure_many(self._idx.ravel(), values.ravel(), t_ns)
        if accepted != values.size:
            raise RuntimeError(f"the controller rejected {values.size - accepted} plant measurements")
        self.base_w = self.base_load(t_ns)
        if self.meter:
            self.ctrl.measure(self.meter, self.base_w + float(self.power.sum()), t_ns)
        for k, source in enumerate(self.phase_meter):
            self.ctrl.measure(source, self.base_w * BASE_PHASE_SHARE[k] + float(self.power @ self.phase_share[:, k]), t_ns)
        self.ctrl.measure("grid/frequency_hz", self.frequency(t_ns), t_ns)
        if self.heartbeat and self.dms_up(t_ns):
            self.ctrl.measure(self.heartbeat, 1.0, t_ns)
        self._publish_sensors(t_ns)

    @property
    def fast_peers(self) -> bool:
        return bool(self.gpio_ports or self.plc_modems or self.pwm_peer)      # pilots: their CPs go stale fast

    def poll_peers(self, t_ns: int) -> None:
        """Far sides faster than a plant step: GPIO-wired contactors follow their coils within
        their settle time, PLC modems answer the loop's probes within a probe interval. The
        drivers call this every PEER_POLL_S between steps."""
        if self.gpio_ports:
            self.gpio_peer.poll(t_ns)
        if self.plc_modems:
            self.plc_peer.poll(t_ns)
        for j, src, pid, _ in self.pilots:                    # S2: closed while offered a current and not full
            if self.occupied[j]:
                duty = self.pwm_peer.duty(pid)
                wants = self.soc[j] < 0.999 and duty is not None and 0.0 < duty < 100.0
                self.spi_peer.plug(src, "C" if wants else "B", lambda pid=pid: self.pwm_peer.duty(pid))

    def by_hand(self) -> None:
        """Virtual time: the driver serves the far sides itself (poll_fast), no thread does."""
        if self.pwm_peer:
            self.pwm_peer.by_hand()

    def step_virtual(self, t_ns: int, cycles: int) -> int:
        """One plant step from t_ns in virtual time: the loop's cycles, with the fast far sides
        served every PEER_POLL_S between them, then the plant's own step; the time reached."""
        period = self.site.period_ns
        chunk = max(1, round(PEER_POLL_S * S) // period) if self.fast_peers else cycles
        for k in range(0, cycles, chunk):
            self.ctrl.run_steps(min(chunk, cycles - k))
            if chunk < cycles:
                self.poll_fast(self.ctrl.now_ns())
        self.advance(t_ns, cycles * period / S)
        t_ns += cycles * period
        self.events(t_ns)
        self.publish(t_ns)
        self.ctrl.poll_io()
        return t_ns

    def poll_fast(self, t_ns: int) -> None:
        """Virtual time, every PEER_POLL_S between steps: the fast far sides, the I/O jobs due by
        now (a pilot's CP is sampled there) and the pwmchips answering what they were written."""
        self.poll_peers(t_ns)
        self.ctrl.poll_io()
        if self.pwm_peer:
            self.pwm_peer.serve()

    def _has_contactor(self) -> np.ndarray:
        has = np.zeros(self.n, bool)
        has[[j for j, _ in self.contactor] + [j for j, _ in self.gpio_ports]] = True
        return has

    def _active(self, start_h: float, seconds: float, t_ns: int) -> bool:
        return start_h <= self.hour(t_ns) < start_h + seconds / 3600

    def _publish_sensors(self, t_ns: int) -> None:
        lo, hi = self.cfg.ambient_c
        ambient = lo + (hi - lo) * 0.5 * (1 - math.cos(2 * math.pi * (self.hour(t_ns) - 4) / 24))
        for src in self.ambient_sources:
            if self.i2c_peer and src in self.i2c_peer.by_source:
                self.i2c_peer.set_value(src, ambient)        # a TMP117 the controller reads
            else:
                self.ctrl.measure(src, ambient, t_ns)
        dt = self.cfg.step_s
        for k, (nd, ports, src) in enumerate(self.oil):
            th = nd.thermal
            load = abs(self.base_w + float(self.power[ports].sum())) / th.rated_w
            target = ambient + th.top_oil_rise_k * ((1 + th.loss_ratio * load ** 2) / (1 + th.loss_ratio)) ** th.oil_exponent
            self.top_oil[k] = target if self.top_oil[k] == 0.0 else \
                self.top_oil[k] + (target - self.top_oil[k]) * (1 - math.exp(-dt / th.tau_oil_s))
            if self.spi_peer and src in self.spi_peer.by_source:
                self.spi_peer.set_value(src, self.top_oil[k])          # a 4-20 mA transmitter
            else:
                self.ctrl.measure(src, self.top_oil[k], t_ns)
        for k, (evse, ports, rating) in enumerate(self.hot_evses):
            load = float(np.abs(self.power[ports]).sum()) / rating if rating else 0.0
            extra = sum(35.0 for e, h, sec in self.cfg.heatsink_faults if e == evse.id and self._active(h, sec, t_ns))
            target = ambient + 10.0 + 35.0 * load + extra
            if self.heatsink[k] == 0.0:
                self.heatsink[k] = target
            self.heatsink[k] += (target - self.heatsink[k]) * (1 - math.exp(-dt / 120.0))
            if self.can_peer and evse.can_address is not None:   # a J1939 frame the loop decodes
                module = min(self.heatsink[k] - 5.0, 209.0)
                self.can_peer.send("EVSE_Thermal", evse.can_address, {
                    "HeatSinkTemp": self.heatsink[k], "Module1Temp": module, "Module2Temp": module,
                    "InletAirTemp": ambient, "CoolantPressure": 150.0})
            elif self.spi_peer and node_source(evse.id, "heatsink_c") in self.spi_peer.by_source:
                self.spi_peer.set_value(node_source(evse.id, "heatsink_c"), self.heatsink[k])   # a 0-10 V input
            else:
                self.ctrl.measure(node_source(evse.id, "heatsink_c"), self.heatsink[k], t_ns)
        if self.contactor:
            ports, idx = zip(*self.contactor)
            self.ctrl.measure_many(np.array(idx), self.closed[list(ports)].astype(float), t_ns)
        noisy = {pid for pid, h, sec in self.cfg.plc_noise if self._active(h, sec, t_ns)}
        plc = [(idx, 0.12 if self.site.ports[j].id in noisy else 0.004) for j, idx in self.plc if self.occupied[j]]
        for j, modem in self.plc_modems:                       # the loop measures these ports' loss itself
            modem.loss = 0.12 if self.site.ports[j].id in noisy else 0.0
            modem.link_up = bool(self.occupied[j])
        if plc:
            idx, loss = zip(*plc)
            self.ctrl.measure_many(np.array(idx), np.array(loss), t_ns)

    # ------------------------------------------------------------ reporting

    def sample(self, t_ns: int) -> dict:
        snap = self.last_snapshot
        occ = self.occupied
        fleet = float(self.power.sum())
        return {
            "t_s": (t_ns - self.t0_ns) / S, "hour": self.hour(t_ns),
            "setpoint_w": snap.site["setpoint_w"], "fleet_w": fleet, "site_w": fleet + self.base_w,
            "base_load_w": self.base_w,
            "import_limit_w": min(self.imp[self.root], snap.site["import_limit_w"]),
            "export_limit_w": min(self.exp[self.root], snap.site["export_limit_w"]),
            "evs": int(occ.sum()),
            "soc_mean": float(self.soc[occ].mean()) if occ.any() else math.nan,
            "soc_min": float(self.soc[occ].min()) if occ.any() else math.nan,
            "soc_max": float(self.soc[occ].max()) if occ.any() else math.nan,
            "charging": int((self.power > 0).sum()), "discharging": int((self.power < 0).sum()),
            "binding": snap.site["binding"], "safe_state": "+".join(snap.site["safe_state"]),
            "frequency_hz": self.frequency(t_ns),
        }

    def summary(self) -> dict:
        b = self.books
        return {
            "energy_charged_kwh": b.energy_charged_wh / 1e3,
            "energy_discharged_kwh": b.energy_discharged_wh / 1e3,
            "tracking_error_kwh": b.tracking_abs_wh / 1e3,
            "tracking_error_mean_w": b.tracking_abs_wh * 3600.0 / b.tracked_s if b.tracked_s else 0.0,
            "tracking_error_max_w": b.max_tracking_error_w,
            "setpoint_active_h": b.tracked_s / 3600.0,
            "arrivals": b.arrivals, "departures": b.departures,
            "unmet_departures": b.unmet_departures, "unmet_energy_kwh": b.unmet_energy_wh / 1e3,
            "limit_violations": b.limit_violations, "worst_violation_w": b.worst_violation_w,
            "violations_by_node": b.violations_by_node,
            "ports_with_faults": {k: sorted(v) for k, v in self.faults_seen.items()},
        }

