# io_can: J1939 frames drained by the read stage, setpoint frames sent by the write stage (io_can.pxi).
# Its state lives in Io (io.pxd), beside the control image, never in it.

cdef enum:
    MAX_CAN_SIGNALS = 128        # signals the loop decodes from J1939 frames
    CAN_BATCH = 64               # frames taken per recvmmsg(); the per-cycle budget is at most this
    CAN_TX_BATCH = 257           # frames per sendmmsg(): one per port and an address claim

cdef struct CanSignal:           # one signal of one PGN (and source address), from the DBC
    uint32_t pgn
    int32_t sa                   # -1: any source address
    int32_t shift                # raw = (payload word >> shift) & mask
    int32_t length
    int32_t big_endian           # payload word loaded big-endian (Motorola signals)
    int32_t is_signed
    int32_t min_dlc              # frames shorter than this cannot carry the signal
    uint64_t raw_max_valid       # above: J1939 "error" / "not available"
    double scale
    double offset
    double minimum
    double maximum
    int32_t input                # the image input it feeds

cdef struct CanReader:           # the loop drains this socket every cycle (read stage)
    int32_t fd                   # -1: no CAN
    int32_t budget               # frames per cycle
    int32_t n_signals
    CanSignal sig[MAX_CAN_SIGNALS]
    can_frame rx[CAN_BATCH]
    mmsghdr msgs[CAN_BATCH]
    iovec iov[CAN_BATCH]
    uint64_t cmsg[CAN_BATCH][8]  # control data per frame (SO_RXQ_OVFL), 8-byte aligned
    uint64_t frames
    uint64_t decoded
    uint64_t unknown_pgn
    uint64_t error_frames
    uint64_t bus_off
    uint64_t short_frames
    uint64_t not_available
    uint64_t out_of_range
    uint64_t non_j1939
    uint64_t read_errors
    uint64_t budget_full         # cycles that left frames for the next one
    uint64_t bad_dlc             # dlc > 8: malformed, not decoded
    uint64_t kernel_dropped      # frames the kernel dropped on a full socket (SO_RXQ_OVFL)
    uint64_t gate_rejected       # decoded values the measurement gate refused
    uint32_t ovfl_last           # the kernel's cumulative drop counter last seen
    int32_t ovfl_seen
    int64_t last_errno

cdef enum:  # J1939 (SAE J1939-21/-81) as the write stage speaks it
    PGN_SETPOINT = 0xEF00        # proprietary A (destination specific): hw/j1939/v2g-setpoint.dbc
    PGN_ADDRESS_CLAIMED = 0xEE00
    PGN_REQUEST = 0xEA00
    J1939_NULL_ADDRESS = 254     # "cannot claim"
    J1939_GLOBAL = 255
    SETPOINT_FUNCTION = 1        # first byte of a setpoint frame (proprietary A is shared)
    CLAIM_WAIT_NS = 250000000    # J1939-81: 250 ms after a claim before other messages

cdef enum:  # ClaimState
    CLAIM_NONE = 0               # not yet sent
    CLAIM_WAIT = 1               # sent; contending claims may still arrive
    CLAIM_HELD = 2
    CLAIM_LOST = 3               # a node with a lower NAME holds our address: we send nothing

cdef struct CanWriter:           # setpoint frames sent by the write stage through the CanReader's socket
    int32_t n_ports              # ports on the can link (0: no CAN output)
    int32_t address              # our J1939 source address
    uint64_t name                # our J1939 NAME (64 bits, little-endian on the wire)
    int32_t claim_state
    int32_t claim_due            # send a claim (or "cannot claim") in this cycle's write
    int64_t claim_sent_ns
    int32_t timeout_ds           # the module's own timeout, 0.1 s units, carried in every frame
    int32_t port[MAX_PORTS]      # image port index per CAN port
    uint8_t da[MAX_PORTS]        # destination (the EVSE's power module) per CAN port
    uint8_t port_no[MAX_PORTS]   # the port's number on its EVSE
    int64_t interval_ns          # a port's frames at most this often, but for 0 W or opening
    uint64_t sent_seq[MAX_PORTS] # the output sequence last on the wire
    int64_t sent_ns[MAX_PORTS]
    uint8_t sent_power[MAX_PORTS]    # the last frame asked for power (not 0 W)
    uint8_t sent_closed[MAX_PORTS]   # ... or a closed contactor
    int32_t tx_port[CAN_TX_BATCH]   # -1: the address claim
    can_frame tx[CAN_TX_BATCH]
    mmsghdr tmsgs[CAN_TX_BATCH]
    iovec tiov[CAN_TX_BATCH]
    uint64_t frames_sent
    uint64_t frames_refused      # ENOBUFS / EAGAIN: counted, retried next cycle, never waited for
    uint64_t claims_sent
    uint64_t claims_contested    # another claim for our address (we answered or lost)
    uint64_t write_errors
    int64_t last_errno

cdef void can_attach(CanReader* r, int fd, int budget) noexcept nogil
cdef void can_writer_attach(CanWriter* w) noexcept nogil
cdef void can_drain(Image* im, CanReader* r, CanWriter* w) noexcept nogil   # read stage: one recvmmsg()
cdef void can_write(Image* im, CanWriter* w, int fd) noexcept nogil         # write stage: one sendmmsg()
