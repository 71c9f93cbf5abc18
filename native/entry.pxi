# entry: arbitrate() for callers outside the loop (benchmarks, other planners):
# one cycle's interlock and arbitration, run by the cycle's own code over a
# scratch image with one node (the given limits) and the given ports.

cdef Image* _scratch = NULL
cdef int SCRATCH_FIELDS = 10     # the port sources arbitrate() fills, in SRC_PORT_* order (to power_w)
cdef int64_t _last_now_ns = 0    # the previous call's time, and its number of ports (-1: none)
cdef Py_ssize_t _last_n = -1


def configure_arbitrate(**options):
    """Control options for arbitrate_rows() (v2g_rt.arbitration passes site.Control's defaults)."""
    global _scratch
    if _scratch == NULL:
        _scratch = new_image(1_000_000)
    set_options(&_scratch.opt, options)


def arbitrate_rows(const uint8_t[::1] connected, const double[::1] soc, const double[::1] capacity_wh,
                   const double[::1] energy_request_wh, const double[::1] departure_in_s,
                   const double[::1] max_charge_w, const double[::1] max_discharge_w,
                   const double[::1] min_soc, const uint8_t[::1] v2g, const double[::1] measured_w,
                   double now_s, double import_limit_w, double export_limit_w, double setpoint_w,
                   double hold_s, double[::1] out):
    """Validated columns in, W per port out (+ charge). setpoint_w NaN: charge within limits;
    hold_s: how long the answer holds at the EVs (energy caps); NaN in energy_request_wh or
    measured_w: unknown. A call with as many ports as the previous one and a later now_s
    continues its closed loop (each port's last answer is what it was given, measured_w what it
    took); any other call starts afresh. The caller serialises calls (one scratch image)."""
    global _scratch, _last_now_ns, _last_n
    cdef Py_ssize_t n = connected.shape[0]
    cdef Py_ssize_t i
    cdef int k
    cdef Image* im
    cdef Port* p
    cdef Input* x
    cdef double cols[10]
    cdef double cap_charge, cap_discharge, given
    cdef int64_t short_since
    cdef bint carry, known
    if n > MAX_PORTS:
        raise ValueError(f"{n} ports; at most {MAX_PORTS}")
    if _scratch == NULL:
        _scratch = new_image(1_000_000)
    im = _scratch
    im.now_ns = v2g_s_to_ns(now_s)
    im.opt.output_hold_ns = v2g_s_to_ns(hold_s)
    carry = n == _last_n and im.now_ns > _last_now_ns
    im.last_now_ns = _last_now_ns if carry else 0
    im.n_nodes = 1
    im.n_ports = <int32_t>n
    im.n_inputs = <int32_t>(n * SCRATCH_FIELDS)
    im.n_upstreams = 0
    im.node[0].parent = -1
    im.node[0].meter = -1
    im.node[0].heatsink = -1
    im.node[0].phase_limit_a = INFINITY
    im.node[0].import_limit_w = import_limit_w
    im.node[0].export_limit_w = export_limit_w
    im.grid_cmd[CMD_SETPOINT].active = setpoint_w == setpoint_w
    im.grid_cmd[CMD_SETPOINT].value = setpoint_w
    im.grid_cmd[CMD_SETPOINT].expires_ns = INT64_MAX
    with nogil:
        for i in range(n):
            p = &im.port[i]
            cap_charge, cap_discharge = p.cap_charge_w, p.cap_discharge_w
            short_since, given = p.short_since_ns, p.setpoint_w
            steady, steady_since = p.steady_w, p.steady_since_ns
            memset(p, 0, sizeof(Port))
            if carry and connected[i]:       # the closed loop goes on: what it was given, its caps
                p.cap_charge_w, p.cap_discharge_w = cap_charge, cap_discharge
                p.short_since_ns, p.setpoint_w = short_since, given
                p.steady_w, p.steady_since_ns = steady, steady_since
                p.contactor_closed = 1
            p.npath = 1
            p.phase_mask = 7
            p.watts_per_amp = 690.0
            p.rating_charge_w = max_charge_w[i]
            p.rating_discharge_w = max_discharge_w[i]
            p.binding_node = -1
            cols[0] = connected[i]
            cols[1] = soc[i]
            cols[2] = capacity_wh[i]
            cols[3] = energy_request_wh[i]
            cols[4] = departure_in_s[i]
            cols[5] = max_charge_w[i]
            cols[6] = max_discharge_w[i]
            cols[7] = min_soc[i]
            cols[8] = v2g[i]
            cols[9] = measured_w[i]
            for k in range(N_PORT_SOURCES):
                p.src[k] = -1
            for k in range(SCRATCH_FIELDS):
                p.src[k] = <int32_t>(i * SCRATCH_FIELDS + k)
                x = &im.input[i * SCRATCH_FIELDS + k]
                known = cols[k] == cols[k]          # NaN: unknown
                x.value = cols[k]
                x.fresh_until_ns = INT64_MAX if known else INT64_MIN
                im.input_stamp[i * SCRATCH_FIELDS + k].t_ns = im.now_ns
                im.input_stamp[i * SCRATCH_FIELDS + k].received = known
            im.order[i] = <int32_t>i
        cycle_interlock(im)
        cycle_arbitrate(im)
        for i in range(n):
            out[i] = im.port[i].target_w
            im.port[i].setpoint_w = out[i]
    _last_n, _last_now_ns = n, im.now_ns
