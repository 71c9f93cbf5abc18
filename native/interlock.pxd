# interlock: each port's and node's allowed envelope from local physics (interlock.pxi).

cdef bint input_fresh(const Image* im, int32_t i) noexcept nogil     # received and within its max age
cdef double input_value(const Image* im, int32_t i, bint* ok) noexcept nogil   # NaN unless fresh
cdef double cycle_dt_s(const Image* im) noexcept nogil               # since the last cycle, s
cdef void port_latch(Image* im, Port* p, uint32_t bits) noexcept nogil
cdef void cycle_interlock(Image* im) noexcept nogil
