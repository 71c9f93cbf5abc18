# io_can: J1939 frames drained by the loop itself, every cycle (read stage).
#
# The fd is a nonblocking socket that delivers struct can_frame: a SocketCAN raw
# socket (real backend) or one end of a SOCK_SEQPACKET socketpair whose far end is
# the simulation (sim backend). Everything after recvmmsg() is shared. One
# recvmmsg() per cycle takes at most `budget` frames: bounded work; what is left
# waits for the next cycle and is counted.

from libc.errno cimport errno, EAGAIN


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


cdef void can_decode(Image* im, CanReader* r, const can_frame* f) noexcept nogil:
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
    cdef Input* x
    cdef Gate* g
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
        x = &im.input[s.input]
        x.value = value
        x.t_ns = im.now_ns
        x.received = 1
        x.applied_cycle = im.cycle
        bump(&r.decoded, 1)
    if not matched:
        bump(&r.unknown_pgn, 1)


cdef void can_drain(Image* im) noexcept nogil:
    cdef CanReader* r = &im.can
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
            can_decode(im, r, f)


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
