# clock: CLOCK_MONOTONIC, the only time inside the loop (clock.pxi).

cdef int64_t mono_ns() noexcept nogil                # now, ns
cdef void sleep_until(int64_t t_ns) noexcept nogil   # absolute: errors never accumulate
