# exchange: the only door between Python threads and the real-time loop.
#
# commands      a bounded lock-free MPSC queue (Vyukov): any thread pushes, the
#               loop pops; nobody ever waits on a lock, so no Python thread can
#               hold the GIL while it waits for a thread that needs the GIL.
# measurements  one seqlocked slot per source, latest value wins; a dirty bitmap
#               tells the loop which slots changed, so a cycle touches only those.
#               Every value passes the gate first: the source's writer, its
#               physical range, a timestamp within its max age of now.
# snapshot      a triple buffer: the loop fills its back buffer and swaps it into
#               the middle; a reader swaps the middle out when it is fresh. Neither
#               side ever waits for the other and a reader never sees a torn copy.
# counters      statistics one thread writes (the loop, or the I/O thread for its
#               sensors) and Python reads while it runs: relaxed atomics, no lock.

cdef inline void ring_init(CommandRing* r) noexcept nogil:
    cdef uint64_t k
    for k in range(CMD_RING):
        r.cell[k].seq = k


cdef inline bint ring_push(CommandRing* r, const Command* c) noexcept nogil:
    cdef uint64_t pos = v2g_load_relaxed(&r.head)
    cdef CommandCell* cell
    cdef int64_t dif
    while True:
        cell = &r.cell[pos & (CMD_RING - 1)]
        dif = <int64_t>(v2g_load_acquire(&cell.seq) - pos)
        if dif == 0:
            if v2g_cas(&r.head, &pos, pos + 1):
                break
        elif dif < 0:
            return False                     # full: the loop has not taken this cell yet
        else:
            pos = v2g_load_relaxed(&r.head)
    cell.c = c[0]
    v2g_store_release(&cell.seq, pos + 1)
    return True


cdef inline bint ring_pop(CommandRing* r, Command* out) noexcept nogil:
    # Single consumer. A cell claimed but not yet filled ends this cycle's intake:
    # its command, and those behind it, are taken next cycle.
    cdef uint64_t tail = r.tail
    cdef CommandCell* cell = &r.cell[tail & (CMD_RING - 1)]
    if v2g_load_acquire(&cell.seq) != tail + 1:
        return False
    out[0] = cell.c
    v2g_store_release(&cell.seq, tail + CMD_RING)
    v2g_store_relaxed(&r.tail, tail + 1)
    return True


cdef inline int gate_check(const Gate* g, int32_t writer, double value, int64_t t_ns,
                           int64_t now_ns) noexcept nogil:
    if g.writer != writer:
        return GATE_OWNED
    if not (g.lo <= value <= g.hi):          # NaN fails too
        return GATE_BAD_VALUE
    if t_ns > now_ns:
        return GATE_FUTURE
    if v2g_sat_sub(now_ns, t_ns) > g.max_age_ns:
        return GATE_TOO_OLD
    return GATE_OK


cdef inline void gate_count(Gate* g, int code) noexcept nogil:
    # Several threads may count on one source (a rejected writer is by definition
    # not the owner): atomic adds.
    if code == GATE_OK:
        v2g_fetch_add(&g.accepted, 1)
    else:
        v2g_fetch_add(&g.rejected[code], 1)


cdef inline int slot_write(Exchange* ex, int32_t i, double value, int64_t t_ns) noexcept nogil:
    """Publish into slot i unless it holds a newer value; GATE_OK or GATE_OUT_OF_ORDER.

    Writers take the slot by moving its sequence from even to odd with a CAS, so
    even two writers of one source could never interleave; the gate gives each
    slot one writer kind, and this keeps Python threads of that kind apart
    without a lock any of them could hold while waiting for the GIL."""
    cdef Slot* s = &ex.slot[i]
    cdef uint64_t seq = v2g_load_relaxed(&s.seq)
    while True:
        if seq & 1:
            v2g_cpu_relax()
            seq = v2g_load_relaxed(&s.seq)
        elif v2g_cas(&s.seq, &seq, seq + 1):
            break
    if seq != 0 and t_ns < s.t_ns:
        v2g_store_release(&s.seq, seq)       # nothing changed: readers see the old value
        return GATE_OUT_OF_ORDER
    v2g_store_f64(&s.value, value)
    v2g_store_i64(&s.t_ns, t_ns)
    v2g_store_release(&s.seq, seq + 2)
    v2g_fetch_or(&ex.dirty[i >> 6], (<uint64_t>1) << (i & 63))
    return GATE_OK


cdef inline int gate_write(Exchange* ex, int32_t i, int32_t writer, double value, int64_t t_ns,
                           int64_t now_ns) noexcept nogil:
    """The one way a producer's value enters the image: checked, written, counted."""
    cdef Gate* g = &ex.gate[i]
    cdef int code = gate_check(g, writer, value, t_ns, now_ns)
    if code == GATE_OK:
        code = slot_write(ex, i, value, t_ns)
    gate_count(g, code)
    return code


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


cdef inline void input_take(Image* im, int32_t i, double value, int64_t t_ns) noexcept nogil:
    """The loop takes a measurement the gate let in as input i. Its freshness is decided here,
    once, rather than by every reader of every input every cycle (the largest single cost of
    the per-port passes)."""
    cdef InputStamp* s = &im.input_stamp[i]
    im.input[i].value = value
    im.input[i].fresh_until_ns = v2g_sat_add(t_ns, im.ex.gate[i].max_age_ns)
    s.t_ns = t_ns
    s.received = 1
    s.applied_cycle = im.cycle


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


cdef inline void bump(uint64_t* counter, uint64_t n) noexcept nogil:
    # Single writer; readers load with relaxed atomics while it runs.
    v2g_store_relaxed(counter, counter[0] + n)
