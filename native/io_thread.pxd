# io_thread: the native I/O thread's one schedule over every blocking bus (io_thread.pxi).

cdef int32_t io_add_job(IoThread* t, int32_t kind, int32_t index, int64_t period_ns) noexcept nogil
cdef void io_schedule(IoThread* t, int64_t start_ns) noexcept nogil
cdef int64_t io_pass(Io* io, int64_t now_ns, bint catch_up) noexcept nogil   # the jobs due; the next due
cdef void io_run_kind(Io* io, int32_t kind, int64_t t_ns) noexcept nogil     # each job of a kind, once
cdef void* io_thread_main(void* arg) noexcept nogil                          # pthread start; arg: Io*
