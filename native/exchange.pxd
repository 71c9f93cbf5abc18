# exchange: the only door between Python threads and the real-time loop (exchange.pxi).

# commands: a bounded lock-free MPSC ring; any thread pushes, the loop pops
cdef void ring_init(CommandRing* r) noexcept nogil
cdef bint ring_push(CommandRing* r, const Command* c) noexcept nogil
cdef bint ring_pop(CommandRing* r, Command* out) noexcept nogil

# measurements: the gate, then one seqlocked slot per source
cdef int gate_check(const Gate* g, int32_t writer, double value, int64_t t_ns, int64_t now_ns) noexcept nogil
cdef void gate_count(Gate* g, int code) noexcept nogil
cdef int gate_write(Exchange* ex, int32_t i, int32_t writer, double value, int64_t t_ns,
                    int64_t now_ns) noexcept nogil
cdef bint slot_read(Slot* s, double* value, int64_t* t_ns) noexcept nogil
cdef void input_take(Image* im, int32_t i, double value, int64_t t_ns) noexcept nogil

# snapshot: a triple buffer; the loop publishes, one (locked) reader takes the latest
cdef void snap_init(SnapshotBuffers* sb) noexcept nogil
cdef Snapshot* snap_back(SnapshotBuffers* sb) noexcept nogil
cdef void snap_publish(SnapshotBuffers* sb) noexcept nogil
cdef Snapshot* snap_latest(SnapshotBuffers* sb) noexcept nogil

# counters: one writing thread, any number of readers
cdef void bump(uint64_t* counter, uint64_t n) noexcept nogil
