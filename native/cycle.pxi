# cycle: read -> update (interlock, arbitrate, shape) -> publish over the image.
#
# read     drains every input: CAN frames, GPIO edges and PLC MMEs (with the
#          write stage's frames, probes and line sets, the only system calls
#          of a cycle), commands, measurements
# update   the control law: interlock, arbitration, ramps; no system call (a
#          test runs it alone under seccomp strict mode)
# write    hands each port's output to its link: the output mailbox (and its
#          eventfd) for links served by Python, a J1939 setpoint frame for CAN,
#          a GPIO contactor drive line, a pilot's duty for the I/O thread to write (PWM)
# publish  the snapshot readers take
#
# One function, cycle_run(), is the whole control law. The real-time scheduler,
# virtual-time stepping, arbitrate(), the benchmarks and the tests all call it
# (or its stages); nothing of the control law exists in Python. Everything here
# runs without the GIL, allocates nothing and does work bounded by the
# configured number of ports, nodes and sources.

from libc.math cimport fabs, copysign, NAN

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


# ---------------------------------------------------------------- read

cdef void apply_command(Image* im, const Command* c) noexcept nogil:
    im.commands_applied += 1
    im.command_digest += c.id_hash
    if c.kind < N_GRID_COMMANDS:
        grid_command(im, c)                  # its window: now, or queued (schedule.pxi)
        return
    if c.expires_ns <= im.now_ns:
        im.commands_expired += 1
        return
    if c.kind == CMD_CANCEL:
        grid_cancel(im, c)
    elif c.kind == CMD_RESET_FAULT:
        if im.port[c.port].latch_seq <= c.latch_seq:
            im.port[c.port].faults &= ~(FAULT_LATCHED | FAULT_SESSION)
    elif c.kind == CMD_LATCH_FAULT:
        port_latch(im, &im.port[c.port], (<uint32_t>c.value) & FAULT_PERSISTENT)
    elif c.kind == CMD_DISABLE_PORT:
        im.port[c.port].faults |= FAULT_OUT_OF_SERVICE
    elif c.kind == CMD_ENABLE_PORT:
        im.port[c.port].faults &= ~FAULT_OUT_OF_SERVICE


cdef void cycle_read(Image* im, Io* io) noexcept nogil:
    cdef Command c
    cdef int n = 0
    cdef int32_t w, i
    cdef int32_t nwords = (im.n_inputs + 63) >> 6
    cdef uint64_t bits
    cdef double v
    cdef int64_t t
    can_drain(im, &io.can, &io.canw)
    gpio_drain(im, &io.gpio)
    plc_drain(im, &io.plc)
    while n < CMD_RING and ring_pop(&im.ex.ring, &c):
        apply_command(im, &c)
        n += 1
    schedule_due(im)
    guidance_take(im)
    for w in range(nwords):
        if v2g_load_relaxed(&im.ex.dirty[w]) == 0:
            continue
        bits = v2g_exchange(&im.ex.dirty[w], 0)
        while bits:
            i = (w << 6) + v2g_ctz64(bits)
            bits &= bits - 1
            if slot_read(&im.ex.slot[i], &v, &t):
                input_take(im, i, v, t)
                im.measurements_applied += 1
    for n in range(N_GRID_COMMANDS):
        if im.grid_cmd[n].active and im.now_ns >= im.grid_cmd[n].expires_ns:
            im.grid_cmd[n].active = 0
            im.commands_expired += 1


# ---------------------------------------------------------------- update: shaping

cdef void cycle_shape(Image* im) noexcept nogil:
    # Ramps and deadband shape only increases of magnitude: a reduction is a
    # limit speaking and goes out at once; a reversal passes through zero. The
    # site ramp scales all increases of a cycle alike when their sum is too big.
    cdef double dt_s = cycle_dt_s(im)
    cdef double step = im.opt.port_ramp_w_per_s * dt_s
    cdef double site_step = im.opt.site_ramp_w_per_s * dt_s
    cdef double prev, tgt, base, duty, rise = 0.0, scale = 1.0
    cdef int32_t i
    cdef Port* p
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
        p.ramp_base_w = base
        p.setpoint_w = tgt
        rise += fabs(tgt) - fabs(base)
    if rise > site_step:
        scale = site_step / rise
    im.fleet_w = 0.0
    im.ports_charging = 0
    im.ports_discharging = 0
    for i in range(im.n_ports):
        p = &im.port[i]
        if scale < 1.0 and fabs(p.setpoint_w) > fabs(p.ramp_base_w):
            p.setpoint_w = p.ramp_base_w + (p.setpoint_w - p.ramp_base_w) * scale
            p.binding = BIND_SITE_RAMP
        if p.pilot_step_pct > 0.0:               # a ramp's steps too are currents a pilot offers,
            p.setpoint_w = pilot_floor_a(p.setpoint_w / p.watts_per_amp, p.pilot_step_pct) * p.watts_per_amp
            if p.setpoint_w == 0.0 and p.target_w > 0.0:     # and the first is 6 A, none less
                p.setpoint_w = pilot_floor_a(fmin(p.target_w / p.watts_per_amp, PILOT_MIN_A),
                                             p.pilot_step_pct) * p.watts_per_amp
            duty = pilot_duty_pct(p.setpoint_w / p.watts_per_amp)   # 0: below 6 A, none offered
            p.pilot_duty_pct = duty if duty > 0.0 else 100.0        # no current: a steady +12 V
        im.fleet_w += p.setpoint_w
        if p.setpoint_w > 0.0:
            im.ports_charging += 1
        elif p.setpoint_w < 0.0:
            im.ports_discharging += 1


# ---------------------------------------------------------------- write

cdef inline void output_put(Outbox* ob, int32_t i, double w, int64_t valid, int64_t closed,
                            int64_t now_ns) noexcept nogil:
    cdef PortOutput* o = &ob.out[i]
    cdef uint64_t seq = o.seq
    # A Python link that left its last output untaken for half a validity is not taking them.
    if (ob.link[i] == OUTPUT_PYTHON and o.sequence != 0 and v2g_load_acquire(&o.taken) != o.sequence
            and 2 * v2g_sat_sub(now_ns, o.put_ns) >= v2g_sat_sub(o.valid_until_ns, o.put_ns)):
        bump(&o.refused, 1)
    o.put_ns = now_ns
    v2g_store_relaxed(&o.seq, seq + 1)
    v2g_fence_release()
    v2g_store_f64(&o.setpoint_w, w)
    v2g_store_i64(&o.valid_until_ns, valid)
    v2g_store_i64(&o.contactor_closed, closed)
    v2g_store_relaxed(&o.sequence, o.sequence + 1)
    v2g_store_release(&o.seq, seq + 2)


cdef inline void outbox_signal(Outbox* ob) noexcept nogil:
    cdef uint64_t one = 1
    if ob.efd < 0:
        return
    if write(ob.efd, &one, sizeof(one)) == sizeof(one):
        bump(&ob.signals, 1)
    else:
        bump(&ob.signal_errors, 1)


cdef void cycle_write(Image* im, Io* io) noexcept nogil:
    """Hand a port's output over when it moved past the deadband, went to or from 0 W, its
    contactor command changed, or half its validity has passed (the keep-alive that keeps the
    far side's dead-man from firing while we run); wake the Python links once if any did."""
    cdef Outbox* ob = &im.outbox
    cdef int64_t valid = v2g_sat_add(im.now_ns, im.opt.output_hold_ns)
    cdef int64_t half = im.opt.output_hold_ns // 2
    cdef double deadband = im.opt.deadband_w
    cdef bint moved = False
    cdef int32_t i
    cdef Port* p
    cdef PortOutput* o
    for i in range(im.n_ports):
        p = &im.port[i]
        o = &ob.out[i]
        if (o.sequence == 0 or fabs(p.setpoint_w - o.setpoint_w) > deadband
                or (p.setpoint_w == 0.0) != (o.setpoint_w == 0.0) or p.contactor_closed != o.contactor_closed
                or v2g_sat_sub(valid, o.valid_until_ns) >= half):
            output_put(ob, i, p.setpoint_w, valid, p.contactor_closed, im.now_ns)
            moved = True
    can_write(im, &io.canw, io.can.fd)
    gpio_write(im, &io.gpio)
    pwm_stage(im, &io.pwm, False)
    plc_probe(im, &io.plc)
    if moved:
        outbox_signal(ob)


# ---------------------------------------------------------------- publish

cdef void snapshot_fill(Image* im, Snapshot* s) noexcept nogil:
    cdef int32_t i
    cdef Port* p
    cdef Node* n
    cdef PortRow* r
    cdef NodeRow* nr
    cdef bint fresh = guidance_fresh(im)
    cdef int64_t valid = v2g_sat_add(im.now_ns, im.opt.output_hold_ns)
    s.site.cycle = im.cycle
    s.site.t_ns = im.now_ns
    s.site.setpoint_w = im.grid_cmd[CMD_SETPOINT].value if im.grid_cmd[CMD_SETPOINT].active else NAN
    s.site.requested_w = im.requested_w
    s.site.fleet_target_w = im.fleet_target_w
    s.site.fleet_w = im.fleet_w
    s.site.fleet_measured_w = im.fleet_measured_w
    s.site.taper_span = im.taper_span
    s.site.import_limit_w = im.import_limit_w
    s.site.export_limit_w = im.export_limit_w
    s.site.load_shed_w = im.grid_cmd[CMD_LOAD_SHED].value if im.grid_cmd[CMD_LOAD_SHED].active else NAN
    s.site.frequency_hz = im.input[im.freq_input].value if input_fresh(im, im.freq_input) else NAN
    s.site.frequency_response_w = im.frequency_response_w
    s.site.fleet_max_w = im.fleet_max_w
    s.site.fleet_min_w = im.fleet_min_w
    s.site.flex_charge_wh = im.flex_charge_wh
    s.site.flex_discharge_wh = im.flex_discharge_wh
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
        nr.overload_w = n.overload_w
        nr.fleet_w = n.alloc_w
        nr.measured_w = im.input[n.meter].value if input_fresh(im, n.meter) else NAN
        nr.non_ev_w = n.non_ev_w
        nr.non_ev_phase_a[0] = n.non_ev_phase_a[0]
        nr.non_ev_phase_a[1] = n.non_ev_phase_a[1]
        nr.non_ev_phase_a[2] = n.non_ev_phase_a[2]
        nr.derate = n.derate
        nr.temperature_c = n.temperature_c
        nr.binding = n.binding
        nr.faults = n.faults
    for i in range(im.n_ports):
        p = &im.port[i]
        r = &s.port[i]
        r.cycle = im.cycle
        r.valid_until_ns = valid
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
        r.contactor_closed = p.contactor_closed
        r.latch_seq = p.latch_seq
        r.capacity_wh = p.capacity_wh
        r.min_soc = p.min_soc
        r.plan_w = p.plan_w if fresh else NAN
        r.ev_max_charge_w = p.ev_max_charge_w
        r.ev_max_discharge_w = p.ev_max_discharge_w
        r.given_w = p.given_w
    s.site.latch_counter = im.latch_counter
    s.site.setpoint_expires_ns = im.grid_cmd[CMD_SETPOINT].expires_ns if im.grid_cmd[CMD_SETPOINT].active else 0
    s.site.guidance_expires_ns = im.guide_expires_ns
    s.site.guidance_taken_ns = im.guide_taken_ns
    s.site.guidance_id = im.guide_id
    s.site.guidance_fresh = fresh
    s.site.upstreams_waiting = im.upstreams_waiting
    s.site.upstreams_lost = im.upstreams_lost
    for i in range(N_GRID_COMMANDS):
        s.active[i] = im.grid_cmd[i]
    if s.site.schedule_version != im.sched_version:     # this buffer's copy is older: the queue changed
        memcpy(s.sched, im.sched, sizeof(im.sched))
        s.site.schedule_version = im.sched_version
    s.site.schedule_refused = im.sched_refused


cdef void cycle_publish(Image* im) noexcept nogil:
    snapshot_fill(im, snap_back(&im.snap))
    snap_publish(&im.snap)


cdef void publish_stopped(Image* im, Io* io) noexcept nogil:
    """After the last cycle: publish outputs that are safe to hold for ever (no power,
    contactors open, valid until now) so no reader acts on the last live setpoints."""
    cdef Snapshot* s = snap_back(&im.snap)
    cdef int32_t i
    cdef PortRow* r
    snapshot_fill(im, s)
    s.site.safe_state |= SAFE_STOPPED
    s.site.fleet_target_w = 0.0
    s.site.fleet_w = 0.0
    s.site.fleet_max_w = 0.0
    s.site.fleet_min_w = 0.0
    s.site.flex_charge_wh = 0.0
    s.site.flex_discharge_wh = 0.0
    s.site.ports_charging = 0
    s.site.ports_discharging = 0
    for i in range(im.n_ports):
        r = &s.port[i]
        r.valid_until_ns = im.now_ns
        r.setpoint_w = 0.0
        r.target_w = 0.0
        r.min_w = 0.0
        r.max_w = 0.0
        r.contactor_closed = 0
        output_put(&im.outbox, i, 0.0, im.now_ns, 0, im.now_ns)
    snap_publish(&im.snap)
    can_write(im, &io.canw, io.can.fd)
    gpio_write(im, &io.gpio)
    pwm_stage(im, &io.pwm, True)
    outbox_signal(&im.outbox)


cdef void stop_begin(Image* im, bint hard) noexcept nogil:
    """From the next cycle on: 0 W at every port, each contactor opened as its current falls
    (interlock: stop_may_open), all by stop_timeout; a hard stop opens them at once."""
    if not im.stopping:
        im.stopping = 1
        im.stop_deadline_ns = v2g_sat_add(im.now_ns, im.opt.stop_timeout_ns)
        im.stop_cycle = im.cycle
    if hard:
        im.stop_hard = 1


cdef bint stop_done(Image* im) noexcept nogil:
    cdef int32_t i
    if not im.stopping:
        return False
    for i in range(im.n_ports):
        if im.port[i].contactor_closed:
            return False
    return True


cdef inline void cycle_begin(Image* im, int64_t now_ns) noexcept nogil:
    im.cycle += 1
    im.last_now_ns = im.now_ns
    im.now_ns = now_ns


cdef void cycle_update(Image* im) noexcept nogil:
    cycle_interlock(im)
    cycle_arbitrate(im)
    cycle_shape(im)


cdef inline void stage_record(Stats* st, int stage, int64_t ns) noexcept nogil:
    cdef int64_t b = ns // STAGE_BIN_NS
    if b < 0:
        b = 0
    elif b > HIST_BINS:
        b = HIST_BINS
    v2g_store_relaxed(&st.stage_hist[stage][b], st.stage_hist[stage][b] + 1)


cdef void cycle_run(Image* im, Io* io, int64_t now_ns) noexcept nogil:
    """One cycle at now_ns; each stage's compute time (CLOCK_MONOTONIC, a vDSO call, no
    system call) goes to its histogram."""
    cdef int64_t t0, t1, t2, t3, t4
    cycle_begin(im, now_ns)
    v2g_debug_alloc()
    t0 = mono_ns()
    cycle_read(im, io)
    t1 = mono_ns()
    cycle_update(im)
    t2 = mono_ns()
    cycle_write(im, io)
    t3 = mono_ns()
    cycle_publish(im)
    t4 = mono_ns()
    stage_record(&im.stats, STAGE_READ, t1 - t0)
    stage_record(&im.stats, STAGE_UPDATE, t2 - t1)
    stage_record(&im.stats, STAGE_WRITE, t3 - t2)
    stage_record(&im.stats, STAGE_PUBLISH, t4 - t3)
