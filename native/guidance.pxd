# guidance: the horizon planner's advice to the arbitration, with an expiry (guidance.pxi).

cdef void guidance_write(Guidance* g, const double* plan_w, int32_t n, int64_t expires_ns,
                         uint64_t plan_id) noexcept nogil
cdef void guidance_take(Image* im) noexcept nogil
cdef bint guidance_fresh(const Image* im) noexcept nogil
