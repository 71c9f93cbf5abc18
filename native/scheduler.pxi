# scheduler: the fixed-step real-time loop and its statistics.
#
# The loop thread is created by Core.start() and runs without the GIL from its
# first instruction to its last: sleep to the planned wake on CLOCK_MONOTONIC
# (absolute, so errors never accumulate), run the cycle, record latency and
# compute time, plan the next wake. An overrun skips whole periods instead of
# bursting to catch up. Asked to stop, it keeps cycling with 0 W everywhere until
# every contactor is open (stop_begin), then publishes the stopped outputs.

cdef extern from "<string.h>" nogil:
    void explicit_bzero(void* s, size_t n)   # a memset the compiler may not drop

cdef enum:
    STACK_PREFAULT_BYTES = 128 * 1024


cdef inline void hist_add(uint64_t* hist, int64_t ns) noexcept nogil:
    cdef int64_t b = ns // 1000
    if b < 0:
        b = 0
    elif b > HIST_BINS:
        b = HIST_BINS
    bump(&hist[b], 1)


cdef void stats_record(Stats* st, int64_t planned, int64_t wake, int64_t end) noexcept nogil:
    cdef int64_t lat = wake - planned
    cdef int64_t cmp = end - wake
    cdef Trace* tr = &st.trace[st.trace_head & (TRACE_LEN - 1)]
    hist_add(st.lat_hist, lat)
    hist_add(st.cmp_hist, cmp)
    if lat < st.lat_min_ns:
        v2g_store_i64(&st.lat_min_ns, lat)
    if lat > st.lat_max_ns:
        v2g_store_i64(&st.lat_max_ns, lat)
    if cmp < st.cmp_min_ns:
        v2g_store_i64(&st.cmp_min_ns, cmp)
    if cmp > st.cmp_max_ns:
        v2g_store_i64(&st.cmp_max_ns, cmp)
    bump(&st.lat_sum_ns, <uint64_t>(lat if lat > 0 else 0))
    bump(&st.cmp_sum_ns, <uint64_t>cmp)
    tr.cycle = st.cycles + 1
    tr.planned_ns = planned
    tr.wake_ns = wake
    tr.end_ns = end
    v2g_store_release(&st.trace_head, st.trace_head + 1)
    bump(&st.cycles, 1)


cdef void* loop_main(void* arg) noexcept nogil:
    cdef Runner* r = <Runner*>arg
    cdef Image* im = r.im
    cdef Io* io = r.io
    cdef Stats* st = &im.stats
    cdef char stack_touch[STACK_PREFAULT_BYTES]
    cdef int64_t period = im.opt.period_ns
    cdef int64_t planned, wake, end, missed
    cdef uint64_t stop
    explicit_bzero(stack_touch, STACK_PREFAULT_BYTES)
    pthread_setname_np(pthread_self(), b"v2g-cycle")
    # Without SCHED_FIFO the kernel may defer our wake by the 50 us default slack.
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    v2g_store_i64(&r.tid, gettid())
    planned = mono_ns() + period
    while True:
        sleep_until(planned)
        wake = mono_ns()
        stop = v2g_load_acquire(&r.stop)
        if stop:
            stop_begin(im, stop == STOP_HARD)
        cycle_run(im, io, wake)
        end = mono_ns()
        stats_record(st, planned, wake, end)
        if stop_done(im):
            break
        planned += period
        if end > planned:
            missed = (end - planned) // period + 1
            planned += missed * period
            bump(&st.overruns, 1)
            bump(&st.skipped_periods, <uint64_t>missed)
            bump(&st.overrun_streak, 1)
        elif st.overrun_streak:
            v2g_store_relaxed(&st.overrun_streak, 0)
    publish_stopped(im, io)
    return NULL
