# guidance: the horizon planner's advice, one planned power per port, valid until an expiry in
# loop time. The planner (a service) writes the exchange's block under a seqlock; the read stage
# copies a complete new version into the ports (bounded: one row per port, only when it changed)
# and the arbitration orders ports by it while it is fresh. Advice orders, never limits: every
# envelope the interlock found still binds, and expired, torn or absent advice leaves the plain
# arbitration in charge (the planner may be late, slow or dead).

from libc.math cimport NAN


cdef void guidance_write(Guidance* g, const double* plan_w, int32_t n, int64_t expires_ns,
                         uint64_t plan_id) noexcept nogil:
    # One writer (the controller holds a lock around it); the loop never waits for it.
    cdef int32_t i
    cdef uint64_t seq = v2g_load_relaxed(&g.seq)
    v2g_store_release(&g.seq, seq + 1)
    v2g_fence_release()
    for i in range(MAX_PORTS):
        v2g_store_f64(&g.plan_w[i], plan_w[i] if i < n else NAN)
    v2g_store_i64(&g.expires_ns, expires_ns)
    v2g_store_relaxed(&g.plan_id, plan_id)
    v2g_store_release(&g.seq, seq + 2)


cdef void guidance_take(Image* im) noexcept nogil:
    # One attempt per cycle: a block caught mid-write is taken next cycle.
    cdef Guidance* g = &im.ex.guidance
    cdef uint64_t s1 = v2g_load_acquire(&g.seq)
    cdef int32_t i
    cdef int64_t expires
    cdef uint64_t plan_id
    if s1 & 1 or s1 == im.guide_seq:
        return
    for i in range(im.n_ports):
        im.guide_tmp[i] = v2g_load_f64(&g.plan_w[i])
    expires = v2g_load_i64(&g.expires_ns)
    plan_id = v2g_load_relaxed(&g.plan_id)
    v2g_fence_acquire()
    if v2g_load_relaxed(&g.seq) != s1:
        return
    for i in range(im.n_ports):
        im.port[i].plan_w = im.guide_tmp[i]
    im.guide_seq = s1
    im.guide_expires_ns = expires
    im.guide_id = plan_id
    im.guide_taken_ns = im.now_ns


cdef inline bint guidance_fresh(const Image* im) noexcept nogil:
    return im.guide_seq != 0 and im.now_ns < im.guide_expires_ns
