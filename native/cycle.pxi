# cycle: read -> interlock -> arbitrate -> write -> publish over the image.
#
# One function, cycle_run(), is the whole control law. The real-time scheduler,
# virtual-time stepping, the benchmarks and the tests all call it; nothing of the
# control law exists in Python. Everything here runs without the GIL, allocates
# nothing and does work bounded by the configured number of ports, nodes and
# sources.

from libc.math cimport fabs, copysign, NAN, INFINITY

cdef extern from *:
    """
    /* V2G_DEBUG_ALLOC_IN_CYCLE: a deliberately broken build for the test that
       proves the no-allocation check can fail. */
    #ifdef V2G_DEBUG_ALLOC_IN_CYCLE
    #include <stdlib.h>
    static void v2g_debug_alloc(void) { void *volatile p = malloc(64); free(p); }
    #else
    static inline void v2g_debug_alloc(void) {}
    #endif
    """
    void v2g_debug_alloc() nogil

cdef double NEVER_S = 1e12          # "no deadline": departure unknown
cdef double STICKY_S = 60.0         # ordering bonus that keeps a served port served


cdef inline bint input_fresh(const Image* im, int32_t i) noexcept nogil:
    if i < 0 or not im.input[i].received:
        return False
    return im.now_ns - im.input[i].t_ns <= im.input[i].max_age_ns


cdef inline double port_value(const Image* im, const Port* p, int field, bint* ok) noexcept nogil:
    cdef int32_t i = p.src[field]
    ok[0] = input_fresh(im, i)
    return im.input[i].value if ok[0] else NAN


# ---------------------------------------------------------------- read

cdef void apply_command(Image* im, const Command* c) noexcept nogil:
    cdef ActiveCommand* a
    cdef int k
    im.commands_applied += 1
    im.command_digest += c.id_hash
    if c.expires_ns <= im.now_ns:
        im.commands_expired += 1
        return
    if c.kind < N_GRID_COMMANDS:
        a = &im.grid_cmd[c.kind]
        a.value = c.value
        a.expires_ns = c.expires_ns
        a.id_hash = c.id_hash
        a.active = 1
    elif c.kind == CMD_CANCEL:
        k = <int>c.value
        if 0 <= k < N_GRID_COMMANDS:
            im.grid_cmd[k].active = 0
    elif c.kind == CMD_RESET_FAULT:
        im.port[c.port].faults = 0


cdef void cycle_read(Image* im) noexcept nogil:
    cdef Command c
    cdef int n = 0
    cdef int32_t w, i
    cdef int32_t nwords = (im.n_inputs + 63) >> 6
    cdef uint64_t bits
    cdef double v
    cdef int64_t t
    while n < CMD_RING and ring_pop(&im.ex.ring, &c):
        apply_command(im, &c)
        n += 1
    for w in range(nwords):
        if v2g_load_relaxed(&im.ex.dirty[w]) == 0:
            continue
        bits = v2g_exchange(&im.ex.dirty[w], 0)
        while bits:
            i = (w << 6) + v2g_ctz64(bits)
            bits &= bits - 1
            if slot_read(&im.ex.slot[i], &v, &t):
                im.input[i].value = v
                im.input[i].t_ns = t
                im.input[i].received = 1
                im.input[i].applied_cycle = im.cycle
                im.measurements_applied += 1
    for n in range(N_GRID_COMMANDS):
        if im.grid_cmd[n].active and im.now_ns >= im.grid_cmd[n].expires_ns:
            im.grid_cmd[n].active = 0
            im.commands_expired += 1


# ---------------------------------------------------------------- interlock

cdef void update_safe_state(Image* im) noexcept nogil:
    cdef int k
    cdef Link* l
    cdef int32_t state = 0
    for k in range(im.n_links):
        l = &im.link[k]
        if input_fresh(im, l.input) and im.input[l.input].value > 0.5:
            if l.lost:
                l.lost = 0
                l.healthy_since_ns = im.now_ns
            if im.now_ns - l.healthy_since_ns < im.opt.safe_exit_ns:
                state |= SAFE_LINK
        else:
            l.lost = 1
            state |= SAFE_LINK
    if im.stats.overrun_streak >= im.opt.overrun_streak_safe:
        im.safe_overrun_until_ns = im.now_ns + im.opt.safe_exit_ns
    if im.now_ns < im.safe_overrun_until_ns:
        state |= SAFE_OVERRUN
    im.safe_state = state


cdef void port_envelope(Image* im, Port* p) noexcept nogil:
    cdef bint ok, soc_ok, cap_ok, req_ok, dep_ok, min_ok
    cdef double v, hi, lo, min_soc, e_avail
    cdef int32_t bmax, bmin
    cdef int32_t isrc
    p.faults &= FAULT_LATCHED
    p.measured_w = port_value(im, p, SRC_PORT_POWER_W, &ok)
    if not ok:
        p.measured_w = p.setpoint_w
    v = port_value(im, p, SRC_PORT_CONNECTED, &ok)
    p.connected = ok and v > 0.5
    if not ok:
        isrc = p.src[SRC_PORT_CONNECTED]
        if isrc >= 0 and im.input[isrc].received and im.input[isrc].value > 0.5:
            p.faults |= FAULT_SESSION_STALE
    if p.faults & FAULT_LATCHED:
        p.connected = 0
    if not p.connected:
        p.soc = NAN
        p.capacity_wh = NAN
        p.energy_request_wh = NAN
        p.departure_in_s = NAN
        p.laxity_s = NEVER_S
        p.v2g = 0
        p.max_w = 0.0
        p.min_w = 0.0
        p.bind_max = BIND_FAULT if p.faults else BIND_NOT_CONNECTED
        p.bind_min = p.bind_max
        return

    p.soc = port_value(im, p, SRC_PORT_SOC, &soc_ok)
    p.capacity_wh = port_value(im, p, SRC_PORT_CAPACITY_WH, &cap_ok)
    p.energy_request_wh = port_value(im, p, SRC_PORT_ENERGY_REQUEST_WH, &req_ok)
    v = port_value(im, p, SRC_PORT_DEPARTURE_IN_S, &dep_ok)
    # Departure arrives relative to its measurement's timestamp (ISO 15118 style).
    p.departure_in_s = v - (im.now_ns - im.input[p.src[SRC_PORT_DEPARTURE_IN_S]].t_ns) * 1e-9 if dep_ok else NAN

    hi = p.rating_charge_w
    bmax = BIND_RATING
    v = port_value(im, p, SRC_PORT_MAX_CHARGE_W, &ok)
    if ok and v < hi:
        hi = v if v > 0.0 else 0.0
        bmax = BIND_EV_LIMIT
    if soc_ok and p.soc >= 1.0:
        hi = 0.0
        bmax = BIND_SOC

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
    if not p.v2g:
        lo = 0.0
        bmin = BIND_NO_V2G
    elif im.safe_state:
        lo = 0.0
        bmin = BIND_SAFE_STATE
    else:
        v = port_value(im, p, SRC_PORT_MAX_DISCHARGE_W, &ok)
        if not ok or v < lo:
            lo = v if ok and v > 0.0 else 0.0
            bmin = BIND_EV_LIMIT
        min_soc = port_value(im, p, SRC_PORT_MIN_SOC, &min_ok)
        if not (soc_ok and cap_ok and min_ok):
            lo = 0.0
            bmin = BIND_SOC
        else:
            # Never below the minimum SoC, not even within one period.
            e_avail = (p.soc - min_soc) * p.capacity_wh * 3600.0 / (im.opt.period_ns * 1e-9)
            if e_avail < lo:
                lo = e_avail if e_avail > 0.0 else 0.0
                bmin = BIND_SOC
            # Keep enough time to still deliver the departure energy.
            if p.laxity_s <= im.opt.discharge_reserve_s:
                lo = 0.0
                bmin = BIND_SOC
            elif p.laxity_s < im.opt.discharge_reserve_s + im.opt.discharge_taper_s:
                lo *= (p.laxity_s - im.opt.discharge_reserve_s) / im.opt.discharge_taper_s
                bmin = BIND_SOC
    p.max_w = hi
    p.min_w = -lo
    p.bind_max = bmax
    p.bind_min = bmin


cdef void node_headroom(Image* im) noexcept nogil:
    cdef int32_t i, k
    cdef Node* n
    cdef Port* p
    cdef ActiveCommand* c
    cdef double imp, exp_, lmin, lmax
    cdef int32_t bi, be
    cdef bint ok
    for i in range(im.n_nodes):
        im.node[i].fleet_measured_w = 0.0
    for i in range(im.n_ports):
        p = &im.port[i]
        for k in range(p.npath):
            im.node[p.path[k]].fleet_measured_w += p.measured_w
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
        if n.meter < 0:
            n.non_ev_w = 0.0
        else:
            ok = input_fresh(im, n.meter)
            if ok:
                # Sample and hold: the meter saw the fleet as it was when the reading
                # arrived, not as it is after later setpoint changes.
                if im.input[n.meter].applied_cycle == im.cycle or n.non_ev_w != n.non_ev_w:
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
        imp -= lmax
        exp_ += lmin
        n.import_headroom_w = imp if imp > 0.0 else 0.0
        n.export_headroom_w = exp_ if exp_ > 0.0 else 0.0
        n.bind_import = bi
        n.bind_export = be


cdef void cycle_interlock(Image* im) noexcept nogil:
    cdef int32_t i
    update_safe_state(im)
    for i in range(im.n_ports):
        port_envelope(im, &im.port[i])
    node_headroom(im)


# ---------------------------------------------------------------- arbitrate

cdef void sort_ports(Image* im) noexcept nogil:
    # Stable bottom-up merge sort of the persistent order by key: O(n log n)
    # worst case, no allocation, and equal keys keep last cycle's order.
    cdef int32_t n = im.n_ports
    cdef int32_t width = 1
    cdef int32_t lo, mid, hi, a, b, k
    cdef int32_t* src = im.order
    cdef int32_t* dst = im.order_tmp
    cdef int32_t* tmp
    while width < n:
        lo = 0
        while lo < n:
            mid = lo + width if lo + width < n else n
            hi = lo + 2 * width if lo + 2 * width < n else n
            a = lo
            b = mid
            k = lo
            while k < hi:
                if a < mid and (b >= hi or im.port[src[a]].key <= im.port[src[b]].key):
                    dst[k] = src[a]
                    a += 1
                else:
                    dst[k] = src[b]
                    b += 1
                k += 1
            lo = hi
        tmp = src
        src = dst
        dst = tmp
        width *= 2
    if src != im.order:
        for k in range(n):
            im.order[k] = src[k]


cdef void set_keys(Image* im, bint charging) noexcept nogil:
    # Keys are never NaN: a NaN breaks the sort's ordering and makes the
    # allocation flip between ports from one cycle to the next.
    cdef int32_t i
    cdef Port* p
    cdef double soc
    for i in range(im.n_ports):
        p = &im.port[i]
        soc = p.soc if p.soc == p.soc else 0.0
        if (charging and p.max_w <= 0.0) or (not charging and p.min_w >= 0.0):
            p.key = 4.0 * NEVER_S          # nothing to give in this direction: last
        elif charging:
            # Least laxity first; vehicles already satisfied only take surplus,
            # the emptiest of them first.
            if p.energy_request_wh <= 0.0:
                p.key = 2.0 * NEVER_S + soc
            else:
                p.key = p.laxity_s
            if p.target_w > 0.0:
                p.key -= STICKY_S
        else:
            # Most slack first: late departure and high SoC give energy first.
            p.key = -p.laxity_s - soc
            if p.target_w < 0.0:
                p.key -= STICKY_S


cdef void cycle_arbitrate(Image* im) noexcept nogil:
    cdef ActiveCommand* c
    cdef double target, remaining, give, room
    cdef int32_t tbind, b, bn, i, k, a
    cdef bint charging
    cdef Port* p
    cdef Node* n

    c = &im.grid_cmd[CMD_SETPOINT]
    if c.active:
        target = c.value
        tbind = BIND_SETPOINT
    else:
        target = im.opt.default_fleet_import_w
        tbind = BIND_DEFAULT_PROFILE
    c = &im.grid_cmd[CMD_LOAD_SHED]
    if c.active and target > c.value:
        target = c.value
        tbind = BIND_LOAD_SHED
    if im.safe_state and target < 0.0:
        target = 0.0
        tbind = BIND_SAFE_STATE
    im.requested_w = target

    charging = target >= 0.0
    set_keys(im, charging)
    sort_ports(im)
    for i in range(im.n_nodes):
        n = &im.node[i]
        n.rem_import_w = n.import_headroom_w
        n.rem_export_w = n.export_headroom_w
        n.alloc_w = 0.0

    remaining = fabs(target)
    for k in range(im.n_ports):
        p = &im.port[im.order[k]]
        if charging:
            give = p.max_w
            b = p.bind_max
        else:
            give = -p.min_w
            b = p.bind_min
        bn = -1
        if give > remaining:
            give = remaining
            b = tbind
        for i in range(p.npath):
            a = p.path[i]
            room = im.node[a].rem_import_w if charging else im.node[a].rem_export_w
            if room < give:
                give = room
                b = BIND_PARENT
                bn = a
        if give < 0.0:
            give = 0.0
        for i in range(p.npath):
            n = &im.node[p.path[i]]
            if charging:
                n.rem_import_w -= give
                n.alloc_w += give
            else:
                n.rem_export_w -= give
                n.alloc_w -= give
        remaining -= give
        p.target_w = give if charging else (-give if give > 0.0 else 0.0)
        p.binding = b
        p.binding_node = bn

    for i in range(im.n_nodes):
        n = &im.node[i]
        room = n.rem_import_w if charging else n.rem_export_w
        if room <= 1e-9 * (n.import_headroom_w + n.export_headroom_w) + 1e-6:
            n.binding = n.bind_import if charging else n.bind_export
        elif remaining <= 1e-6:
            n.binding = tbind
        else:
            n.binding = BIND_CHILDREN
    im.fleet_target_w = im.node[0].alloc_w
    im.site_binding = im.node[0].binding


# ---------------------------------------------------------------- write

cdef void cycle_write(Image* im) noexcept nogil:
    # Ramps and deadband shape only increases of magnitude: a reduction is a
    # limit speaking and goes out at once; a reversal passes through zero.
    cdef double dt_s, step, prev, tgt, base
    cdef int32_t i
    cdef Port* p
    if im.last_now_ns > 0:
        dt_s = (im.now_ns - im.last_now_ns) * 1e-9
    else:
        dt_s = im.opt.period_ns * 1e-9
    step = im.opt.port_ramp_w_per_s * dt_s
    im.fleet_w = 0.0
    im.ports_charging = 0
    im.ports_discharging = 0
    for i in range(im.n_ports):
        p = &im.port[i]
        prev = p.setpoint_w
        tgt = p.target_w
        base = prev if prev * tgt > 0.0 else 0.0
        if fabs(tgt) > fabs(base):
            if base != 0.0 and fabs(tgt - base) < im.opt.deadband_w:
                tgt = base
                p.binding = BIND_DEADBAND
            elif fabs(tgt) - fabs(base) > step:
                tgt = base + copysign(step, tgt)
                p.binding = BIND_RAMP
        p.setpoint_w = tgt
        im.fleet_w += tgt
        if tgt > 0.0:
            im.ports_charging += 1
        elif tgt < 0.0:
            im.ports_discharging += 1


# ---------------------------------------------------------------- publish

cdef void cycle_publish(Image* im) noexcept nogil:
    cdef Snapshot* s = snap_back(&im.snap)
    cdef int32_t i
    cdef Port* p
    cdef Node* n
    cdef PortRow* r
    cdef NodeRow* nr
    s.site.cycle = im.cycle
    s.site.t_ns = im.now_ns
    s.site.setpoint_w = im.grid_cmd[CMD_SETPOINT].value if im.grid_cmd[CMD_SETPOINT].active else NAN
    s.site.requested_w = im.requested_w
    s.site.fleet_target_w = im.fleet_target_w
    s.site.fleet_w = im.fleet_w
    s.site.fleet_measured_w = im.fleet_measured_w
    s.site.import_limit_w = im.import_limit_w
    s.site.export_limit_w = im.export_limit_w
    s.site.load_shed_w = im.grid_cmd[CMD_LOAD_SHED].value if im.grid_cmd[CMD_LOAD_SHED].active else NAN
    s.site.frequency_hz = im.input[im.freq_input].value if input_fresh(im, im.freq_input) else NAN
    s.site.commands_applied = im.commands_applied
    s.site.commands_expired = im.commands_expired
    s.site.command_digest = im.command_digest
    s.site.measurements_applied = im.measurements_applied
    s.site.binding = im.site_binding
    s.site.safe_state = im.safe_state
    s.site.ports_charging = im.ports_charging
    s.site.ports_discharging = im.ports_discharging
    for i in range(im.n_nodes):
        n = &im.node[i]
        nr = &s.node[i]
        nr.cycle = im.cycle
        nr.import_headroom_w = n.import_headroom_w
        nr.export_headroom_w = n.export_headroom_w
        nr.fleet_w = n.alloc_w
        nr.measured_w = im.input[n.meter].value if input_fresh(im, n.meter) else NAN
        nr.non_ev_w = n.non_ev_w
        nr.binding = n.binding
        nr.faults = 0
    for i in range(im.n_ports):
        p = &im.port[i]
        r = &s.port[i]
        r.cycle = im.cycle
        r.valid_until_ns = im.now_ns + im.opt.output_hold_ns
        r.setpoint_w = p.setpoint_w
        r.target_w = p.target_w
        r.min_w = p.min_w
        r.max_w = p.max_w
        r.measured_w = p.measured_w
        r.soc = p.soc
        r.energy_request_wh = p.energy_request_wh
        r.departure_in_s = p.departure_in_s
        r.laxity_s = p.laxity_s
        r.binding = p.binding
        r.binding_node = p.binding_node
        r.faults = p.faults
        r.connected = p.connected
        r.v2g = p.v2g
    snap_publish(&im.snap)


cdef void cycle_run(Image* im, int64_t now_ns) noexcept nogil:
    im.cycle += 1
    im.last_now_ns = im.now_ns
    im.now_ns = now_ns
    v2g_debug_alloc()
    cycle_read(im)
    cycle_interlock(im)
    cycle_arbitrate(im)
    cycle_write(im)
    cycle_publish(im)
