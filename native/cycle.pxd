# cycle: read -> update (interlock, arbitrate, shape) -> write -> publish over the image (cycle.pxi).

cdef void cycle_begin(Image* im, int64_t now_ns) noexcept nogil     # the cycle's number and time
cdef void cycle_read(Image* im, Io* io) noexcept nogil
cdef void cycle_update(Image* im) noexcept nogil                    # the control law: no device, no system call
cdef void cycle_run(Image* im, Io* io, int64_t now_ns) noexcept nogil   # one whole cycle, stages timed
cdef void stop_begin(Image* im, bint hard) noexcept nogil
cdef bint stop_done(Image* im) noexcept nogil                       # every contactor open
cdef void publish_stopped(Image* im, Io* io) noexcept nogil         # outputs safe to hold for ever
