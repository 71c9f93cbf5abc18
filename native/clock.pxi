# clock: CLOCK_MONOTONIC, read by a vDSO call (no system call), and an absolute
# sleep to a planned time, used by the loop and the I/O thread alike.

from posix.time cimport clock_gettime, clock_nanosleep, timespec, CLOCK_MONOTONIC, TIMER_ABSTIME
from libc.errno cimport EINTR


cdef inline int64_t mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void sleep_until(int64_t t_ns) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = t_ns // 1000000000
    ts.tv_nsec = t_ns % 1000000000
    while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR:
        pass
