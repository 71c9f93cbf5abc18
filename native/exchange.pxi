# exchange: the only door between Python threads and the real-time loop.
#
# commands      a ring with one consumer (the loop); producers are serialised
#               by a lock that only producers take, so the loop never waits.
# measurements  one seqlocked slot per source, latest value wins; a dirty bitmap
#               tells the loop which slots changed, so a cycle touches only those.
# snapshot      a triple buffer: the loop fills its back buffer and swaps it into
#               the middle; a reader swaps the middle out when it is fresh. Neither
#               side ever waits for the other and a reader never sees a torn copy.

cdef inline bint ring_push(CommandRing* r, const Command* c) noexcept nogil:
    cdef uint64_t head = v2g_load_relaxed(&r.head)
    if head - v2g_load_acquire(&r.tail) >= CMD_RING:
        return False
    r.slot[head & (CMD_RING - 1)] = c[0]
    v2g_store_release(&r.head, head + 1)
    return True


cdef inline bint ring_pop(CommandRing* r, Command* out) noexcept nogil:
    cdef uint64_t tail = v2g_load_relaxed(&r.tail)
    if tail == v2g_load_acquire(&r.head):
        return False
    out[0] = r.slot[tail & (CMD_RING - 1)]
    v2g_store_release(&r.tail, tail + 1)
    return True


cdef inline void slot_write(Exchange* ex, int32_t i, double value, int64_t t_ns) noexcept nogil:
    cdef Slot* s = &ex.slot[i]
    cdef uint64_t seq = v2g_load_relaxed(&s.seq)
    v2g_store_relaxed(&s.seq, seq + 1)
    v2g_fence_release()
    v2g_store_f64(&s.value, value)
    v2g_store_i64(&s.t_ns, t_ns)
    v2g_store_release(&s.seq, seq + 2)
    v2g_fetch_or(&ex.dirty[i >> 6], (<uint64_t>1) << (i & 63))


cdef inline bint slot_read(Slot* s, double* value, int64_t* t_ns) noexcept nogil:
    # One attempt only: a slot caught mid-write is left for the next cycle, and
    # its writer sets the dirty bit again when it finishes.
    cdef uint64_t s1 = v2g_load_acquire(&s.seq)
    if s1 & 1:
        return False
    value[0] = v2g_load_f64(&s.value)
    t_ns[0] = v2g_load_i64(&s.t_ns)
    v2g_fence_acquire()
    return v2g_load_relaxed(&s.seq) == s1


cdef inline void snap_init(SnapshotBuffers* sb) noexcept nogil:
    sb.back = 0
    sb.middle = 1
    sb.front = 2


cdef inline Snapshot* snap_back(SnapshotBuffers* sb) noexcept nogil:
    return &sb.buf[sb.back]


cdef inline void snap_publish(SnapshotBuffers* sb) noexcept nogil:
    sb.back = v2g_exchange(&sb.middle, sb.back | SNAP_FRESH) & 3


cdef inline Snapshot* snap_latest(SnapshotBuffers* sb) noexcept nogil:
    # Caller is the single reader (it holds the reader lock).
    if v2g_load_acquire(&sb.middle) & SNAP_FRESH:
        sb.front = v2g_exchange(&sb.middle, sb.front) & 3
    return &sb.buf[sb.front]
