# schedule: grid commands in their windows.
#
# A grid command (setpoint, export_limit, import_limit, load_shed) holds from its start
# to its expiry. One without a start opens its window when the loop takes it; one that
# starts later waits in its kind's queue, MAX_SCHEDULED slots preallocated per kind.
#
# Precedence, one rule: of the commands of a kind, the one whose window opened last is
# the active one (equal starts: the later submitted). When a window opens, its command
# replaces the active one of its kind, which is over; queued ones stay queued, so an
# immediate command is an override until the next scheduled start. A command whose start
# is earlier than the active one's (a late arrival) is superseded at once.
#
# The submitter (Controller.submit) chooses the slot and a generation for it; the loop
# publishes each slot's generation and whether it is held, so the submitter never hands
# out a slot the loop still holds and a full queue is refused before it reaches the loop
# (sched_refused counts what would have been lost if that ever failed).
#
# Work per cycle: one comparison while nothing is due; MAX_SCHEDULED x N_GRID_COMMANDS
# entries when a window opens or the queue changes.

cdef inline bint opens_after(int64_t starts, uint64_t seq, const ActiveCommand* a) noexcept nogil:
    return not a.active or starts > a.starts_ns or (starts == a.starts_ns and seq > a.seq)


cdef inline void activate(Image* im, int32_t kind, double value, int64_t starts, int64_t expires,
                          uint64_t id_hash, uint64_t seq) noexcept nogil:
    cdef ActiveCommand* a = &im.grid_cmd[kind]
    a.value = value
    a.starts_ns = starts
    a.expires_ns = expires
    a.id_hash = id_hash
    a.seq = seq
    a.active = 1


cdef void schedule_changed(Image* im) noexcept nogil:
    cdef int64_t first = INT64_MAX
    cdef int k, s
    for k in range(N_GRID_COMMANDS):
        for s in range(MAX_SCHEDULED):
            if im.sched[k][s].used and im.sched[k][s].starts_ns < first:
                first = im.sched[k][s].starts_ns
    im.sched_next_ns = first
    im.sched_version += 1


cdef void reanchor(Image* im, const Command* c) noexcept nogil:
    """The wall clock stepped: the command with c's id gets c's start (a queued one) and
    expiry; one no longer held stays gone."""
    cdef ActiveCommand* a = &im.grid_cmd[c.kind]
    cdef ScheduledCommand* q
    cdef int s
    if a.active and a.id_hash == c.id_hash:
        a.expires_ns = c.expires_ns
        if a.expires_ns <= im.now_ns:
            a.active = 0
            im.commands_expired += 1
        return
    for s in range(MAX_SCHEDULED):
        q = &im.sched[c.kind][s]
        if q.used and q.id_hash == c.id_hash:
            if not c.flags & CMD_NOW:
                q.starts_ns = c.starts_ns
            q.expires_ns = c.expires_ns
            schedule_changed(im)              # a start now past opens this cycle (schedule_due)
            return


cdef void grid_command(Image* im, const Command* c) noexcept nogil:
    cdef ScheduledCommand* q = NULL
    cdef int64_t starts = im.now_ns if c.flags & CMD_NOW else c.starts_ns
    cdef uint64_t seq
    if c.flags & CMD_REANCHOR:
        reanchor(im, c)
        return
    im.sched_seq += 1
    seq = im.sched_seq
    if 0 <= c.slot < MAX_SCHEDULED:
        q = &im.sched[c.kind][c.slot]
        if q.used:
            im.sched_refused += 1
            return
        q.gen = c.gen                         # the submitter sees the slot taken, then free again
        im.sched_version += 1
    if c.expires_ns <= im.now_ns:
        im.commands_expired += 1
        return
    if starts > im.now_ns:
        if q == NULL:
            im.sched_refused += 1
            return
        q.value = c.value
        q.starts_ns = starts
        q.expires_ns = c.expires_ns
        q.id_hash = c.id_hash
        q.seq = seq
        q.used = 1
        schedule_changed(im)
    elif opens_after(starts, seq, &im.grid_cmd[c.kind]):
        activate(im, c.kind, c.value, starts, c.expires_ns, c.id_hash, seq)


cdef void grid_cancel(Image* im, const Command* c) noexcept nogil:
    """c.of_hash == 0: every command of kind c.value ends, active or queued; else the one
    command with that id hash, whatever its kind."""
    cdef int32_t kind = <int32_t>c.value
    cdef ScheduledCommand* q
    cdef bint by_id = c.of_hash != 0
    cdef int k, s
    for k in range(N_GRID_COMMANDS):
        if not by_id and k != kind:
            continue
        if im.grid_cmd[k].active and (not by_id or im.grid_cmd[k].id_hash == c.of_hash):
            im.grid_cmd[k].active = 0
        for s in range(MAX_SCHEDULED):
            q = &im.sched[k][s]
            if q.used and (not by_id or q.id_hash == c.of_hash):
                q.used = 0
    schedule_changed(im)


cdef void schedule_due(Image* im) noexcept nogil:
    cdef ScheduledCommand* q
    cdef ScheduledCommand* best
    cdef int k, s
    if im.sched_next_ns > im.now_ns:
        return
    for k in range(N_GRID_COMMANDS):
        best = NULL
        for s in range(MAX_SCHEDULED):
            q = &im.sched[k][s]
            if not q.used or q.starts_ns > im.now_ns:
                continue
            q.used = 0
            if q.expires_ns <= im.now_ns:
                im.commands_expired += 1
            elif best == NULL or q.starts_ns > best.starts_ns or (q.starts_ns == best.starts_ns and q.seq > best.seq):
                best = q
        if best != NULL and opens_after(best.starts_ns, best.seq, &im.grid_cmd[k]):
            activate(im, k, best.value, best.starts_ns, best.expires_ns, best.id_hash, best.seq)
    schedule_changed(im)
