# scheduler: the fixed-step real-time loop and its statistics (scheduler.pxi).

cdef enum:
    LOOP_STACK_BYTES = 512 * 1024    # the loop's and the I/O thread's stacks

cdef enum:  # Runner.stop
    STOP_SOFT = 1                # 0 W, contactors open as current falls (stop_begin)
    STOP_HARD = 2                # 0 W, contactors open at once

cdef struct Runner:              # what the loop thread is started with
    Image* im
    Io* io
    uint64_t stop
    int64_t tid

cdef void* loop_main(void* arg) noexcept nogil      # pthread start routine; arg: Runner*
