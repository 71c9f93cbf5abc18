# interlock: each port's and node's allowed envelope from local physics, before
# any grid command is looked at (Local Safety First): hard faults (contactor,
# PLC loss), thermal derates (EVSE heat sink, transformer hot spot), stale data,
# Safe State. Nothing here can be overridden by a command.

from libc.math cimport exp, pow, fabs, NAN

cdef double AMBIENT_WORST_C = 40.0   # assumed while a transformer's temperatures are stale
cdef double NEVER_S = 1e12           # "no deadline": departure unknown (the laxity of such a port)


cdef inline bint input_fresh(const Image* im, int32_t i) noexcept nogil:
    return i >= 0 and im.now_ns <= im.input[i].fresh_until_ns


cdef inline double input_value(const Image* im, int32_t i, bint* ok) noexcept nogil:
    ok[0] = input_fresh(im, i)
    return im.input[i].value if ok[0] else NAN


cdef inline double port_value(const Image* im, const Port* p, int field, bint* ok) noexcept nogil:
    return input_value(im, p.src[field], ok)


cdef inline double linear_derate(double t, double start, double stop) noexcept nogil:
    """1 below start, 0 at or above stop, linear between; monotone in t."""
    if t >= stop:
        return 0.0
    if t <= start:
        return 1.0
    return (stop - t) / (stop - start)


cdef inline double cycle_dt_s(const Image* im) noexcept nogil:
    if im.last_now_ns > 0:
        return (im.now_ns - im.last_now_ns) * 1e-9
    return im.opt.period_ns * 1e-9


cdef void update_safe_state(Image* im) noexcept nogil:
    cdef int k
    cdef Upstream* u
    cdef int32_t state = 0
    cdef uint32_t waiting = 0, lost = 0
    for k in range(im.n_upstreams):
        u = &im.upstream[k]
        if input_fresh(im, u.input) and im.input[u.input].value > 0.5:
            u.heard = 1
            if u.lost:
                u.lost = 0
                u.healthy_since_ns = im.now_ns
            if v2g_sat_sub(im.now_ns, u.healthy_since_ns) < im.opt.safe_exit_ns:
                state |= SAFE_UPSTREAM
        else:
            u.lost = 1
            state |= SAFE_UPSTREAM
            if u.heard:
                lost |= (<uint32_t>1) << k
            else:
                waiting |= (<uint32_t>1) << k
    im.upstreams_waiting = waiting
    im.upstreams_lost = lost
    if im.stats.overrun_streak >= im.opt.overrun_streak_safe:
        im.safe_overrun_until_ns = v2g_sat_add(im.now_ns, im.opt.safe_exit_ns)
    if im.now_ns < im.safe_overrun_until_ns:
        state |= SAFE_OVERRUN
    if im.stopping:
        state |= SAFE_STOPPED
    im.safe_state = state


cdef inline void port_latch(Image* im, Port* p, uint32_t bits) noexcept nogil:
    """Latch fault bits; each latch gets the next sequence number, so a reset that
    names an earlier one (a replay, a stale operator screen) leaves it latched."""
    p.faults |= bits
    im.latch_counter += 1
    p.latch_seq = im.latch_counter


cdef inline bint stop_may_open(Image* im, Port* p) noexcept nogil:
    """At a stop: open at once on a hard stop or at the deadline, otherwise once the
    port's measured power has fallen (a port that reports none waits for the deadline)."""
    cdef bint ok
    cdef double v
    if im.stop_hard or im.now_ns >= im.stop_deadline_ns:
        return True
    v = port_value(im, p, SRC_PORT_POWER_W, &ok)
    return ok and fabs(v) <= im.opt.stop_open_below_w


cdef void pilot_check(Image* im, Port* p) noexcept nogil:
    """A direct-wired control pilot (IEC 61851-1): its CP voltage says whether a vehicle is
    there (B, C, D: connected; A: none). E, F or no fresh voltage stop the port (FAULT_PILOT);
    a PWM whose low level never reaches -12 V shows no diode, and stops it for the session.
    So a PWM (a current offered) comes only in B, C or D with the diode, never in E or F."""
    cdef bint ok
    cdef double v = port_value(im, p, SRC_PORT_CP_V, &ok)
    p.cp_state = cp_state(v) if ok else CP_BETWEEN
    p.connected = CP_B <= p.cp_state <= CP_D
    if p.cp_state == CP_BETWEEN or p.cp_state >= CP_E:
        p.faults |= FAULT_PILOT
    if p.connected and p.src[SRC_PORT_CP_DIODE] >= 0:
        v = port_value(im, p, SRC_PORT_CP_DIODE, &ok)
        if ok and v < 0.5:
            p.faults |= FAULT_CP_DIODE


cdef void port_faults(Image* im, Port* p) noexcept nogil:
    """Connection state, PLC loss and the contactor check."""
    cdef bint ok
    cdef double v
    cdef int32_t isrc
    cdef int32_t want
    p.faults &= FAULT_PERSISTENT | FAULT_SESSION
    if im.outbox.link_down[p - im.port]:
        p.faults |= FAULT_LINK_DOWN
    v = port_value(im, p, SRC_PORT_CONNECTED, &ok)
    p.connected = ok and v > 0.5
    if not ok:
        isrc = p.src[SRC_PORT_CONNECTED]
        if isrc >= 0 and im.input_stamp[isrc].received and im.input[isrc].value > 0.5:
            p.faults |= FAULT_SESSION_STALE
    if p.src[SRC_PORT_CP_V] >= 0:
        pilot_check(im, p)
    if not p.connected:
        p.faults &= ~FAULT_SESSION            # the session ended: a new vehicle starts clean
    elif p.src[SRC_PORT_PLC_LOSS] >= 0:
        v = port_value(im, p, SRC_PORT_PLC_LOSS, &ok)
        if not ok or v > im.opt.plc_loss_limit:
            p.faults |= FAULT_ISO_TIMEOUT
    want = p.connected and not (p.faults & (FAULT_PERSISTENT | FAULT_SESSION))
    if p.src[SRC_PORT_CP_V] >= 0 and p.cp_state != CP_C and p.cp_state != CP_D:
        want = 0                              # a pilot's contactor closes only for a vehicle that asks
    if im.stopping and want:
        want = p.contactor_closed and not stop_may_open(im, p)
    if want != p.contactor_closed:
        p.contactor_closed = want
        p.contactor_since_ns = im.now_ns
    elif p.src[SRC_PORT_CONTACTOR] >= 0 and v2g_sat_sub(im.now_ns, p.contactor_since_ns) >= im.opt.contactor_settle_ns:
        # A feedback that disagrees, or none while closed (it cannot be verified).
        v = port_value(im, p, SRC_PORT_CONTACTOR, &ok)
        if (ok and (v > 0.5) != (p.contactor_closed != 0)) or (not ok and p.contactor_closed):
            port_latch(im, p, FAULT_CONTACTOR)
            p.contactor_closed = 0
            p.contactor_since_ns = im.now_ns


cdef double CL_TOLERANCE_W = 250.0    # taking less than given by more than this (or 5 %) is short
cdef double CL_TOLERANCE = 0.05
cdef double CL_MARGIN_W = 500.0       # a cap is what the port takes plus this (or 10 %)
cdef double CL_MARGIN = 0.10


cdef inline double cl_tolerance(double w) noexcept nogil:
    """How far from w (W) a port may take before it counts as short: 250 W or 5 %."""
    return fmax(CL_TOLERANCE_W, CL_TOLERANCE * fabs(w))


cdef inline double announced_max_w(const Port* p, double ev_max_w, bint* announced) noexcept nogil:
    """The most the port may charge by its rating and what its EV announces (ev_max_w, NaN: none;
    announced: the EV's figure is the lower)."""
    announced[0] = ev_max_w < p.rating_charge_w
    return (ev_max_w if ev_max_w > 0.0 else 0.0) if announced[0] else p.rating_charge_w


cdef double TAPER_GAIN = 0.25        # a taper seen moves the site's span this share of the way
cdef double TAPER_PROBE_S = 14400.0  # ... and it shrinks by itself over this long while EVs take all


cdef void learn_taper(Image* im, Port* p, double got) noexcept nogil:
    """A port short of what it was given: an EV in its CC-CV taper takes about its announced
    power x (1 - SoC) / span (the taper starts span below full, later at less current), so
    what it took gives its span, and the site's span moves towards it. Every EV tapers, so the
    next one near full is given no more than it will take, and what it would not take goes to
    the others in the same arbitration instead of a settle time later."""
    cdef bint announced
    cdef double span, emax = announced_max_w(p, p.ev_max_charge_w, &announced)
    if not (0.0 < p.soc < 1.0) or got <= 0.0:
        return
    span = emax * (1.0 - p.soc) / got
    if span >= 1.0:
        return                              # no taper at this SoC: the EV holds back for itself
    im.taper_span = span if im.taper_span <= 0.0 else im.taper_span + TAPER_GAIN * (span - im.taper_span)


cdef void closed_loop(Image* im, Port* p, bint fresh) noexcept nogil:
    """Compare what the port takes (fresh: its power_w this cycle) with what it was given (last
    cycle's setpoint). Short by more than the tolerance for settle_ns (counted from the contactor
    closing at the earliest, so a vehicle may take its time to start): capped at what it takes
    plus a margin, in that direction. A cap rises by probe_w_per_s while the port is not short,
    and goes once it reaches the rating. A port that never reported power is never capped (open
    loop); one whose power went stale keeps its caps and does not probe. A shortfall first seen
    in a measurement taken after its setpoint changed, and settle_ns after that change, is a
    taper's (not a ramp's or a late reading's), and learned at once (learn_taper)."""
    cdef double given = p.setpoint_w
    cdef double got = p.measured_w
    cdef double step
    cdef bint short
    if fabs(given - p.steady_w) > cl_tolerance(given):
        p.steady_w = given
        p.steady_since_ns = im.last_now_ns if im.last_now_ns > 0 else im.now_ns   # the cycle that set it
    if not fresh:
        p.short_since_ns = 0
        return
    p.given_w = given
    if im.input_stamp[p.src[SRC_PORT_POWER_W]].t_ns < p.steady_since_ns:
        return                               # taken before this setpoint: judged by the next one
    short = p.contactor_closed and ((given > 0.0 and got < given - cl_tolerance(given)) or
                                    (given < 0.0 and got > given + cl_tolerance(given)))
    if short:
        if p.short_since_ns == 0:
            p.short_since_ns = im.now_ns if im.now_ns > p.contactor_since_ns else p.contactor_since_ns
            if given > 0.0 and p.steady_since_ns >= p.contactor_since_ns and v2g_sat_sub(im.now_ns, p.steady_since_ns) >= im.opt.settle_ns:
                learn_taper(im, p, got)
        elif v2g_sat_sub(im.now_ns, p.short_since_ns) >= im.opt.settle_ns:
            if given > 0.0:
                p.cap_charge_w = fmax(got, 0.0) + fmax(CL_MARGIN_W, CL_MARGIN * fmax(got, 0.0))
            else:
                p.cap_discharge_w = fmax(-got, 0.0) + fmax(CL_MARGIN_W, CL_MARGIN * fmax(-got, 0.0))
            p.short_since_ns = im.now_ns         # judged again one settle time later
        return
    p.short_since_ns = 0
    step = im.opt.probe_w_per_s * cycle_dt_s(im)
    if p.cap_charge_w > 0.0:
        p.cap_charge_w += step
        if p.cap_charge_w >= p.rating_charge_w:
            p.cap_charge_w = 0.0
    if p.cap_discharge_w > 0.0:
        p.cap_discharge_w += step
        if p.cap_discharge_w >= p.rating_discharge_w:
            p.cap_discharge_w = 0.0


cdef bint port_envelope(Image* im, Port* p) noexcept nogil:
    """The port's charge and discharge limits this cycle. True: it is held at the taper's line
    and took all it was given there (the span may be smaller than the site's)."""
    cdef bint ok, ok_power, soc_ok, cap_ok, req_ok, dep_ok, min_ok, held = False
    cdef double v, hi, lo, emax, min_soc, e_avail, e_full, e_span, hold_s, floor = 0.0
    cdef int32_t bmax, bmin
    # What the EV announces (NaN: nothing fresh), first: closed_loop (learn_taper) uses it.
    p.ev_max_charge_w = port_value(im, p, SRC_PORT_MAX_CHARGE_W, &ok)
    p.ev_max_discharge_w = port_value(im, p, SRC_PORT_MAX_DISCHARGE_W, &ok)
    p.measured_w = port_value(im, p, SRC_PORT_POWER_W, &ok)
    closed_loop(im, p, ok)
    ok_power = ok
    if not ok:
        p.measured_w = p.setpoint_w
    port_faults(im, p)
    # The EVSE's heat-sink faults are the port's own: a trip or a stale temperature holds it at
    # 0 W by its envelope, not only by the EVSE node's headroom further down.
    p.faults |= im.node[p.evse].faults & (FAULT_OVERTEMP | FAULT_TEMP_STALE)
    if not p.connected or p.faults & ~FAULT_SESSION_STALE or im.stopping:
        p.soc = NAN
        p.capacity_wh = NAN
        p.energy_request_wh = NAN
        p.departure_in_s = NAN
        p.laxity_s = NEVER_S
        p.v2g = 0
        p.max_w = 0.0
        p.min_w = 0.0
        p.floor_w = 0.0
        p.open_max_w = 0.0
        p.bind_max = BIND_FAULT if p.faults else (BIND_SAFE_STATE if im.stopping else BIND_NOT_CONNECTED)
        p.bind_min = p.bind_max
        p.cap_charge_w = 0.0                 # the next vehicle starts uncapped
        p.cap_discharge_w = 0.0
        p.short_since_ns = 0
        return False

    p.soc = port_value(im, p, SRC_PORT_SOC, &soc_ok)
    p.capacity_wh = port_value(im, p, SRC_PORT_CAPACITY_WH, &cap_ok)
    p.energy_request_wh = port_value(im, p, SRC_PORT_ENERGY_REQUEST_WH, &req_ok)
    v = port_value(im, p, SRC_PORT_DEPARTURE_IN_S, &dep_ok)
    # Departure arrives relative to its measurement's timestamp (ISO 15118 style).
    p.departure_in_s = v - v2g_sat_sub(im.now_ns, im.input_stamp[p.src[SRC_PORT_DEPARTURE_IN_S]].t_ns) * 1e-9 if dep_ok else NAN

    emax = announced_max_w(p, p.ev_max_charge_w, &ok)
    hi = emax
    bmax = BIND_EV_LIMIT if ok else BIND_RATING
    if soc_ok and p.soc >= 1.0:
        hi = 0.0
        bmax = BIND_SOC
    # No more than it can still absorb before its request is met, over the time an output holds
    # at the EV (not the cycle: at 1 ms such a cap would mean nothing), or until it leaves.
    hold_s = im.opt.output_hold_ns * 1e-9
    if dep_ok and 0.0 < p.departure_in_s < hold_s:
        hold_s = p.departure_in_s
    # (The caps are compared multiplied out and divided only where they bind: a chain of
    # divisions per port was the largest cost of the cycle at 256 ports.)
    if req_ok and p.energy_request_wh >= 0.0 and p.energy_request_wh * 3600.0 < hi * hold_s:
        hi = p.energy_request_wh * 3600.0 / hold_s
        bmax = BIND_SOC
    if soc_ok and p.soc < 1.0 and im.taper_span > 0.0:
        # Below the taper's line (learn_taper) until the output's hold ends: at most
        # emax (1 - SoC at the end) / span, the SoC at the end rising by what it is given:
        # emax (1 - SoC) capacity / (span capacity + emax hold_h).
        e_full = emax * (1.0 - p.soc)
        e_span = im.taper_span
        if cap_ok and p.capacity_wh > 0.0:
            e_full *= p.capacity_wh
            e_span = e_span * p.capacity_wh + emax * hold_s * (1.0 / 3600.0)
        if e_full < hi * e_span:
            hi = e_full / e_span
            bmax = BIND_TAPER
            held = ok_power and p.given_w > 0.0 and p.measured_w >= p.given_w - cl_tolerance(p.given_w)
    p.open_max_w = hi
    if p.cap_charge_w > 0.0 and p.cap_charge_w < hi:
        hi = p.cap_charge_w
        bmax = BIND_MEASURED

    p.laxity_s = NEVER_S
    if dep_ok and req_ok:
        if p.energy_request_wh <= 0.0:
            p.laxity_s = p.departure_in_s
        elif hi > 0.0:
            p.laxity_s = p.departure_in_s - p.energy_request_wh * 3600.0 / hi
        else:
            p.laxity_s = -NEVER_S

    lo = p.rating_discharge_w
    bmin = BIND_RATING
    v = port_value(im, p, SRC_PORT_V2G, &ok)
    p.v2g = ok and v > 0.5
    if p.pilot_step_pct > 0.0:                   # a PWM pilot offers a charging current only
        lo = 0.0
    elif not p.v2g:
        lo = 0.0
        bmin = BIND_NO_V2G
    elif im.safe_state:
        lo = 0.0
        bmin = BIND_SAFE_STATE
    else:
        v = p.ev_max_discharge_w
        if not v == v or v < lo:
            lo = v if v > 0.0 else 0.0
            bmin = BIND_EV_LIMIT
        min_soc = port_value(im, p, SRC_PORT_MIN_SOC, &min_ok)
        p.min_soc = min_soc
        if not (soc_ok and cap_ok and min_ok):
            lo = 0.0
            bmin = BIND_SOC
        else:
            # Never below the minimum SoC while an output holds at the EV.
            e_avail = (p.soc - min_soc) * p.capacity_wh * 3600.0
            if e_avail < lo * hold_s:
                lo = e_avail / hold_s if e_avail > 0.0 else 0.0
                bmin = BIND_SOC
            floor = lo
            # Keep enough time to still deliver the departure energy.
            if p.laxity_s <= im.opt.discharge_reserve_s:
                lo = 0.0
                bmin = BIND_SOC
            elif p.laxity_s < im.opt.discharge_reserve_s + im.opt.discharge_taper_s:
                lo *= (p.laxity_s - im.opt.discharge_reserve_s) / im.opt.discharge_taper_s
                bmin = BIND_SOC
    if p.cap_discharge_w > 0.0 and p.cap_discharge_w < lo:
        lo = p.cap_discharge_w
        bmin = BIND_MEASURED
    if p.cap_discharge_w > 0.0 and p.cap_discharge_w < floor:
        floor = p.cap_discharge_w
    p.max_w = hi
    p.min_w = -lo if lo > 0.0 else 0.0
    p.floor_w = -floor if floor > lo else p.min_w
    p.bind_max = bmax
    p.bind_min = bmin
    return held


cdef double transformer_hot_spot(Image* im, Node* n, double load_w) noexcept nogil:
    """Advance the first-order top-oil and hot-spot model by one cycle; returns the hot spot in C.

    Ultimate rises at load ratio K (IEC 60076-7, eq. for ONAN/ONAF):
      top oil  d_oil_u = d_oil_r * ((1 + R K^2) / (1 + R))^x
      hot spot d_hot_u = Hgr * K^y
    each approached with its own time constant. A measured top-oil temperature
    replaces the modelled one.
    """
    cdef Thermal* t = &n.thermal
    cdef bint amb_ok, oil_ok
    cdef double k = fabs(load_w) / t.rated_w
    cdef double d_oil_u = t.top_oil_rise_k * pow((1.0 + t.loss_ratio * k * k) / (1.0 + t.loss_ratio), t.oil_exponent)
    cdef double d_hot_u = t.hot_spot_gradient_k * pow(k, t.winding_exponent)
    cdef double dt = cycle_dt_s(im)
    cdef double ambient = input_value(im, t.ambient, &amb_ok)
    cdef double top_oil = input_value(im, t.top_oil, &oil_ok)
    if not t.started:
        t.d_oil_k = d_oil_u
        t.d_hot_k = d_hot_u
        t.started = 1
    else:
        t.d_oil_k += (d_oil_u - t.d_oil_k) * (1.0 - exp(-dt / t.tau_oil_s))
        t.d_hot_k += (d_hot_u - t.d_hot_k) * (1.0 - exp(-dt / t.tau_winding_s))
    if oil_ok:
        return top_oil + t.d_hot_k
    if not amb_ok:
        n.faults |= FAULT_TEMP_STALE
        ambient = AMBIENT_WORST_C
    return ambient + t.d_oil_k + t.d_hot_k


cdef void node_heatsink(Image* im, Node* n) noexcept nogil:
    """An EVSE's heat sink: derate and trip, before the ports' envelopes (a trip is per port too)."""
    cdef bint ok
    cdef double temp
    n.derate = 1.0
    n.temperature_c = NAN
    n.faults = 0
    if n.heatsink >= 0:
        temp = input_value(im, n.heatsink, &ok)
        if ok:
            n.temperature_c = temp
            n.derate = linear_derate(temp, n.derate_start_c, n.trip_c)
            if temp >= n.trip_c:
                n.faults |= FAULT_OVERTEMP
        else:
            n.derate = 0.0
            n.faults |= FAULT_TEMP_STALE


cdef void node_derate(Image* im, Node* n, int32_t i) noexcept nogil:
    """A transformer's hot spot, on top of what node_heatsink set."""
    cdef double load, non_ev
    if n.thermal.enabled:
        # The transformer's load: its own meter, or the fleet below it plus the
        # site's non-EV load (all of it assumed to pass through this transformer).
        if n.meter >= 0 and input_fresh(im, n.meter):
            load = im.input[n.meter].value
        else:
            non_ev = im.node[0].non_ev_w
            load = n.fleet_measured_w + (non_ev if non_ev == non_ev else im.node[0].base_load_max_w)
        n.temperature_c = transformer_hot_spot(im, n, load)
        n.derate = fmin(n.derate, linear_derate(n.temperature_c, n.thermal.derate_start_c, n.thermal.limit_c))


cdef void node_phases(Image* im, Node* n, double lmin, double lmax) noexcept nogil:
    """The current each phase of a phase-limited node leaves the fleet, charging and discharging
    (nothing reads the phases of a node without a phase limit).

    With per-phase meters the non-EV current of a phase is its metered power / voltage less the
    fleet's measured current on it (sampled and held like non_ev_w), and what exceeds the limit is
    an overload for discharge to relieve. With stale ones every phase is assumed to carry all of
    the non-EV load's worst case (lmin, lmax: the total meter's reading or base_load_w). Without
    per-phase meters the limit is the fleet's alone, as configured."""
    cdef int32_t ph, m
    cdef double lo, hi, v
    cdef bint fresh = n.phase_meter[0] >= 0
    for ph in range(3):
        n.overload_a[ph] = 0.0
        m = n.phase_meter[ph]
        if m < 0:
            lo = 0.0
            hi = 0.0
            n.non_ev_phase_a[ph] = NAN
        elif input_fresh(im, m):
            v = n.non_ev_phase_a[ph]
            if im.input_stamp[m].applied_cycle == im.cycle or v != v:
                n.non_ev_phase_a[ph] = im.input[m].value / n.voltage_v - n.fleet_phase_a[ph]
            lo = n.non_ev_phase_a[ph]
            hi = lo
        else:
            fresh = False
            n.non_ev_phase_a[ph] = NAN
            lo = fmin(lmin, 0.0) / n.voltage_v
            hi = fmax(lmax, 0.0) / n.voltage_v
        n.phase_import_a[ph] = n.phase_limit_a - hi
        n.phase_export_a[ph] = n.phase_limit_a + lo
    if fresh and not im.safe_state:
        for ph in range(3):
            if n.phase_import_a[ph] < 0.0:
                n.overload_a[ph] = -n.phase_import_a[ph]


cdef void node_headroom(Image* im) noexcept nogil:
    cdef int32_t i, k
    cdef Node* n
    cdef Port* p
    cdef ActiveCommand* c
    cdef double imp, exp_, lmin, lmax
    cdef int32_t bi, be, ph
    cdef bint ok
    cdef bint phases = False
    for i in range(im.n_nodes):
        im.node[i].fleet_measured_w = 0.0
        if im.node[i].phase_meter[0] >= 0:
            memset(im.node[i].fleet_phase_a, 0, sizeof(im.node[i].fleet_phase_a))
            phases = True
    # Each port's power goes to its EVSE, each node's sum to its parent (children come after their
    # parents): one add per port and per node, not one per node on every port's path.
    for i in range(im.n_ports):
        p = &im.port[i]
        im.node[p.path[0]].fleet_measured_w += p.measured_w
        if phases:                           # only per-phase meters need the fleet's phase currents
            for k in range(p.npath):
                n = &im.node[p.path[k]]
                if n.phase_meter[0] >= 0:
                    for ph in range(3):
                        if p.phase_mask & (1 << ph):
                            n.fleet_phase_a[ph] += p.measured_w / p.watts_per_amp
    for i in range(im.n_nodes - 1, 0, -1):
        n = &im.node[i]
        im.node[n.parent].fleet_measured_w += n.fleet_measured_w
    im.fleet_measured_w = im.node[0].fleet_measured_w
    for i in range(im.n_nodes):
        n = &im.node[i]
        imp = n.import_limit_w
        exp_ = n.export_limit_w
        bi = BIND_RATING
        be = BIND_RATING
        if i == 0:
            c = &im.grid_cmd[CMD_IMPORT_LIMIT]
            if c.active and c.value < imp:
                imp = c.value
                bi = BIND_GRID_COMMAND
            c = &im.grid_cmd[CMD_EXPORT_LIMIT]
            if c.active and c.value < exp_:
                exp_ = c.value
                be = BIND_GRID_COMMAND
            im.import_limit_w = imp
            im.export_limit_w = exp_
        lmin = 0.0
        lmax = 0.0
        ok = False
        if n.meter < 0:
            n.non_ev_w = 0.0
        else:
            ok = input_fresh(im, n.meter)
            if ok:
                # Sample and hold: the meter saw the fleet as it was when the reading
                # arrived, not as it is after later setpoint changes.
                if im.input_stamp[n.meter].applied_cycle == im.cycle or n.non_ev_w != n.non_ev_w:
                    n.non_ev_w = im.input[n.meter].value - n.fleet_measured_w
                lmin = n.non_ev_w
                lmax = n.non_ev_w
            else:
                n.non_ev_w = NAN
                lmin = n.base_load_min_w
                lmax = n.base_load_max_w
            if lmax > 0.0 and bi == BIND_RATING:
                bi = BIND_BASE_LOAD if ok else BIND_STALE_METER
            if lmin < 0.0 and be == BIND_RATING:
                be = BIND_BASE_LOAD if ok else BIND_STALE_METER
        if n.phase_limit_a < INFINITY:
            node_phases(im, n, lmin, lmax)
        node_derate(im, n, i)
        if n.derate < 1.0:
            imp *= n.derate
            exp_ *= n.derate
            bi = BIND_THERMAL
            be = BIND_THERMAL
        imp -= lmax
        exp_ += lmin
        # A measured overload is relieved by discharge (arbitrate); a stale meter's worst case is not:
        # no vehicle gives energy for a load nobody has seen.
        n.overload_w = -imp if imp < 0.0 and ok and not im.safe_state else 0.0
        n.import_headroom_w = imp if imp > 0.0 else 0.0
        n.export_headroom_w = exp_ if exp_ > 0.0 else 0.0
        n.bind_import = bi
        n.bind_export = be


cdef void cycle_interlock(Image* im) noexcept nogil:
    cdef int32_t i
    cdef bint held = False
    update_safe_state(im)
    for i in range(im.n_nodes):
        node_heatsink(im, &im.node[i])
    if im.taper_span <= 0.0:
        im.taper_span = im.opt.taper_span    # none seen yet: the configured span
    for i in range(im.n_ports):
        held |= port_envelope(im, &im.port[i])
    if held:
        im.taper_span *= fmax(1.0 - cycle_dt_s(im) / TAPER_PROBE_S, 0.5)
    node_headroom(im)
