# arbitrate: the fleet target (setpoint, default profile, load shed, frequency
# response) distributed down the hierarchy within every envelope found by the
# interlock. A greedy pass in priority order under the headroom of every node
# on the port's path: exact for the tree's limits (a polymatroid), O(n log n).

from libc.math cimport exp, fabs, sqrt, INFINITY

cdef double STICKY_S = 60.0         # ordering bonus that keeps a served port served


cdef double frequency_response_raw(const Image* im, double f) noexcept nogil:
    """Fleet target change for grid frequency f (W, + = more charging).

    Droop (IEEE 1547-2018, load view): below f0 - db_uf the target falls by
    P * ((f0 - db_uf) - f) / (f0 * k_uf); above f0 + db_of it rises by
    P * (f - (f0 + db_of)) / (f0 * k_of). Curve: piecewise linear through the
    configured (Hz, W) points, flat beyond the ends.
    """
    cdef const Options* o = &im.opt
    cdef int k
    if o.freq_mode == FREQ_DROOP:
        if f < o.freq_nominal_hz - o.freq_db_under_hz:
            return -o.freq_rated_w * ((o.freq_nominal_hz - o.freq_db_under_hz) - f) / (o.freq_nominal_hz * o.freq_droop_under)
        if f > o.freq_nominal_hz + o.freq_db_over_hz:
            return o.freq_rated_w * (f - (o.freq_nominal_hz + o.freq_db_over_hz)) / (o.freq_nominal_hz * o.freq_droop_over)
        return 0.0
    if o.freq_mode == FREQ_CURVE:
        if f <= o.curve_hz[0]:
            return o.curve_w[0]
        for k in range(1, o.curve_n):
            if f <= o.curve_hz[k]:
                return o.curve_w[k - 1] + (o.curve_w[k] - o.curve_w[k - 1]) * (f - o.curve_hz[k - 1]) / (o.curve_hz[k] - o.curve_hz[k - 1])
        return o.curve_w[o.curve_n - 1]
    return 0.0


cdef void clear_sums(Image* im) noexcept nogil:
    cdef int32_t i
    for i in range(im.n_nodes):
        im.node[i].rem_import_w = 0.0      # used as the children's sums until the arbitration
        im.node[i].rem_export_w = 0.0


cdef void pass_up(Image* im, double hours, double* up, double* down) noexcept nogil:
    """Each node passes up the smaller of its children's flexibility sums and its headroom for
    hours, the root's are the fleet's."""
    cdef int32_t i
    cdef Node* n
    for i in range(im.n_nodes - 1, -1, -1):   # children come after their parents
        n = &im.node[i]
        n.flex_take_wh = fmin(n.flex_take_wh, n.import_headroom_w * hours)
        n.flex_give_wh = fmin(n.flex_give_wh, n.export_headroom_w * hours)
        if n.parent >= 0:
            im.node[n.parent].flex_take_wh += n.flex_take_wh
            im.node[n.parent].flex_give_wh += n.flex_give_wh
    up[0] = im.node[0].flex_take_wh
    down[0] = im.node[0].flex_give_wh


cdef void fleet_capability(Image* im, double* most_charge, double* most_discharge, bint reserve) noexcept nogil:
    """The most the fleet can charge and discharge now (reserve: drawing on the departure
    reserves, each port down to its floor_w). A node's per-phase current limit caps what
    passes up through it phase by phase (each phase's power scaled to the limit: exact for
    single-phase and balanced three-phase ports, an upper bound otherwise)."""
    cdef int32_t i, d, ph, nph
    cdef Port* p
    cdef Node* n
    cdef Node* up
    cdef double w, cut, f, lim, lo
    cdef double* rem
    cdef bint phased = False                  # the phase books only where some node has a limit
    clear_sums(im)
    for i in range(im.n_nodes):
        if im.node[i].phase_limit_a < INFINITY:
            phased = True
            break
    if phased:
        for i in range(im.n_nodes):
            memset(im.node[i].phase_w, 0, sizeof(im.node[i].phase_w))
            memset(im.node[i].phase_a, 0, sizeof(im.node[i].phase_a))
    for i in range(im.n_ports):
        p = &im.port[i]
        n = &im.node[p.evse]
        lo = p.floor_w if reserve else p.min_w
        n.rem_import_w += p.max_w
        n.rem_export_w -= lo
        if not phased:
            continue
        nph = (p.phase_mask & 1) + (p.phase_mask >> 1 & 1) + (p.phase_mask >> 2 & 1)
        if nph == 0 or not p.watts_per_amp > 0.0:
            continue
        for ph in range(3):
            if p.phase_mask & (1 << ph):
                n.phase_w[0][ph] += p.max_w / nph
                n.phase_a[0][ph] += p.max_w / p.watts_per_amp
                n.phase_w[1][ph] -= lo / nph
                n.phase_a[1][ph] -= lo / p.watts_per_amp
    for i in range(im.n_nodes - 1, -1, -1):   # children come after their parents
        n = &im.node[i]
        for d in range(2):
            rem = &n.rem_import_w if d == 0 else &n.rem_export_w
            if n.phase_limit_a < INFINITY:
                cut = 0.0
                for ph in range(3):
                    lim = fmax(n.phase_import_a[ph] if d == 0 else n.phase_export_a[ph], 0.0)
                    if n.phase_a[d][ph] > lim:
                        f = lim / n.phase_a[d][ph]
                        cut += n.phase_w[d][ph] * (1.0 - f)
                        n.phase_w[d][ph] *= f
                        n.phase_a[d][ph] = lim
                rem[0] -= cut
            w = n.import_headroom_w if d == 0 else n.export_headroom_w
            f = 1.0
            if w < rem[0]:
                f = w / rem[0] if rem[0] > 0.0 else 0.0
                rem[0] = w
            if n.parent >= 0:
                up = &im.node[n.parent]
                if d == 0:
                    up.rem_import_w += rem[0]
                else:
                    up.rem_export_w += rem[0]
                if phased:
                    for ph in range(3):
                        up.phase_w[d][ph] += n.phase_w[d][ph] * f
                        up.phase_a[d][ph] += n.phase_a[d][ph] * f
    most_charge[0] = im.node[0].rem_import_w
    most_discharge[0] = im.node[0].rem_export_w


cdef double FLEX_HORIZON_H = 1.0
cdef int32_t FLEX_PORTS_PER_CYCLE = 16


cdef void fleet_energy(Image* im) noexcept nogil:
    """The flexibility envelope: the energy the fleet can take and give over the next hour at
    today's limits. A port takes at most its power for the hour, capped by its energy request
    (or the room left in its battery when it sends none). It gives at most its discharge power for
    the hour, capped by the energy above its minimum SoC and by what its departure allows: giving E
    costs E / discharge power + E / charge power of its slack beyond discharge_reserve_s.
    A report, not a limit: a cycle sums at most FLEX_PORTS_PER_CYCLE ports, so at 256 ports the
    envelope is whole every 16 cycles (16 ms at 1 kHz) instead of costing a pass over every port
    each cycle; up to 16 ports it is whole every cycle."""
    cdef int32_t i, end
    cdef Port* p
    cdef double take, give, slack
    if im.flex_next == 0:
        for i in range(im.n_nodes):
            im.node[i].flex_take_wh = 0.0
            im.node[i].flex_give_wh = 0.0
    end = im.flex_next + FLEX_PORTS_PER_CYCLE
    if end > im.n_ports:
        end = im.n_ports
    for i in range(im.flex_next, end):
        p = &im.port[i]
        take = p.max_w * FLEX_HORIZON_H
        if p.energy_request_wh == p.energy_request_wh:
            take = fmin(take, fmax(p.energy_request_wh, 0.0))
        elif p.soc == p.soc and p.capacity_wh == p.capacity_wh:
            take = fmin(take, fmax((1.0 - p.soc) * p.capacity_wh, 0.0))
        give = -p.min_w * FLEX_HORIZON_H
        if give > 0.0:
            give = fmin(give, fmax((p.soc - p.min_soc) * p.capacity_wh, 0.0))
            slack = p.laxity_s - im.opt.discharge_reserve_s
            if p.max_w > 0.0 and slack < NEVER_S:
                give = fmin(give, fmax(slack, 0.0) * -p.min_w * p.max_w / (3600.0 * (p.max_w - p.min_w)))
            elif p.max_w <= 0.0 and p.energy_request_wh > 0.0:
                give = 0.0
        im.node[p.evse].flex_take_wh += take
        im.node[p.evse].flex_give_wh += give
    im.flex_next = end
    if end == im.n_ports:
        im.flex_next = 0
        pass_up(im, FLEX_HORIZON_H, &im.flex_charge_wh, &im.flex_discharge_wh)


cdef double fleet_target(Image* im, int32_t* tbind, bint* capped) noexcept nogil:
    """The fleet's target this cycle; capped: the fleet cannot do more (its limits bind)."""
    cdef ActiveCommand* c
    cdef double target, up, down, raw, tau, dt, f
    cdef bint ok
    c = &im.grid_cmd[CMD_SETPOINT]
    if c.active:
        target = c.value
        tbind[0] = BIND_SETPOINT
    else:
        target = im.opt.default_fleet_import_w
        tbind[0] = BIND_DEFAULT_PROFILE
    if im.safe_state and target < 0.0:
        target = 0.0
        tbind[0] = BIND_SAFE_STATE
    fleet_energy(im)
    fleet_capability(im, &up, &down, False)
    im.fleet_max_w = up
    im.fleet_min_w = -down
    if tbind[0] == BIND_SETPOINT and target < -down and im.opt.setpoint_draws_reserve > 0.5:
        fleet_capability(im, &up, &down, True)
    target = fmax(fmin(target, up), -down)
    if im.opt.freq_mode != FREQ_OFF:
        f = input_value(im, im.freq_input, &ok)
        raw = frequency_response_raw(im, f) if ok else 0.0
        tau = im.opt.freq_tau_s
        dt = cycle_dt_s(im)
        im.frequency_response_w += (raw - im.frequency_response_w) * (1.0 - exp(-dt / tau) if tau > 0.0 else 1.0)
        if fabs(im.frequency_response_w) > 1e-3:
            target += im.frequency_response_w
            tbind[0] = BIND_FREQUENCY
    c = &im.grid_cmd[CMD_LOAD_SHED]
    if c.active and target > c.value:
        target = c.value
        tbind[0] = BIND_LOAD_SHED
    if im.safe_state and target < 0.0:
        target = 0.0
        tbind[0] = BIND_SAFE_STATE
    capped[0] = target >= up or target <= -down
    return fmax(fmin(target, up), -down)


cdef void sort_ports(Image* im) noexcept nogil:
    # Stable bottom-up merge sort of the persistent order by key: O(n log n)
    # worst case, no allocation, and equal keys keep last cycle's order.
    cdef int32_t n = im.n_ports
    cdef int32_t width = 1
    cdef int32_t lo, mid, hi, a, b, k
    cdef int32_t* src = im.order
    cdef int32_t* dst = im.order_tmp
    cdef int32_t* tmp
    for k in range(1, n):                 # keys change little from cycle to cycle: often in order
        if im.key[src[k - 1]] > im.key[src[k]]:
            break
    else:
        return
    while width < n:
        lo = 0
        while lo < n:
            mid = lo + width if lo + width < n else n
            hi = lo + 2 * width if lo + 2 * width < n else n
            a = lo
            b = mid
            k = lo
            while k < hi:
                if a < mid and (b >= hi or im.key[src[a]] <= im.key[src[b]]):
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


cdef inline bint follows_plan(const Image* im, const Port* p, bint charging, bint guided) noexcept nogil:
    """Fresh guidance plans this port to move power in this direction."""
    if not guided:
        return False
    if charging:
        return p.plan_w > 0.0
    return p.plan_w < 0.0


cdef inline bint plan_draws_reserve(const Image* im) noexcept nogil:
    """An export setpoint may draw on the departure reserves (setpoint_draws_reserve): then a
    port the plan has discharging may go down to its floor_w, not only to its guard (min_w). The
    plan weighed its departure energy against every other EV's, where the unguided draw on the
    reserves takes the same fraction from every port, whether it leaves soon or can charge back
    later."""
    cdef const ActiveCommand* c = &im.grid_cmd[CMD_SETPOINT]
    return c.active and c.value < 0.0 and im.opt.setpoint_draws_reserve > 0.5 and not im.safe_state


cdef inline double guided_discharge_w(const Image* im, const Port* p) noexcept nogil:
    """The most a port the plan has discharging may give (W >= 0), relief not counted."""
    if plan_draws_reserve(im) and p.floor_w < p.min_w:
        return -p.floor_w
    return -p.min_w


cdef double FILL_KEY_END = 1e12     # keys in [0, FILL_KEY_END): the water-filled tier (= NEVER_S)


cdef inline double fill_key(Port* p) noexcept nogil:
    """A charging port's key in the water-filled tier: its limit over its weight (p.weight,
    set here), the order in which the ports reach their limits as the water rises. Its weight:
    its limit without the closed loop's cap (a vehicle near its request, or announcing less,
    gets less) over its reachable energy (kWh, 1 to 1000: min(capacity, energy now + max power
    x time left)) to the power 1.5. The smaller its reach, the larger its share (a kWh raises
    its share of what it could reach the most, as the strict order had it), yet every port gets
    some, and a vehicle that cannot be filled anyway does not crowd out those that can. Not the
    closed loop's cap: a port it caps is given its cap, so it stays short and capped instead of
    probing back up."""
    cdef double stay, reach, soc, q, m, d
    stay = p.departure_in_s if p.departure_in_s == p.departure_in_s else NEVER_S
    reach = p.capacity_wh if p.capacity_wh == p.capacity_wh else NEVER_S
    soc = p.soc if p.soc == p.soc else 0.0
    reach = fmin(fmax(fmin(reach, soc * reach + p.max_w * fmax(stay, 0.0) * (1.0 / 3600.0)) * 1e-3, 1.0), 1e3)
    q = reach * sqrt(reach)
    m = fmax(p.open_max_w, p.max_w)
    d = 1.0 / (q * m)                          # one division for both: m / q and max_w q / m
    p.weight = m * m * d
    return p.max_w * q * q * d


cdef double set_keys(Image* im, bint charging, bint fill) noexcept nogil:
    # Charging, in tiers (lower key first):
    #   fill     every port that still wants energy, water-filled (cycle_arbitrate) by fill_key.
    #            Served one after the other (urgent by least laxity, then smallest reachable
    #            energy), the few first in line took all: a vehicle near full takes less than it
    #            is given (CC-CV) and the closed loop sees it only a settle time later (in EV2Gym:
    #            a 15-minute step), while spread over the fleet each takes what it is given. A
    #            strict urgent tier lost the most: the vehicles about to leave are the ones near
    #            full (bench/ev2gym: tracking error x10, satisfaction lower too).
    #   surplus  satisfied vehicles take what is left, the emptiest first
    # Discharging: fill: water-filled, an equal share each, keyed by limit; not fill (load relief):
    # most slack first (late departure, high SoC).
    # Fresh guidance (guidance.pxi) puts the ports the planner wants moving power in this
    # direction now ahead of the rest, the largest planned share of their power first; the
    # rest keep the order above, except that an urgent EV (0 <= laxity <= urgency window) the
    # plan does not cover (NaN) comes first, by least laxity: the plan weighed a planned port's
    # departure energy against every other EV's. cycle_arbitrate gives planned ports their
    # planned power first and more only when the others cannot take the rest (top_up_planned).
    # A served port keeps a small bonus (hysteresis), and keys are never NaN: a NaN
    # breaks the sort and makes the allocation flip between ports every cycle.
    # fill: the water-filled tier's total weight (p.weight), each target_w zeroed after its key.
    cdef int32_t i
    cdef Port* p
    cdef double soc, key, weights = 0.0
    cdef bint guided = guidance_fresh(im)
    for i in range(im.n_ports):
        p = &im.port[i]
        soc = p.soc if p.soc == p.soc else 0.0
        if (charging and p.max_w <= 0.0) or (not charging and p.min_w >= 0.0
                                              and not (fill and guided_discharge_w(im, p) > 0.0 and follows_plan(im, p, charging, guided))):
            key = 4.0 * NEVER_S
        elif charging and follows_plan(im, p, charging, guided):
            key = -0.5 * NEVER_S - fmin(p.plan_w / p.max_w, 1.0) - (0.01 if p.target_w > 0.0 else 0.0)
        elif follows_plan(im, p, charging, guided):
            key = -2.0 * NEVER_S - fmin(-p.plan_w / guided_discharge_w(im, p), 1.0) - (0.01 if p.target_w < 0.0 else 0.0)
        elif charging:
            if p.energy_request_wh <= 0.0:
                key = 2.0 * NEVER_S + soc
            elif guided and 0.0 <= p.laxity_s <= im.opt.urgency_window_s and not p.plan_w == p.plan_w:
                key = -NEVER_S + p.laxity_s - (STICKY_S if p.target_w > 0.0 else 0.0)
            else:
                key = fill_key(p)
        elif fill:
            key = -p.min_w - p.relief_w
        else:
            key = -p.laxity_s - soc
            if p.target_w < 0.0:
                key -= STICKY_S
        im.key[i] = key
        if fill:
            p.target_w = 0.0
            if 0.0 <= key < FILL_KEY_END:
                if not charging:
                    p.weight = 1.0                 # discharging: an equal share each
                weights += p.weight
    return weights


cdef double port_room(Image* im, Port* p, bint charging, double give, int32_t* b, int32_t* bn) noexcept nogil:
    """give, cut to what every node on the port's path still has room for."""
    cdef int32_t i, a, ph
    cdef double room
    cdef Node* n
    for i in range(p.npath):
        a = p.path[i]
        n = &im.node[a]
        room = n.rem_import_w if charging else n.rem_export_w
        if room < give:
            give = room
            b[0] = BIND_PARENT
            bn[0] = a
        if n.phase_limit_a < INFINITY:
            for ph in range(3):
                if p.phase_mask & (1 << ph):
                    room = n.rem_phase_a[ph] * p.watts_per_amp
                    if room < give:
                        give = room
                        b[0] = BIND_PHASE_CURRENT
                        bn[0] = a
    return give if give > 0.0 else 0.0


cdef void take_room(Image* im, Port* p, bint charging, double give) noexcept nogil:
    cdef int32_t i, ph
    cdef Node* n
    for i in range(p.npath):
        n = &im.node[p.path[i]]
        if charging:
            n.rem_import_w -= give
            n.alloc_w += give
        else:
            n.rem_export_w -= give
            n.alloc_w -= give
        if n.phase_limit_a < INFINITY:
            for ph in range(3):
                if p.phase_mask & (1 << ph):
                    n.rem_phase_a[ph] -= give / p.watts_per_amp


cdef inline double expected_take(const Port* p, bint charging, double give) noexcept nogil:
    """What a port will take of give: a port capped by the closed loop takes what it was seen
    to take (its cap has a margin above that), any other all of it."""
    if charging and p.cap_charge_w > 0.0 and 0.0 <= p.measured_w < give:
        return p.measured_w
    if not charging and p.cap_discharge_w > 0.0 and 0.0 <= -p.measured_w < give:
        return -p.measured_w
    return give


cdef double relieve_overloads(Image* im) noexcept nogil:
    """Non-EV load above a node's import limit (overload_w) or a phase's current limit (overload_a,
    per-phase meters), never in Safe State: V2G ports below it discharge to bring it back within
    the limit, most slack first, each within its own envelope (min SoC, departure energy) and
    every export headroom and phase limit on its path; a port relieves the phases it is wired to.
    The import room above is not credited with it (a vehicle may give less than asked). The
    total, W >= 0."""
    cdef int32_t i, k, a, b, bn, worst, ph
    cdef double need, give, total = 0.0
    cdef bint overloaded = False
    cdef Port* p
    cdef Node* n
    for i in range(im.n_ports):
        im.port[i].relief_w = 0.0
    for i in range(im.n_nodes):
        n = &im.node[i]
        n.need_w = n.overload_w
        overloaded = overloaded or n.overload_w > 0.0
        if n.phase_limit_a < INFINITY:
            for ph in range(3):
                n.need_a[ph] = n.overload_a[ph]
                overloaded = overloaded or n.overload_a[ph] > 0.0
    if not overloaded:
        return 0.0
    set_keys(im, False, False)
    sort_ports(im)
    for k in range(im.n_ports):
        p = &im.port[im.order[k]]
        if p.min_w >= 0.0:
            break                                 # the rest cannot discharge (sorted last)
        need = 0.0
        worst = -1
        for i in range(p.npath):
            a = p.path[i]
            if im.node[a].need_w > need:
                need = im.node[a].need_w
                worst = a
            if im.node[a].phase_limit_a < INFINITY:
                for ph in range(3):
                    if p.phase_mask & (1 << ph) and im.node[a].need_a[ph] * p.watts_per_amp > need:
                        need = im.node[a].need_a[ph] * p.watts_per_amp
                        worst = a
        if worst < 0:
            continue
        b = BIND_RELIEF
        bn = worst
        give = port_room(im, p, False, fmin(-p.min_w, need), &b, &bn)
        if give <= 0.0:
            continue
        take_room(im, p, False, give)
        for i in range(p.npath):
            n = &im.node[p.path[i]]
            n.need_w -= give
            if n.phase_limit_a < INFINITY:
                for ph in range(3):
                    if p.phase_mask & (1 << ph):
                        n.need_a[ph] -= give / p.watts_per_amp
        p.relief_w = give
        p.binding = b
        p.binding_node = bn
        total += give
    return total


cdef double serve(Image* im, Port* p, bint charging, double give, int32_t b, double remaining,
                  int32_t tbind) noexcept nogil:
    """Give p up to give more (W >= 0, bound by b) within every node on its path and the pilot's
    steps; the setpoint's remaining, less what p will take of it."""
    cdef int32_t bn = -1
    cdef double had = p.target_w if charging else -p.target_w - p.relief_w
    if had < 0.0:
        had = 0.0
    if give > remaining:
        give = remaining
        b = tbind
    give = port_room(im, p, charging, give, &b, &bn)
    if p.pilot_step_pct > 0.0 and charging:  # 0 or >= 6 A, in steps the pilot expresses
        give = pilot_floor_a((had + give) / p.watts_per_amp, p.pilot_step_pct) * p.watts_per_amp - had
        if give < 0.0:
            give = 0.0
    if give > 0.0:
        take_room(im, p, charging, give)      # the limits count what a port is given ...
    remaining -= expected_take(p, charging, had + give) - expected_take(p, charging, had)   # ... the setpoint what it will take
    had += give
    p.target_w = had if charging else (-(had + p.relief_w) if had + p.relief_w > 0.0 else 0.0)
    if give > 0.0 or had == 0.0:
        p.binding = b
        p.binding_node = bn
    return remaining


cdef double top_up_planned(Image* im, bint charging, double remaining, int32_t tbind) noexcept nogil:
    """What the ports given their planned power (and less than they may take) still take of
    remaining, in the arbitration's order: a plan made for another target, or ports that take
    less than planned, never leave the fleet short. Returns what is still remaining."""
    cdef int32_t k, b, bn
    cdef double have, extra, total
    cdef Port* p
    for k in range(im.n_ports):
        if remaining <= 1e-6:
            break
        p = &im.port[im.order[k]]
        if p.relief_w > 0.0 or not follows_plan(im, p, charging, True):
            continue
        have = p.target_w if charging else -p.target_w
        extra = fmin((p.max_w if charging else -p.min_w) - have, remaining)
        if extra <= 0.0:
            continue
        b = tbind
        bn = -1
        extra = port_room(im, p, charging, extra, &b, &bn)
        total = have + extra
        if p.pilot_step_pct > 0.0 and charging:
            total = fmax(pilot_floor_a(total / p.watts_per_amp, p.pilot_step_pct) * p.watts_per_amp, have)
        if total <= have:
            continue
        take_room(im, p, charging, total - have)
        remaining -= expected_take(p, charging, total) - expected_take(p, charging, have)
        p.target_w = total if charging else -total
        p.binding = b
        p.binding_node = bn
    return remaining


cdef double draw_reserves(Image* im, double remaining, int32_t tbind) noexcept nogil:
    """An export setpoint the fleet cannot meet within its ports' departure reserves: the rest
    from the reserves (each port down to its floor_w, never below its minimum SoC), every port
    the same fraction of what it has there, then greedily what the nodes left. The rest."""
    cdef int32_t k, rnd
    cdef double total = 0.0, lim, f
    cdef Port* p
    for k in range(im.n_ports):
        p = &im.port[k]
        if p.floor_w < p.min_w and not (p.relief_w > 0.0 and -p.min_w - p.relief_w <= 0.0):
            total += -p.floor_w + p.target_w
    if total <= 0.0:
        return remaining
    f = fmin(remaining / total, 1.0)
    for rnd in range(2):
        for k in range(im.n_ports):
            p = &im.port[im.order[k]]
            if not p.floor_w < p.min_w or (p.relief_w > 0.0 and -p.min_w - p.relief_w <= 0.0):
                continue
            lim = (-p.floor_w + p.target_w) * (f if rnd == 0 else 1.0)
            if lim > 0.0:
                remaining = serve(im, p, False, lim, p.bind_min, remaining, tbind)
            if remaining <= 1e-6:
                return remaining
    return remaining


cdef void cycle_arbitrate(Image* im) noexcept nogil:
    cdef double target, remaining, room, relief, lim, share, w, weights
    cdef int32_t tbind, i, k, b
    cdef bint charging, capped, guided, fill
    cdef Port* p
    cdef Node* n

    target = fleet_target(im, &tbind, &capped)
    guided = guidance_fresh(im)
    im.requested_w = target
    charging = target >= 0.0
    for i in range(im.n_nodes):
        n = &im.node[i]
        n.rem_import_w = n.import_headroom_w - n.overload_w     # < 0: nothing charges below it
        n.rem_export_w = n.export_headroom_w
        if n.phase_limit_a < INFINITY:
            memcpy(n.rem_phase_a, n.phase_export_a, sizeof(n.rem_phase_a))   # relief discharges
        n.alloc_w = 0.0
    relief = relieve_overloads(im)
    if charging:                # relief is not credited to the import room (see relieve_overloads)
        for i in range(im.n_nodes):
            n = &im.node[i]
            if n.phase_limit_a < INFINITY:
                memcpy(n.rem_phase_a, n.phase_import_a, sizeof(n.rem_phase_a))
    weights = set_keys(im, charging, True)
    sort_ports(im)

    # When the fleet cannot do more, the nodes' limits say who gets what. The setpoint is the
    # fleet's: relief counts towards a discharge and is made up by charging elsewhere.
    remaining = INFINITY if capped and target != 0.0 else fabs(target)
    remaining = remaining + relief if charging else fmax(remaining - relief, 0.0)
    # In key order; the water-filled tier (the first to reach its limit first) each at most its
    # weighted share of what is left, so the shares of those that cannot take theirs go to the
    # rest. Then, if the nodes cut some below their share or a capped port will take less, a
    # greedy pass over the tier gives the rest: the allocation stays exact (the tree's limits
    # are a polymatroid, so is what they leave). Not when the fleet is capped: the first pass
    # was already greedy.
    for k in range(im.n_ports):
        p = &im.port[im.order[k]]
        fill = 0.0 <= im.key[im.order[k]] < FILL_KEY_END
        share = INFINITY
        if fill:
            w = p.weight
            share = remaining * w / weights if weights > 0.0 else INFINITY
            weights -= w
        if p.relief_w > 0.0 and (charging or -p.min_w - p.relief_w <= 0.0):
            p.target_w = -p.relief_w              # binding and node: relieve_overloads'
            continue
        lim = p.max_w if charging else -p.min_w - p.relief_w
        b = p.bind_max if charging else p.bind_min
        if follows_plan(im, p, charging, guided):
            if not charging:
                lim = guided_discharge_w(im, p) - p.relief_w
            if fabs(p.plan_w) < lim:
                lim = fabs(p.plan_w)              # its planned power first (top_up_planned)
                b = BIND_GUIDANCE
        if share < lim:
            lim = share
            b = tbind
        remaining = serve(im, p, charging, lim, b, remaining, tbind)
    if 1e-6 < remaining < INFINITY:
        for k in range(im.n_ports):
            p = &im.port[im.order[k]]
            if not 0.0 <= im.key[im.order[k]] < FILL_KEY_END or (p.relief_w > 0.0 and (charging or -p.min_w - p.relief_w <= 0.0)):
                continue
            lim = p.max_w - p.target_w if charging else -p.min_w + p.target_w
            if lim > 0.0:
                remaining = serve(im, p, charging, lim, p.bind_max if charging else p.bind_min, remaining, tbind)
            if remaining <= 1e-6:
                break
    if guided:
        remaining = top_up_planned(im, charging, remaining, tbind)
    if (remaining > 1e-6 and not charging and tbind == BIND_SETPOINT and im.opt.setpoint_draws_reserve > 0.5):
        remaining = draw_reserves(im, remaining, tbind)

    for i in range(im.n_nodes):
        n = &im.node[i]
        room = n.rem_import_w if charging else n.rem_export_w
        if room <= 1e-9 * (n.import_headroom_w + n.export_headroom_w) + 1e-6:
            n.binding = n.bind_import if charging else n.bind_export
        elif n.phase_limit_a < INFINITY and fmin(fmin(n.rem_phase_a[0], n.rem_phase_a[1]), n.rem_phase_a[2]) <= 1e-9:
            n.binding = BIND_PHASE_CURRENT
        elif remaining <= 1e-6:
            n.binding = tbind
        else:
            n.binding = BIND_CHILDREN
    im.fleet_target_w = im.node[0].alloc_w
    im.site_binding = im.node[0].binding
