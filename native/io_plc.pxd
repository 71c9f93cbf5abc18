# io_plc: HomePlug Green PHY link quality per port, from management messages (MMEs, ethertype
# 0x88E1) on each port's modem interface: probes sent by the write stage, answers and the SLAC
# stack's attenuation reports drained by the read stage (io_plc.pxi). State lives in Io.

cdef enum:
    MAX_PLC = 64                 # modems (one per port with a PLC link)
    PLC_BATCH = 16               # frames taken per recvmmsg() from one modem: the per-cycle bound
    PLC_FRAME_MAX = 1536         # an Ethernet frame; a longer one arrives truncated and is counted
    PLC_WINDOW_MAX = 1024        # probes in the loss window (the ring's fixed size)
    PLC_PROBE_LEN = 60           # the probe: a minimum Ethernet frame (without FCS)

cdef enum:  # HomePlug AV 1.1 / Green PHY MME header and the messages the unit speaks
    HPAV_ETHERTYPE = 0x88E1
    HPAV_MMV = 0x01              # HomePlug AV 1.1 (Green PHY): header with FMI
    HPAV_HEADER = 19             # dst 6, src 6, ethertype 2, MMV 1, MMTYPE 2 (LE), FMI 2
    MMTYPE_REQ = 0
    MMTYPE_CNF = 1
    MMTYPE_IND = 2
    MMTYPE_RSP = 3
    CM_NW_STATS = 0x6048         # the probe: .REQ to the modem, .CNF lists the AVLN's stations
    CM_ATTEN_CHAR = 0x606C       # SLAC (ISO 15118-3): .IND carries the attenuation profile
    NW_STATS_STATION = 10        # per station in .CNF: DA 6, AvgPHYDR_TX 2, AvgPHYDR_RX 2 (Mbit/s, LE)
    ATTEN_GROUPS_AT = 70         # .IND: NumGroups at byte 70, then AAG[NumGroups] (dB)
    ATTEN_GROUPS_MAX = 58        # Green PHY carrier groups
    PACKET_OUTGOING_ = 4         # sll_pkttype of a frame this host sent (linux/if_packet.h)

cdef struct PlcModem:
    int32_t fd                   # AF_PACKET SOCK_RAW bound to the interface and 0x88E1, nonblocking
    int32_t port                 # image port
    int32_t input                # its plc_loss source (-1: none)
    uint8_t mac[6]               # our interface's address (source of the probes)
    uint8_t modem[6]             # the modem's; learnt from the first answer when not configured
    int32_t modem_known
    int32_t window               # probes in the loss window (<= PLC_WINDOW_MAX)
    int64_t interval_ns          # one probe per interval; an answer must come before the next
    int64_t next_probe_ns
    int32_t outstanding          # a probe awaits its answer
    int32_t link_up              # the last answer listed a station with both rates > 0
    int32_t was_up               # the link was up since the port's vehicle connected
    int32_t head
    int32_t filled
    int32_t lost_in_window
    uint8_t ring[PLC_WINDOW_MAX] # 1: that probe was lost
    double loss                  # lost_in_window / filled, published through the gate
    double attenuation_db        # average of the groups of the last CM_ATTEN_CHAR.IND (NaN: none)
    double attenuation_limit_db
    int32_t attenuation_high     # the last report exceeded the limit: ERR_PLC_ATTENUATION
    int32_t stations
    int32_t tx_mbps              # the best station's average PHY rates
    int32_t rx_mbps
    uint8_t probe[PLC_PROBE_LEN] # CM_NW_STATS.REQ, built once at attach
    uint64_t probes_sent
    uint64_t probes_refused      # the socket would not take it (EAGAIN/ENOBUFS): lost
    uint64_t answers
    uint64_t lost
    uint64_t late                # an answer with no probe waiting (after its timeout)
    uint64_t link_changes
    uint64_t atten_reports
    uint64_t atten_over
    uint64_t atten_responses     # CM_ATTEN_CHAR.RSP seen (the match's acknowledgement)
    uint64_t frames
    uint64_t outgoing            # our own probes and other frames this host sent
    uint64_t wrong_mmv
    uint64_t wrong_type          # an MMTYPE this unit does not take
    uint64_t wrong_length        # shorter than its fields, or more groups/stations than it carries
    uint64_t unknown_mac         # an answer from a station other than the modem
    uint64_t truncated           # longer than PLC_FRAME_MAX
    uint64_t gate_rejected
    uint64_t budget_full
    uint64_t read_errors
    uint64_t write_errors
    int64_t last_errno

cdef struct PlcIo:
    int32_t n
    int32_t budget               # frames per modem per cycle (<= PLC_BATCH)
    PlcModem m[MAX_PLC]
    uint8_t rx[PLC_BATCH][PLC_FRAME_MAX]   # shared: modems are drained one after the other
    mmsghdr msgs[PLC_BATCH]
    iovec iov[PLC_BATCH]
    sockaddr_ll from_[PLC_BATCH]

cdef void plc_attach(PlcIo* io, int budget) noexcept nogil
cdef void plc_modem_init(PlcModem* m) noexcept nogil
cdef void plc_drain(Image* im, PlcIo* io) noexcept nogil    # read stage: one recvmmsg() per modem
cdef void plc_probe(Image* im, PlcIo* io) noexcept nogil    # write stage: the probes due
