"""The site model: the hierarchy grid connection > transformer > groups > EVSEs > ports.

A Site is plain, validated data. `v2g_rt.config` builds one from a TOML file;
tests and benchmarks build them with `depot()`. Limits are magnitudes in W.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ._core import CAPACITY, PORT_SOURCES

LINK_KINDS = ("sim", "can", "ocpp", "modbus", "pwm")


PHASES = {"L1": 1, "L2": 2, "L3": 4, "L1L2L3": 7}
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")   # part of the fault journal's file name
GROUP_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")           # a POSIX group name, as useradd accepts it
# A transformer's thermal rating. The IEC 60076-7 model scales the load by 1/rated_w, so a
# tiny rating (1e-300) overflows the hot spot to inf. The smallest distribution transformers
# are 5-10 kVA (single-phase pole mount) and one 11 kW port exceeds 1 kW, so below 1 kW the
# value is a unit mistake (kW written as W); above 1 GW (the largest grid import_limit_w) too.
RATED_W = (1e3, 1e9)
ISO_SOURCES = ("plc_loss",)          # port sources present only with iso15118 ...
GPIO_SOURCES = ("contactor",)        # ... or contactor_feedback
CP_SOURCES = ("cp_v", "cp_diode")    # ... or link = "pwm": the control pilot, sampled by an SPI ADC


@dataclass(frozen=True)
class Thermal:
    """A transformer's hot-spot model (IEC 60076-7 first-order; defaults: ONAN distribution transformer)."""
    rated_w: float
    top_oil_rise_k: float = 55.0
    hot_spot_gradient_k: float = 29.9      # H * gr = 1.3 * 23 K
    loss_ratio: float = 6.0
    oil_exponent: float = 0.8
    winding_exponent: float = 1.6
    tau_oil_s: float = 10800.0
    tau_winding_s: float = 420.0
    derate_start_c: float = 98.0           # hot spot: derate from here ...
    limit_c: float = 120.0                 # ... to zero here
    ambient_max_age_s: float | None = 60.0   # None: no ambient sensor
    top_oil_max_age_s: float | None = None   # a top-oil sensor replaces the modelled top oil


@dataclass(frozen=True)
class Node:
    id: str
    kind: str
    parent: str | None
    import_limit_w: float
    export_limit_w: float
    meter_max_age_s: float | None = None    # None: this node has no power meter
    base_load_w: tuple[float, float] = (0.0, 0.0)  # non-EV load range assumed while the meter is stale
    link: str | None = None                 # EVSEs: how setpoints reach it
    phase_limit_a: float = math.inf         # per-phase current limit of the flow below
    phases: str = "L1L2L3"                  # EVSEs: the site phases its ports draw from
    voltage_v: float = 230.0                # phase-to-neutral voltage
    meter_phases: bool = False              # its meter also gives each phase's power (node/ID/power_lK_w)
    heatsink_c: tuple[float, float] | None = None   # EVSEs: derate start and trip (has a sensor)
    heatsink_max_age_s: float = 5.0
    contactor_feedback: bool = False        # EVSEs: ports report contactor state (GPIO)
    iso15118: bool = False                  # EVSEs: ports report PLC packet loss
    can_address: int | None = None         # EVSEs: J1939 source address of its thermal frames
    can_signal: str = "EVSE_Thermal.HeatSinkTemp"   # DBC message.signal feeding heatsink_c
    thermal: Thermal | None = None          # transformers: hot-spot model
    pilot: bool = False                     # EVSEs: an IEC 61851 control pilot sets its ports' current

    @property
    def watts_per_amp(self) -> float:
        """EVSEs: W per A of a port's current, on each phase it draws from."""
        return self.voltage_v * bin(PHASES[self.phases]).count("1")


@dataclass(frozen=True)
class Port:
    id: str
    evse: str
    rating_charge_w: float       # the port's own rating (the EV's limit is port/ID/max_charge_w)
    rating_discharge_w: float


@dataclass(frozen=True)
class RealTime:
    priority: int = 80          # SCHED_FIFO priority of the loop; 0 = normal scheduling
    cpu: int | None = None      # pin the loop to this CPU
    lock_memory: bool = True
    cpu_dma_latency_us: int | None = 0   # PM QoS request held while running (no deep C-states); None: leave it
    watchdog_device: str = ""            # hardware watchdog fed while the loop is healthy ("" = none)
    watchdog_timeout_s: int = 10


def option(default, accessor="get_float", **limits):
    """A control option, declared once: its default, the config accessor that reads it and the
    range that accessor enforces (minval/maxval/above, unit, allow_inf). The config loader, the
    controller and the native core all take the option list from the dataclass's fields."""
    return field(default=default, metadata={"accessor": accessor, "limits": limits})


_S = {"unit": "s"}


@dataclass(frozen=True)
class Control:
    port_ramp_w_per_s: float = option(50_000.0, above=0, unit="W/s", allow_inf=True)
    deadband_w: float = option(0.0, minval=0, maxval=1e5, unit="W")
    # outputs fall back to safe after this without refresh
    output_hold_s: float = option(5.0, above=0, maxval=3600, **_S)
    # default profile: charge within limits, never discharge
    default_fleet_import_w: float = option(math.inf, minval=0, unit="W", allow_inf=True)
    discharge_reserve_s: float = option(1800.0, minval=0, maxval=86400, **_S)
    discharge_taper_s: float = option(900.0, above=0, maxval=86400, **_S)
    urgency_window_s: float = option(300.0, minval=0, maxval=86400, **_S)   # laxity below this is served first
    # an operator's export setpoint the fleet cannot meet within the departure reserve above draws
    # on it (never below min SoC): the grid command before the EVs' departure energy
    setpoint_draws_reserve: bool = option(False, "get_bool")
    overrun_streak_safe: int = option(3, "get_int", minval=1, maxval=10**6)
    safe_exit_s: float = option(60.0, minval=0, maxval=86400, **_S)
    session_max_age_s: float = option(10.0, above=0, maxval=3600, **_S)
    frequency_max_age_s: float = option(1.0, above=0, maxval=3600, **_S)
    site_ramp_w_per_s: float = option(math.inf, above=0, unit="W/s", allow_inf=True)
    plc_loss_limit: float = option(0.05, minval=0, maxval=1)
    contactor_settle_s: float = option(0.2, minval=0, maxval=60, **_S)
    contactor_max_age_s: float = option(1.0, above=0, maxval=60, **_S)
    # at a stop, 0 W goes out at once; each contactor opens once its port's measured power is
    # at or below stop_open_below_w, or stop_timeout_s after the stop (never later)
    stop_timeout_s: float = option(2.0, minval=0, maxval=60, **_S)
    stop_open_below_w: float = option(100.0, minval=0, maxval=1e5, unit="W")
    # closed loop: a port taking less than given for settle_s is capped near what it takes; the
    # cap rises by probe_w_per_s until the port takes less again, or reaches its rating
    settle_s: float = option(10.0, above=0, maxval=3600, **_S)
    probe_w_per_s: float = option(200.0, above=0, unit="W/s", allow_inf=True)
    # the SoC span below full over which a vehicle's CC-CV taper brings its power to 0, until the
    # closed loop has seen one (learn_taper); 0: none until seen
    taper_span: float = option(0.2, minval=0, maxval=1)
    # the duty resolution of the EVSEs' control pilots (pilot = true): their current steps
    pilot_duty_step_pct: float = option(0.1, above=0, maxval=10, unit="%")
    # a PWM pilot's CP voltage (link = "pwm") older than this stops its port (FAULT_PILOT)
    pilot_max_age_s: float = option(0.5, above=0, maxval=60, **_S)


@dataclass(frozen=True)
class Frequency:
    """Frequency response: IEEE 1547 droop, or a piecewise-linear frequency-watt curve."""
    mode: str = "off"                      # off | droop | curve
    nominal_hz: float = 50.0
    deadband_under_hz: float = 0.036
    deadband_over_hz: float = 0.036
    droop_under: float = 0.05
    droop_over: float = 0.05
    rated_w: float = 0.0                   # P of the droop formula
    response_time_s: float = 5.0           # open loop, to 90 % of a step
    curve: tuple = ()                      # ((Hz, W), ...), Hz strictly increasing


@dataclass(frozen=True)
class Upstream:
    """A party above the site (DMS, aggregator, CSMS) whose heartbeat is watched for Safe State."""
    name: str
    timeout_s: float = 30.0


@dataclass(frozen=True)
class Problem:
    section: str
    option: str | None
    message: str
    code: str = "ERR_CONFIG_VALUE"


@dataclass(frozen=True)
class Site:
    name: str
    period_s: float
    nodes: tuple[Node, ...]
    ports: tuple[Port, ...]
    rt: RealTime = RealTime()
    control: Control = Control()
    upstreams: tuple[Upstream, ...] = ()
    frequency: Frequency = Frequency()
    sections: dict = field(default_factory=dict)   # device/service sections, checked by their owners
    source: str = "<built-in>"
    status_socket: str = ""                        # "" = the default in the runtime directory
    operator_group: str = "v2g-operator"           # group given access to the status and control sockets

    @property
    def period_ns(self) -> int:
        return round(self.period_s * 1e9)

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    def ordered_nodes(self) -> list[Node]:
        """Nodes parents-first (breadth first from the grid node), as the native image wants them."""
        children: dict[str | None, list[Node]] = {}
        for n in self.nodes:
            children.setdefault(n.parent, []).append(n)
        out: list[Node] = []
        frontier = children.get(None, [])
        while frontier:
            out.extend(frontier)
            frontier = [c for n in frontier for c in children.get(n.id, [])]
        return out

    def problems(self) -> list[Problem]:
        """Everything structurally wrong with the site (empty when valid)."""
        return check(self)

    def source_kinds(self) -> dict[str, str]:
        """Every measurement source the controller will have, name -> kind (as Controller.sources)."""
        return source_kinds(self)


def port_source(port_id: str, kind: str) -> str:
    """The public name of a port's measurement source: port/ID/KIND (KIND in PORT_SOURCES)."""
    return f"port/{port_id}/{kind}"


def node_source(node_id: str, quantity: str) -> str:
    """node/ID/QUANTITY: power_w (its meter), power_l1_w .. power_l3_w (its meter's phases), heatsink_c,
    ambient_c, top_oil_c."""
    return f"node/{node_id}/{quantity}"


def upstream_heartbeat(name: str) -> str:
    return f"upstream/{name}/heartbeat"


def source_kinds(site: Site) -> dict[str, str]:
    return {name: kind for name, kind, _, _ in source_specs(site)}


def source_specs(site: Site) -> list[tuple[str, str, str, float]]:
    """Every measurement source of the site, once: (name, kind, port or node id, max age in s)."""
    c = site.control
    out = []
    evses = {n.id: n for n in site.nodes}
    for p in site.ports:
        evse = evses.get(p.evse)
        for kind in PORT_SOURCES:
            if evse is None or kind in ISO_SOURCES and not evse.iso15118 or \
                    kind in GPIO_SOURCES and not evse.contactor_feedback or kind in CP_SOURCES and evse.link != "pwm":
                continue
            age = c.contactor_max_age_s if kind in GPIO_SOURCES else \
                c.pilot_max_age_s if kind in CP_SOURCES else c.session_max_age_s
            out.append((port_source(p.id, kind), kind, p.id, age))
    for n in site.nodes:
        if n.meter_max_age_s is not None:
            out.append((node_source(n.id, "power_w"), "node_power_w", n.id, n.meter_max_age_s))
            if n.meter_phases:
                out += [(node_source(n.id, f"power_l{k}_w"), f"node_power_l{k}_w", n.id, n.meter_max_age_s)
                        for k in (1, 2, 3)]
        if n.heatsink_c:
            out.append((node_source(n.id, "heatsink_c"), "heatsink_c", n.id, n.heatsink_max_age_s))
        if n.thermal and n.thermal.ambient_max_age_s:
            out.append((node_source(n.id, "ambient_c"), "ambient_c", n.id, n.thermal.ambient_max_age_s))
        if n.thermal and n.thermal.top_oil_max_age_s:
            out.append((node_source(n.id, "top_oil_c"), "top_oil_c", n.id, n.thermal.top_oil_max_age_s))
    out.append(("grid/frequency_hz", "frequency_hz", "", c.frequency_max_age_s))
    for up in site.upstreams:
        out.append((upstream_heartbeat(up.name), "heartbeat", "", up.timeout_s))
    return out


def _section(n: Node) -> str:
    return f"node.{n.id}"


def check(site: Site) -> list[Problem]:
    out: list[Problem] = []
    topo = "ERR_CONFIG_TOPOLOGY"
    if not 10e-6 <= site.period_s <= 10.0:
        out.append(Problem("site", "period_ms", f"expected 0.01 .. 10000 ms, found {site.period_s * 1e3:g}"))
    ids: dict[str, Node] = {}
    for n in site.nodes:
        if n.id in ids:
            out.append(Problem(_section(n), None, f"duplicate node id {n.id!r}", topo))
        ids[n.id] = n
    roots = [n for n in site.nodes if n.parent is None]
    if len(roots) != 1 or roots[0].kind != "grid":
        found = ", ".join(f"{n.id} ({n.kind})" for n in roots) or "none"
        out.append(Problem("node", "parent", f"expected exactly one node without parent, of kind 'grid'; found {found}", topo))
    for n in site.nodes:
        if n.parent is not None and n.parent not in ids:
            out.append(Problem(_section(n), "parent", f"parent {n.parent!r} is not a node of this site", topo))
        elif n.parent is not None and ids[n.parent].kind == "evse":
            out.append(Problem(_section(n), "parent", f"parent {n.parent!r} is an EVSE; EVSEs have only ports below them", topo))
        if n.kind == "grid" and n.parent is not None:
            out.append(Problem(_section(n), "parent", "the grid node is the root and has no parent", topo))
    # cycles and depth: walk up from every node; report each cycle once
    cycles: set[frozenset] = set()
    for n in site.nodes:
        seen, cur, depth = {n.id}, n, 1
        while cur.parent is not None and cur.parent in ids:
            cur = ids[cur.parent]
            depth += 1
            if cur.id in seen:
                ring = frozenset(seen)
                if not any(c <= ring for c in cycles):
                    cycles.add(ring)
                    out.append(Problem(_section(n), "parent", f"cycle in the hierarchy through {' > '.join(sorted(seen))}", topo))
                break
            seen.add(cur.id)
        else:
            if depth > CAPACITY["depth"]:
                out.append(Problem(_section(n), "parent", f"hierarchy {depth} levels deep; at most {CAPACITY['depth']}", "ERR_CONFIG_CAPACITY"))
    for n in site.nodes:
        if n.kind == "evse" and n.phases not in PHASES:
            out.append(Problem(_section(n), "phases", f"expected one of {', '.join(PHASES)}, found {n.phases!r}"))
        if n.meter_phases and n.meter_max_age_s is None:
            out.append(Problem(_section(n), "meter_phases", "true needs the node's meter: set meter_max_age_s"))
        if n.heatsink_c and not n.heatsink_c[0] < n.heatsink_c[1]:
            out.append(Problem(_section(n), "heatsink_derate_c", f"expected [start, trip] with start < trip, found {list(n.heatsink_c)}"))
        if n.thermal and not n.thermal.derate_start_c < n.thermal.limit_c:
            out.append(Problem(f"{_section(n)}.thermal", "hot_spot_c", "expected [derate start, limit] with start < limit"))
    f = site.frequency
    if f.mode == "curve":
        hz = [p[0] for p in f.curve]
        if not 2 <= len(hz) <= 16 or any(b <= a for a, b in zip(hz, hz[1:])):
            out.append(Problem("frequency", "curve", f"expected 2..16 points with Hz strictly increasing, found {list(f.curve)}"))
    port_ids: set[str] = set()
    for p in site.ports:
        sec = f"node.{p.evse}"
        if p.id in port_ids:
            out.append(Problem(sec, "ports", f"duplicate port id {p.id!r}", topo))
        port_ids.add(p.id)
        if p.evse not in ids:
            out.append(Problem(sec, None, f"port {p.id!r} belongs to unknown EVSE {p.evse!r}", topo))
        elif ids[p.evse].kind != "evse":
            out.append(Problem(sec, "ports", f"ports belong on EVSE nodes; {p.evse!r} is a {ids[p.evse].kind}", topo))
    if len(site.ports) > CAPACITY["ports"]:
        out.append(Problem("node", "ports", f"{len(site.ports)} ports; this build holds at most {CAPACITY['ports']}", "ERR_CONFIG_CAPACITY"))
    if len(site.nodes) > CAPACITY["nodes"]:
        out.append(Problem("node", None, f"{len(site.nodes)} nodes; this build holds at most {CAPACITY['nodes']}", "ERR_CONFIG_CAPACITY"))
    if len(site.upstreams) > CAPACITY["upstreams"]:
        out.append(Problem("upstream", None, f"{len(site.upstreams)} upstreams; at most {CAPACITY['upstreams']}", "ERR_CONFIG_CAPACITY"))
    if not site.ports:
        out.append(Problem("node", "ports", "the site has no ports", topo))
    return out + check_names(site) + check_devices(site)


def check_names(site: Site) -> list[Problem]:
    out = []
    if not SITE_NAME.fullmatch(site.name):
        out.append(Problem("site", "name", f"expected 1 to 64 letters, digits, '.', '_' or '-' starting with a letter "
                                           f"or digit (it names the fault journal's file), found {site.name[:80]!r}"))
    if not GROUP_NAME.fullmatch(site.operator_group):
        out.append(Problem("site", "operator_group", f"expected a group name: 1 to 32 of a-z, 0-9, '_', '-', not "
                                                     f"starting with a digit or '-', found {site.operator_group[:80]!r}"))
    return out


def check_devices(site: Site) -> list[Problem]:
    """Device settings on nodes: one J1939 source address per EVSE, sane transformer ratings."""
    out = []
    addresses: dict[int, str] = {}
    for n in site.nodes:
        if n.can_address is not None and n.can_address in addresses:
            out.append(Problem(_section(n), "can_address", f"can_address {n.can_address} is also EVSE "
                               f"{addresses[n.can_address]!r}'s; give each EVSE its own J1939 source address",
                               "ERR_CONFIG_DEVICE"))
        elif n.can_address is not None:
            addresses[n.can_address] = n.id
        if n.link == "can" and "can" not in site.sections:
            out.append(Problem(_section(n), "link", "link = \"can\" sends setpoints through the J1939 bus of the "
                               "[can] section, and this config has none; add [can] with backend, interface and address",
                               "ERR_CONFIG_DEVICE"))
        if n.link == "modbus":
            driven = {c.port_id for c in site.sections.get("modbus") or () if c.role == "evse"}
            idle = [p.id for p in site.ports if p.evse == n.id and p.id not in driven]
            if idle:
                out.append(Problem(_section(n), "link", f"link = \"modbus\": no [modbus.NAME] with role = \"evse\", "
                                   f"node = \"{n.id}\" drives port(s) {', '.join(idle)}; add one per port (connector "
                                   f"= 1, 2, ... in the EVSE's port order)", "ERR_CONFIG_DEVICE"))
        if n.link == "pwm":
            out += _pilot_problems(site, n)
        if n.thermal and not RATED_W[0] <= n.thermal.rated_w <= RATED_W[1]:
            out.append(Problem(f"{_section(n)}.thermal", "rated_w", f"expected a rating from {RATED_W[0]:g} to "
                               f"{RATED_W[1]:g} W (it defaults to import_limit_w), found {n.thermal.rated_w:g}"))
    return out


def _pilot_problems(site: Site, n: Node) -> list[Problem]:
    """A link = "pwm" EVSE's ports each need their PWM channel and an ADC channel on the CP."""
    pilots = {c.port for c in site.sections.get("pwm") or ()}
    sampled = {ch.source for adc in site.sections.get("spi") or () for ch in adc.channels}
    out = []
    if not n.pilot:
        out.append(Problem(_section(n), "pilot", "pilot = false, but link = \"pwm\" drives an IEC 61851 control "
                           "pilot (its duty offers the current); remove pilot = false", "ERR_CONFIG_DEVICE"))
    for p in site.ports:
        if p.evse != n.id:
            continue
        if p.id not in pilots:
            out.append(Problem(_section(n), "link", f"link = \"pwm\": port {p.id} has no PWM channel; add "
                               f"[pwm.NAME] with chip, channel and port = \"{p.id}\"", "ERR_CONFIG_DEVICE"))
        if port_source(p.id, "cp_v") not in sampled:
            out.append(Problem(_section(n), "link", f"link = \"pwm\": nothing samples port {p.id}'s control pilot; "
                               f"add a channel with kind = \"cp\", source = \"{port_source(p.id, 'cp_v')}\" to an "
                               "[spi.NAME] ADC (no PWM is offered without the CP state)", "ERR_CONFIG_DEVICE"))
    return out


def depot(ports: int = 50, *, ports_per_evse: int = 2, evses_per_group: int = 6,
          port_charge_w: float = 11_000.0, port_discharge_w: float = 11_000.0,
          grid_import_w: float | None = None, grid_export_w: float | None = None,
          transformer_w: float | None = None, group_w: float | None = None,
          meter: bool = True, base_load_w: tuple[float, float] = (0.0, 150_000.0),
          upstreams: tuple[Upstream, ...] = (), period_s: float = 1e-3,
          rt: RealTime = RealTime(), control: Control = Control(), name: str = "depot") -> Site:
    """A depot: grid > one transformer > groups of EVSEs > ports, with limits that bind.

    Default limits oversubscribe the chargers (as real depots do): a group takes
    60 % of its EVSEs' sum, the transformer 50 % of all ports, the grid 45 %.
    """
    n_evse = -(-ports // ports_per_evse)
    total = ports * port_charge_w
    grid_import_w = 0.45 * total if grid_import_w is None else grid_import_w
    grid_export_w = 0.30 * total if grid_export_w is None else grid_export_w
    transformer_w = 0.50 * total if transformer_w is None else transformer_w
    nodes = [Node("grid", "grid", None, grid_import_w, grid_export_w,
                  meter_max_age_s=5.0 if meter else None, base_load_w=base_load_w),
             Node("tx1", "transformer", "grid", transformer_w, transformer_w)]
    port_list: list[Port] = []
    for e in range(n_evse):
        g = e // evses_per_group
        gid = f"group{g + 1}"
        if e % evses_per_group == 0:
            in_group = min(evses_per_group, n_evse - e) * ports_per_evse * port_charge_w
            gw = 0.6 * in_group if group_w is None else group_w
            nodes.append(Node(gid, "group", "tx1", gw, gw))
        eid = f"evse{e + 1:03d}"
        nodes.append(Node(eid, "evse", gid, ports_per_evse * port_charge_w,
                          ports_per_evse * port_discharge_w, link="sim"))
        for k in range(ports_per_evse):
            if len(port_list) < ports:
                port_list.append(Port(f"{eid}.{k + 1}", eid, port_charge_w, port_discharge_w))
    return Site(name, period_s, tuple(nodes), tuple(port_list), rt=rt, control=control, upstreams=upstreams)
