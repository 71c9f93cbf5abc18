# io_plc: PLC link quality per port, measured by the loop itself.
#
# Each port's Green PHY modem (a QCA7000/7005 appears under Linux as an Ethernet netdev,
# qcaspi or qca_uart) has an AF_PACKET socket bound to its interface and ethertype 0x88E1.
# The write stage sends a CM_NW_STATS.REQ probe per modem every interval (one send() of a
# frame built at attach); the read stage takes at most `budget` frames per modem with one
# recvmmsg(): the modem's CM_NW_STATS.CNF (link up: a station in the AVLN with both rates
# above 0) and the CM_ATTEN_CHAR.IND a SLAC stack on the same interface sends or receives
# (signal attenuation, the average of the groups). A probe not answered before the next is
# lost, and so is one answered with no station after the link was up while the vehicle stays
# (its session's link is gone); the share lost over the last `window` probes, cleared when a
# link comes up, is the port's plc_loss, which the
# interlock compares with plc_loss_limit (ERR_ISO_TIMEOUT). Frames of the wrong MMV, type or
# length, or from a station other than the modem, are counted per kind, never data.

from libc.errno cimport errno, EAGAIN, ENOBUFS
from libc.math cimport NAN


cdef inline uint32_t le16(const uint8_t* b) noexcept nogil:
    return b[0] | (<uint32_t>b[1] << 8)


cdef inline bint same_mac(const uint8_t* a, const uint8_t* b) noexcept nogil:
    cdef int k
    for k in range(6):
        if a[k] != b[k]:
            return False
    return True


cdef void plc_outcome(Image* im, PlcModem* m, bint lost) noexcept nogil:
    """One probe's outcome into the window; the loss published through the gate."""
    cdef Gate* g
    cdef int code
    if m.filled == m.window:
        m.lost_in_window -= m.ring[m.head]
    else:
        m.filled += 1
    m.ring[m.head] = 1 if lost else 0
    m.lost_in_window += 1 if lost else 0
    m.head = (m.head + 1) % m.window
    v2g_store_f64(&m.loss, <double>m.lost_in_window / m.filled)
    if lost:
        bump(&m.lost, 1)
    if m.input < 0:
        return
    g = &im.ex.gate[m.input]
    code = gate_check(g, WRITER_PLC, m.loss, im.now_ns, im.now_ns)
    gate_count(g, code)
    if code != GATE_OK:
        bump(&m.gate_rejected, 1)
        return
    input_take(im, m.input, m.loss, im.now_ns)


cdef bint port_connected(Image* im, PlcModem* m) noexcept nogil:
    cdef int32_t i = im.port[m.port].src[SRC_PORT_CONNECTED]
    return i >= 0 and im.input_stamp[i].received != 0 and im.input[i].value > 0.5


cdef void plc_link(Image* im, PlcModem* m, bint up) noexcept nogil:
    if up != (m.link_up != 0):
        bump(&m.link_changes, 1)
        if up:                           # a new link (a new session): a clean window; a trip
                                         # during the outage is latched for the session already
            m.head = 0
            m.filled = 0
            m.lost_in_window = 0
        m.link_up = up
    if up and port_connected(im, m):
        m.was_up = 1


cdef void nw_stats_cnf(Image* im, PlcModem* m, const uint8_t* f, uint32_t n) noexcept nogil:
    cdef uint32_t k, count, tx, rx, best_tx = 0, best_rx = 0
    cdef const uint8_t* s
    cdef bint up = False
    if n < HPAV_HEADER + 1:
        bump(&m.wrong_length, 1)
        return
    count = f[HPAV_HEADER]
    if n < HPAV_HEADER + 1 + count * NW_STATS_STATION:
        bump(&m.wrong_length, 1)
        return
    if not m.modem_known:
        memcpy(m.modem, f + 6, 6)        # the local management address is answered from the modem's own
        m.modem_known = 1
    elif not same_mac(f + 6, m.modem):
        bump(&m.unknown_mac, 1)
        return
    if not m.outstanding:
        bump(&m.late, 1)
        return
    m.outstanding = 0
    bump(&m.answers, 1)
    for k in range(count):
        s = f + HPAV_HEADER + 1 + k * NW_STATS_STATION
        tx = le16(s + 6)
        rx = le16(s + 8)
        if tx > 0 and rx > 0:
            up = True
        if tx + rx > best_tx + best_rx:
            best_tx, best_rx = tx, rx
    m.stations = count
    m.tx_mbps = best_tx
    m.rx_mbps = best_rx
    plc_link(im, m, up)
    # No station yet is SLAC still matching: the modem answered, nothing was lost. No station
    # after the link was up in this session is the session's link gone: lost.
    plc_outcome(im, m, m.was_up and not up)


cdef void atten_char_ind(PlcModem* m, const uint8_t* f, uint32_t n) noexcept nogil:
    cdef uint32_t k, groups, total = 0
    if n < ATTEN_GROUPS_AT + 1:
        bump(&m.wrong_length, 1)
        return
    groups = f[ATTEN_GROUPS_AT]
    if groups == 0 or groups > ATTEN_GROUPS_MAX or n < ATTEN_GROUPS_AT + 1 + groups:
        bump(&m.wrong_length, 1)
        return
    for k in range(groups):
        total += f[ATTEN_GROUPS_AT + 1 + k]
    v2g_store_f64(&m.attenuation_db, <double>total / groups)
    m.attenuation_high = m.attenuation_db > m.attenuation_limit_db
    bump(&m.atten_reports, 1)
    if m.attenuation_high:
        bump(&m.atten_over, 1)


cdef void plc_frame(Image* im, PlcModem* m, const uint8_t* f, uint32_t n, bint outgoing) noexcept nogil:
    cdef uint32_t mmtype
    if n < HPAV_HEADER:
        bump(&m.wrong_length, 1)
        return
    mmtype = le16(f + 15)
    # Only the SLAC stack's attenuation report is of interest among the frames this host sends.
    if outgoing and mmtype != (CM_ATTEN_CHAR | MMTYPE_IND):
        bump(&m.outgoing, 1)
        return
    if f[14] != HPAV_MMV:
        bump(&m.wrong_mmv, 1)
    elif mmtype == (CM_NW_STATS | MMTYPE_CNF):
        nw_stats_cnf(im, m, f, n)
    elif mmtype == (CM_ATTEN_CHAR | MMTYPE_IND):
        atten_char_ind(m, f, n)
    elif mmtype == (CM_ATTEN_CHAR | MMTYPE_RSP):
        bump(&m.atten_responses, 1)
    else:
        bump(&m.wrong_type, 1)


cdef void plc_drain(Image* im, PlcIo* io) noexcept nogil:
    cdef int32_t j
    cdef int n, k
    cdef PlcModem* m
    for j in range(io.n):
        m = &io.m[j]
        for k in range(io.budget):
            io.msgs[k].msg_hdr.msg_namelen = sizeof(sockaddr_ll)
            io.from_[k].sll_pkttype = 0      # a socket pair names no sender: not outgoing
        n = recvmmsg(m.fd, io.msgs, io.budget, MSG_DONTWAIT, NULL)
        if n < 0:
            if errno != EAGAIN:
                bump(&m.read_errors, 1)
                v2g_store_i64(&m.last_errno, errno)
            continue
        if n == io.budget:
            bump(&m.budget_full, 1)
        for k in range(n):
            bump(&m.frames, 1)
            if io.msgs[k].msg_hdr.msg_flags & MSG_TRUNC:
                bump(&m.truncated, 1)
                continue
            plc_frame(im, m, io.rx[k], io.msgs[k].msg_len, io.from_[k].sll_pkttype == PACKET_OUTGOING_)


cdef void plc_probe(Image* im, PlcIo* io) noexcept nogil:
    """The probes due, the modems' spread over an interval after the first: the one before unanswered counts
    as lost, then a new one goes out; one the socket refuses is lost as well, never waited for."""
    cdef int32_t j
    cdef PlcModem* m
    for j in range(io.n):
        m = &io.m[j]
        if m.was_up and not port_connected(im, m):
            m.was_up = 0                 # the vehicle left: the next one starts with a clean window
            m.head = 0
            m.filled = 0
            m.lost_in_window = 0
        if im.now_ns < m.next_probe_ns:
            continue
        if m.next_probe_ns == INT64_MIN:
            # Every first probe at once: a vehicle plugged in before the controller started needs
            # its port's loss at once (unknown is a timeout to the interlock); then spread out.
            m.next_probe_ns = v2g_sat_add(im.now_ns, m.interval_ns + m.interval_ns * j // io.n)
        else:
            m.next_probe_ns = v2g_sat_add(im.now_ns, m.interval_ns)
        if m.outstanding:
            plc_outcome(im, m, True)
        if send(m.fd, m.probe, PLC_PROBE_LEN, MSG_DONTWAIT) == PLC_PROBE_LEN:
            m.outstanding = 1
            bump(&m.probes_sent, 1)
            continue
        m.outstanding = 0
        if errno == EAGAIN or errno == ENOBUFS:
            bump(&m.probes_refused, 1)
        else:
            bump(&m.write_errors, 1)
        v2g_store_i64(&m.last_errno, errno)
        plc_outcome(im, m, True)


cdef void plc_modem_init(PlcModem* m) noexcept nogil:
    """The probe frame, from the addresses set: CM_NW_STATS.REQ to the modem (or, while its
    address is unknown, to the Qualcomm local management address 00:B0:52:00:00:01)."""
    cdef uint8_t local[6]
    local[0], local[1], local[2], local[3], local[4], local[5] = 0x00, 0xB0, 0x52, 0x00, 0x00, 0x01
    memset(m.probe, 0, PLC_PROBE_LEN)
    if m.modem_known:
        memcpy(m.probe, m.modem, 6)
    else:
        memcpy(m.probe, local, 6)
    memcpy(m.probe + 6, m.mac, 6)
    m.probe[12] = HPAV_ETHERTYPE >> 8
    m.probe[13] = HPAV_ETHERTYPE & 0xFF
    m.probe[14] = HPAV_MMV
    m.probe[15] = (CM_NW_STATS | MMTYPE_REQ) & 0xFF
    m.probe[16] = (CM_NW_STATS | MMTYPE_REQ) >> 8
    m.attenuation_db = NAN
    m.next_probe_ns = INT64_MIN


cdef void plc_attach(PlcIo* io, int budget) noexcept nogil:
    cdef int k
    io.budget = budget if 0 < budget <= PLC_BATCH else PLC_BATCH
    for k in range(PLC_BATCH):
        io.iov[k].iov_base = &io.rx[k][0]
        io.iov[k].iov_len = PLC_FRAME_MAX
        memset(&io.msgs[k].msg_hdr, 0, sizeof(msghdr))
        io.msgs[k].msg_hdr.msg_iov = &io.iov[k]
        io.msgs[k].msg_hdr.msg_iovlen = 1
        io.msgs[k].msg_hdr.msg_name = &io.from_[k]
        io.msgs[k].msg_hdr.msg_namelen = sizeof(sockaddr_ll)
