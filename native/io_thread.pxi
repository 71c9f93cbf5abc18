# io_thread: one native thread for every bus whose transfers can block (I2C, SPI, PWM sysfs,
# GPIO expanders), so the loop never makes one.
#
# Each device is a job (a kind per bus, an index in that bus's table) with its own period.
# The schedule is fixed at start-up (io_schedule: first runs spread over the periods so
# transfers do not bunch); a pass runs every job that is due, each once, so a pass is bounded
# by the number of jobs; then the thread sleeps until the next is due (SCHED_FIFO one step
# below the loop). A job that falls behind (a stuck bus) skips its missed periods, never
# bursts. Virtual time runs the same jobs from poll_io() in the stepping thread, once per
# period passed. A job's cost and the periods it achieved are kept for the benchmarks.

cdef int32_t io_add_job(IoThread* t, int32_t kind, int32_t index, int64_t period_ns) noexcept nogil:
    """The job's number, or -1 when the schedule is full."""
    if t.n >= MAX_IO_JOBS:
        return -1
    cdef IoJob* j = &t.job[t.n]
    memset(j, 0, sizeof(IoJob))
    j.kind, j.index, j.period_ns = kind, index, period_ns
    t.n += 1
    return t.n - 1


cdef void io_schedule(IoThread* t, int64_t start_ns) noexcept nogil:
    cdef int32_t k
    for k in range(t.n):
        t.job[k].next_ns = start_ns + t.job[k].period_ns * k // t.n


cdef void io_job_run(Io* io, IoJob* j, int64_t t_ns) noexcept nogil:
    cdef int64_t c0 = mono_ns()
    cdef int64_t cost
    if j.kind == JOB_I2C:
        i2c_read_sensor(io.iot.ex, &io.i2c.s[j.index], t_ns)
    elif j.kind == JOB_SPI:
        spi_read_channel(io.iot.ex, &io.spi.c[j.index], t_ns)
    elif j.kind == JOB_PWM:
        pwm_service(&io.pwm.ch[j.index])
    else:
        gpio_thread_drive(&io.gpio)
    cost = mono_ns() - c0
    bump(&j.runs, 1)
    bump(&j.cost_sum_ns, <uint64_t>cost)
    if cost > j.cost_max_ns:
        v2g_store_i64(&j.cost_max_ns, cost)
    if j.last_run_ns:
        bump(&j.gap_sum_ns, <uint64_t>(t_ns - j.last_run_ns))
        if t_ns - j.last_run_ns > j.gap_max_ns:
            v2g_store_i64(&j.gap_max_ns, t_ns - j.last_run_ns)
    j.last_run_ns = t_ns


cdef int64_t io_pass(Io* io, int64_t now_ns, bint catch_up) noexcept nogil:
    """Run the jobs due by now_ns: each once (real time: its stamp is the clock when it runs),
    or once per period passed (catch_up: virtual time, stamped now_ns). Returns when the next
    job is due."""
    cdef IoThread* t = &io.iot
    cdef int64_t earliest = INT64_MAX
    cdef int64_t t0 = mono_ns()
    cdef bint ran = False
    cdef IoJob* j
    cdef int32_t k
    for k in range(t.n):
        j = &t.job[k]
        while j.next_ns <= now_ns:
            ran = True
            io_job_run(io, j, now_ns if catch_up else mono_ns())
            j.next_ns += j.period_ns
            if not catch_up:
                if j.next_ns <= now_ns:
                    bump(&j.skipped, <uint64_t>((now_ns - j.next_ns) // j.period_ns + 1))
                    j.next_ns = now_ns + j.period_ns
                break
        if j.next_ns < earliest:
            earliest = j.next_ns
    if ran:
        t0 = mono_ns() - t0
        bump(&t.passes, 1)
        bump(&t.pass_sum_ns, <uint64_t>t0)
        if t0 > t.pass_max_ns:
            v2g_store_i64(&t.pass_max_ns, t0)
    return earliest


cdef void io_run_kind(Io* io, int32_t kind, int64_t t_ns) noexcept nogil:
    cdef int32_t k
    for k in range(io.iot.n):
        if io.iot.job[k].kind == kind:
            io_job_run(io, &io.iot.job[k], t_ns)


cdef void* io_thread_main(void* arg) noexcept nogil:
    cdef Io* io = <Io*>arg
    cdef int64_t due, now
    pthread_setname_np(pthread_self(), b"v2g-io")
    v2g_store_i64(&io.iot.tid, gettid())
    while not v2g_load_acquire(&io.iot.stop):
        due = io_pass(io, mono_ns(), False)
        now = mono_ns()
        if due > now:
            # Never sleep past a stop request by more than 50 ms.
            sleep_until(due if due - now < 50_000_000 else now + 50_000_000)
    # The loop has stopped: the pilots take its safe duty, the sleeping chips' contactors open.
    io_run_kind(io, JOB_PWM, mono_ns())
    io_run_kind(io, JOB_GPIO, mono_ns())
    return NULL
