# io_can: J1939 frames drained by the loop itself, every cycle (read stage), and
# setpoint frames sent by it (write stage).
#
# The fd is a nonblocking socket that delivers struct can_frame: a SocketCAN raw
# socket (real backend) or one end of a SOCK_SEQPACKET socketpair whose far end is
# the simulation (sim backend). Everything after recvmmsg() is shared. One
# recvmmsg() per cycle takes at most `budget` frames: bounded work; what is left
# waits for the next cycle and is counted.

from libc.errno cimport errno, EAGAIN, ENOBUFS


cdef inline uint64_t payload_le(const can_frame* f, int dlc) noexcept nogil:
    cdef uint64_t w = 0
    cdef int k
    for k in range(dlc):
        w |= (<uint64_t>f.data[k]) << (8 * k)
    return w


cdef inline uint64_t payload_be(const can_frame* f, int dlc) noexcept nogil:
    cdef uint64_t w = 0
    cdef int k
    for k in range(dlc):
        w |= (<uint64_t>f.data[k]) << (8 * (7 - k))
    return w


cdef bint claim_rx(CanWriter* w, Image* im, uint32_t pgn, int32_t sa, int32_t da, const can_frame* f) noexcept nogil:
    """J1939-81 as a node that is not arbitrary-address capable: answer a request for
    address claims with ours; on a contending claim the lower NAME keeps the address, and if
    that is not us we say "cannot claim" once and send nothing more."""
    cdef int32_t k
    if w.n_ports == 0:
        return False
    if pgn == PGN_REQUEST:
        if (f.can_dlc >= 3 and (da == w.address or da == J1939_GLOBAL)
                and payload_le(f, 3) == PGN_ADDRESS_CLAIMED):
            w.claim_due = 1
        return True
    if pgn != PGN_ADDRESS_CLAIMED:
        return False
    if sa == w.address and w.claim_state != CLAIM_NONE and w.claim_state != CLAIM_LOST:
        bump(&w.claims_contested, 1)
        if f.can_dlc == 8 and payload_le(f, 8) > w.name:
            w.claim_due = 1
        else:                    # theirs is lower (or equal, or unreadable): the address is not ours
            w.claim_state = CLAIM_LOST
            w.claim_due = 1
            for k in range(w.n_ports):
                im.outbox.link_down[w.port[k]] = 1
    return True


cdef void can_decode(Image* im, CanReader* r, CanWriter* w, const can_frame* f) noexcept nogil:
    cdef uint32_t id29 = f.can_id & CAN_EFF_MASK
    cdef uint32_t pf = (id29 >> 16) & 0xFF
    # PDU1 (PF < 240): PS is a destination address, not part of the PGN.
    cdef uint32_t pgn = (id29 >> 8) & (0x3FF00 if pf < 240 else 0x3FFFF)
    cdef int32_t sa = id29 & 0xFF
    cdef int dlc = f.can_dlc
    cdef uint64_t le = payload_le(f, dlc)
    cdef uint64_t be = payload_be(f, dlc)
    cdef uint64_t raw, mask
    cdef int64_t sraw
    cdef double value
    cdef bint matched = False
    cdef int32_t i
    cdef int code
    cdef CanSignal* s
    cdef Gate* g
    if pf < 240 and claim_rx(w, im, pgn, sa, (id29 >> 8) & 0xFF, f):
        return
    for i in range(r.n_signals):
        s = &r.sig[i]
        if s.pgn != pgn or (s.sa >= 0 and s.sa != sa):
            continue
        matched = True
        if dlc < s.min_dlc:
            bump(&r.short_frames, 1)
            continue
        mask = 0xFFFFFFFFFFFFFFFF if s.length >= 64 else ((<uint64_t>1) << s.length) - 1
        raw = ((be if s.big_endian else le) >> s.shift) & mask
        if raw > s.raw_max_valid:
            bump(&r.not_available, 1)      # J1939 "error" or "not available": stale, not data
            continue
        if s.is_signed and s.length < 64 and raw >> (s.length - 1):
            sraw = <int64_t>(raw | ~mask)
            value = sraw * s.scale + s.offset
        else:
            value = raw * s.scale + s.offset
        if s.minimum < s.maximum and not (s.minimum <= value <= s.maximum):
            bump(&r.out_of_range, 1)
            continue
        g = &im.ex.gate[s.input]
        code = gate_check(g, WRITER_CAN, value, im.now_ns, im.now_ns)
        gate_count(g, code)
        if code != GATE_OK:
            bump(&r.gate_rejected, 1)
            continue
        input_take(im, s.input, value, im.now_ns)
        bump(&r.decoded, 1)
    if not matched:
        bump(&r.unknown_pgn, 1)


cdef void can_drain(Image* im, CanReader* r, CanWriter* w) noexcept nogil:
    cdef int n, k
    cdef can_frame* f
    cdef uint32_t ovfl
    if r.fd < 0:
        return
    for k in range(r.budget):               # the kernel shrinks it to what it wrote
        r.msgs[k].msg_hdr.msg_controllen = sizeof(r.cmsg[k])
    n = recvmmsg(r.fd, r.msgs, r.budget, MSG_DONTWAIT, NULL)
    if n < 0:
        if errno != EAGAIN:                  # EWOULDBLOCK is EAGAIN on Linux
            bump(&r.read_errors, 1)
            v2g_store_i64(&r.last_errno, errno)
        return
    if n == r.budget:
        bump(&r.budget_full, 1)
    for k in range(n):
        f = &r.rx[k]
        bump(&r.frames, 1)
        if v2g_rxq_ovfl(&r.msgs[k].msg_hdr, &ovfl):
            # A cumulative count since the socket opened; unsigned wrap is intended.
            bump(&r.kernel_dropped, <uint32_t>(ovfl - r.ovfl_last))
            r.ovfl_last = ovfl
        if r.msgs[k].msg_len != sizeof(can_frame) or r.msgs[k].msg_hdr.msg_flags & MSG_TRUNC:
            bump(&r.short_frames, 1)
        elif f.can_dlc > 8:
            bump(&r.bad_dlc, 1)                # malformed: never decoded as 8 bytes
        elif f.can_id & CAN_ERR_FLAG:
            bump(&r.error_frames, 1)
            if f.can_id & CAN_ERR_BUSOFF:
                bump(&r.bus_off, 1)
        elif not (f.can_id & CAN_EFF_FLAG) or f.can_id & CAN_RTR_FLAG:
            bump(&r.non_j1939, 1)          # 11-bit or remote frames carry no J1939 PGN
        else:
            can_decode(im, r, w, f)


cdef void can_attach(CanReader* r, int fd, int budget) noexcept nogil:
    cdef int k
    r.fd = fd
    r.budget = budget if 0 < budget <= CAN_BATCH else CAN_BATCH
    for k in range(CAN_BATCH):
        r.iov[k].iov_base = &r.rx[k]
        r.iov[k].iov_len = sizeof(can_frame)
        memset(&r.msgs[k].msg_hdr, 0, sizeof(msghdr))
        r.msgs[k].msg_hdr.msg_iov = &r.iov[k]
        r.msgs[k].msg_hdr.msg_iovlen = 1
        r.msgs[k].msg_hdr.msg_control = &r.cmsg[k][0]
        r.msgs[k].msg_hdr.msg_controllen = sizeof(r.cmsg[k])


# ---------------------------------------------------------------- write: setpoint frames

cdef inline uint32_t j1939_id(uint32_t priority, uint32_t pgn, int32_t da, int32_t sa) noexcept nogil:
    # PDU1 PGNs (PF < 240) carry the destination in PS
    return CAN_EFF_FLAG | (priority << 26) | ((pgn | <uint32_t>da) << 8) | <uint32_t>sa


cdef void setpoint_frame(CanWriter* w, int32_t k, const PortOutput* o, can_frame* f) noexcept nogil:
    """hw/j1939/v2g-setpoint.dbc: function, port, signed 24-bit W, the module's own timeout,
    contactor command, the output's sequence number (low 8 bits)."""
    cdef double x = o.setpoint_w
    cdef int32_t watts
    if not x >= -8388608.0:          # also NaN: nothing is 0 W
        x = 0.0 if x != x else -8388608.0
    elif x > 8388607.0:
        x = 8388607.0
    watts = <int32_t>(x + (0.5 if x >= 0.0 else -0.5))
    f.can_id = j1939_id(3, PGN_SETPOINT, w.da[k], w.address)
    f.can_dlc = 8
    f.data[0] = SETPOINT_FUNCTION
    f.data[1] = w.port_no[k]
    f.data[2] = watts & 0xFF
    f.data[3] = (watts >> 8) & 0xFF
    f.data[4] = (watts >> 16) & 0xFF
    f.data[5] = <uint8_t>w.timeout_ds
    f.data[6] = 0xFE | (1 if o.contactor_closed else 0)       # unused bits: 1 (J1939 fill)
    f.data[7] = o.sequence & 0xFF


cdef void claim_frame(CanWriter* w, can_frame* f) noexcept nogil:
    cdef int k
    f.can_id = j1939_id(6, PGN_ADDRESS_CLAIMED, J1939_GLOBAL,
                        J1939_NULL_ADDRESS if w.claim_state == CLAIM_LOST else w.address)
    f.can_dlc = 8
    for k in range(8):
        f.data[k] = (w.name >> (8 * k)) & 0xFF


cdef void can_write(Image* im, CanWriter* w, int fd) noexcept nogil:
    """Send, in one sendmmsg(), our address claim when due and a setpoint frame for each CAN
    port whose output was handed over since its last frame: at most one per interval (a bus
    carries ~2000 frames/s at 250 kbit/s), at once when it goes to 0 W or opens the contactor.
    A frame the socket refuses (ENOBUFS: the interface queue is full) is counted on its port
    and tried again next cycle."""
    cdef Outbox* ob = &im.outbox
    cdef int32_t n = 0, sent, j, k
    cdef PortOutput* o
    if w.n_ports == 0 or fd < 0:
        return
    if w.claim_state == CLAIM_WAIT and v2g_sat_sub(im.now_ns, w.claim_sent_ns) >= CLAIM_WAIT_NS:
        w.claim_state = CLAIM_HELD
    if w.claim_due:
        claim_frame(w, &w.tx[0])
        w.tx_port[0] = -1
        n = 1
    if w.claim_state == CLAIM_HELD:
        for k in range(w.n_ports):
            o = &ob.out[w.port[k]]
            if o.sequence != w.sent_seq[k] and (
                    v2g_sat_sub(im.now_ns, w.sent_ns[k]) >= w.interval_ns
                    or (w.sent_power[k] and o.setpoint_w == 0.0)
                    or (w.sent_closed[k] and not o.contactor_closed)):
                setpoint_frame(w, k, o, &w.tx[n])
                w.tx_port[n] = k
                n += 1
    if n == 0:
        return
    sent = sendmmsg(fd, w.tmsgs, n, MSG_DONTWAIT)
    if sent < 0:
        if errno != EAGAIN and errno != ENOBUFS:
            bump(&w.write_errors, 1)
        v2g_store_i64(&w.last_errno, errno)
        sent = 0
    for j in range(n):
        k = w.tx_port[j]
        if j >= sent:
            if k >= 0:
                bump(&ob.out[w.port[k]].refused, 1)
            bump(&w.frames_refused, 1)
        elif k < 0:
            bump(&w.claims_sent, 1)
            w.claim_due = 0
            if w.claim_state == CLAIM_NONE:
                w.claim_state = CLAIM_WAIT
                w.claim_sent_ns = im.now_ns
        else:
            o = &ob.out[w.port[k]]
            w.sent_seq[k] = o.sequence
            w.sent_ns[k] = im.now_ns
            w.sent_power[k] = o.setpoint_w != 0.0
            w.sent_closed[k] = o.contactor_closed != 0
            bump(&w.frames_sent, 1)


cdef void can_writer_attach(CanWriter* w) noexcept nogil:
    cdef int k
    for k in range(CAN_TX_BATCH):
        w.tiov[k].iov_base = &w.tx[k]
        w.tiov[k].iov_len = sizeof(can_frame)
        memset(&w.tmsgs[k].msg_hdr, 0, sizeof(msghdr))
        w.tmsgs[k].msg_hdr.msg_iov = &w.tiov[k]
        w.tmsgs[k].msg_hdr.msg_iovlen = 1
    for k in range(MAX_PORTS):
        w.sent_ns[k] = INT64_MIN
    w.claim_state = CLAIM_NONE
    w.claim_due = 1
