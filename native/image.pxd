# The control image: every byte the control law (interlock, arbitrate, shape)
# reads or writes, with the exchange and the output mailbox around it, in one
# fixed-capacity block allocated and pre-faulted before the loop starts. Device
# state (CAN sockets, I2C sensors) is not here: Io, io.pxd.
# Units: W, Wh, s, ns; positive power = into the vehicle (charging).

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

cdef enum:
    MAX_PORTS = 256
    MAX_NODES = 512
    MAX_DEPTH = 8            # grid > transformer > group > ... > EVSE
    MAX_SOURCES = 4096       # measurement sources
    DIRTY_WORDS = 64         # MAX_SOURCES / 64: one dirty bit per source
    MAX_UPSTREAMS = 8        # upstreams watched for Safe State
    CMD_RING = 256           # command ring slots (power of two)
    HIST_BINS = 10000        # 1 us bins; one more bin counts the overflow
    TRACE_LEN = 8192         # recent cycles kept for inspection (power of two)
    SNAP_FRESH = 4           # flag in SnapshotBuffers.middle: not yet taken by a reader
    MAX_CURVE = 16           # points of the frequency-watt curve
    STAGE_BIN_NS = 100       # per-stage compute histograms: 100 ns bins
    MAX_SCHEDULED = 192      # future grid commands held per kind: 48 h of 15-minute windows (schedule.pxi)

cdef enum:  # Stage of a cycle
    STAGE_READ = 0
    STAGE_UPDATE = 1
    STAGE_WRITE = 2
    STAGE_PUBLISH = 3
    N_STAGES = 4

cdef enum:  # NodeKind
    NODE_GRID = 0
    NODE_TRANSFORMER = 1
    NODE_GROUP = 2
    NODE_EVSE = 3

# Measurement kinds. PORT_* target a port, NODE_* a node, SITE_* the site,
# UPSTREAM_HEARTBEAT a watched upstream (DMS, aggregator, CSMS).
cdef enum:  # SourceKind
    SRC_PORT_CONNECTED = 0
    SRC_PORT_SOC = 1
    SRC_PORT_CAPACITY_WH = 2
    SRC_PORT_ENERGY_REQUEST_WH = 3
    SRC_PORT_DEPARTURE_IN_S = 4
    SRC_PORT_MAX_CHARGE_W = 5
    SRC_PORT_MAX_DISCHARGE_W = 6
    SRC_PORT_MIN_SOC = 7
    SRC_PORT_V2G = 8
    SRC_PORT_POWER_W = 9
    SRC_PORT_CONTACTOR = 10      # contactor feedback (GPIO): 1 closed, 0 open
    SRC_PORT_PLC_LOSS = 11       # ISO 15118 PLC packet loss, 0..1
    SRC_PORT_CP_V = 12           # control pilot: its high level, V (SPI ADC; A 12, B 9, C 6, D 3, E 0, F -12)
    SRC_PORT_CP_DIODE = 13       # control pilot: 1 the PWM's low level reaches -12 V (the EV's diode), 0 not
    N_PORT_SOURCES = 14
    SRC_NODE_POWER_W = 20
    SRC_NODE_HEATSINK_C = 21     # EVSE heat-sink / power-module temperature
    SRC_NODE_AMBIENT_C = 22      # transformer ambient temperature
    SRC_NODE_TOP_OIL_C = 23      # transformer top-oil temperature (measured)
    SRC_NODE_POWER_L1_W = 24     # the node meter's active power on L1 (L2, L3 follow), import +
    SRC_NODE_POWER_L2_W = 25
    SRC_NODE_POWER_L3_W = 26
    SRC_SITE_FREQUENCY_HZ = 40
    SRC_UPSTREAM_HEARTBEAT = 50

cdef enum:  # CommandKind
    CMD_SETPOINT = 0         # fleet setpoint, signed W
    CMD_EXPORT_LIMIT = 1     # site export limit, W magnitude
    CMD_IMPORT_LIMIT = 2     # site import limit, W magnitude
    CMD_LOAD_SHED = 3        # cap on fleet import, W magnitude
    N_GRID_COMMANDS = 4
    CMD_CANCEL = 10          # value = the kind whose active command ends
    CMD_RESET_FAULT = 11     # port: clear latched faults
    CMD_LATCH_FAULT = 12     # port, value = fault bits: restore latched faults after a restart
    CMD_DISABLE_PORT = 13    # port: out of service (operator), until CMD_ENABLE_PORT
    CMD_ENABLE_PORT = 14

cdef enum:  # CommandFlag
    CMD_NOW = 1              # a grid command whose window opens when the loop takes it
    CMD_REANCHOR = 2         # the wall clock stepped: new start/expiry for a command held, never a new one

# Why the measurement gate refused a value (counted per source).
cdef enum:  # GateCode
    GATE_OK = 0
    GATE_BAD_VALUE = 1       # not finite or outside the source kind's physical range
    GATE_FUTURE = 2          # stamped after now
    GATE_TOO_OLD = 3         # older than the source's max age: it could never be used
    GATE_OWNED = 4           # the source belongs to another writer (a device)
    GATE_OUT_OF_ORDER = 5    # older than the value the source already holds
    N_GATE = 6

cdef enum:  # Writer: who may write a source (one writer per slot by construction)
    WRITER_PYTHON = 0        # measure(), measure_many(), the services
    WRITER_CAN = 1           # the loop's J1939 decoder
    WRITER_I2C = 2           # an I2C sensor: the native I/O thread, or the Python reader of a sim one
    WRITER_GPIO = 3          # the loop's GPIO reader: contactor feedback lines
    WRITER_SPI = 4           # an SPI ADC channel: the native I/O thread, or the Python reader of a sim one
    WRITER_PLC = 5           # a PLC modem's link quality, measured by the loop (io_plc)

# Why a node or port gets what it gets (the limit that bound it).
cdef enum:  # Binding
    BIND_NONE = 0
    BIND_RATING = 1          # the node's or port's own rating
    BIND_GRID_COMMAND = 2    # an import/export limit command
    BIND_SETPOINT = 3        # the fleet setpoint is met
    BIND_LOAD_SHED = 4
    BIND_DEFAULT_PROFILE = 5
    BIND_SAFE_STATE = 6
    BIND_STALE_METER = 7     # worst-case non-EV load assumed
    BIND_BASE_LOAD = 8       # non-EV load uses the headroom
    BIND_CHILDREN = 9        # everything below is at its own maximum
    BIND_PARENT = 10         # a node above has no headroom left
    BIND_EV_LIMIT = 11       # the vehicle's own power limit
    BIND_SOC = 12            # full, at minimum SoC, or departure energy at risk
    BIND_NOT_CONNECTED = 13
    BIND_NO_V2G = 14
    BIND_FAULT = 15
    BIND_RAMP = 16
    BIND_DEADBAND = 17
    BIND_THERMAL = 18        # heat-sink or transformer hot-spot derate
    BIND_PHASE_CURRENT = 19  # a per-phase current limit
    BIND_SITE_RAMP = 20      # the site's ramp limit
    BIND_FREQUENCY = 21      # frequency response moved the fleet target
    BIND_MEASURED = 22       # the port takes less than it was given (closed loop)
    BIND_RELIEF = 23         # discharging to bring an overloaded node (non-EV load) within its import limit
    BIND_GUIDANCE = 24       # given the power the planner planned for it (guidance.pxi)
    BIND_TAPER = 25          # near full: what the site's vehicles were seen to take there (learn_taper)

cdef enum:  # PortFault: transient bits are recomputed every cycle, session bits
            # clear when the vehicle leaves, latched bits only on a reset command
    FAULT_SESSION_STALE = 1       # session data stopped arriving while connected
    FAULT_OVERTEMP = 2            # the EVSE's heat sink is at or above its trip temperature
    FAULT_TEMP_STALE = 4          # a required temperature is stale
    FAULT_LINK_DOWN = 8           # its link cannot deliver outputs (J1939 address lost)
    FAULT_PILOT = 0x40            # control pilot in state E or F, or its voltage stale
    FAULT_TRANSIENT = 0xFF
    FAULT_ISO_TIMEOUT = 0x100     # PLC packet loss above its limit: stopped for this session
    FAULT_CP_DIODE = 0x800        # the pilot's PWM never reaches -12 V: no EV diode; stopped for this session
    FAULT_SESSION = 0xFF00
    FAULT_CONTACTOR = 0x10000     # contactor feedback disagrees with the command
    FAULT_JOURNAL = 0x20000       # the latched-fault journal was unreadable at start
    FAULT_LATCHED = 0x00FF0000    # cleared only by a reset naming the latch
    FAULT_OUT_OF_SERVICE = 0x1000000  # taken out of service by an operator; cleared by enable
    FAULT_PERSISTENT = 0x01FF0000 # what the journal keeps across restarts

cdef enum:  # FrequencyMode
    FREQ_OFF = 0
    FREQ_DROOP = 1
    FREQ_CURVE = 2

cdef enum:  # SafeReason
    SAFE_UPSTREAM = 1             # an upstream is lost or not yet healthy long enough
    SAFE_OVERRUN = 2              # repeated cycle overruns
    SAFE_STOPPED = 4              # the loop stopped: the published outputs are the safe ones

cdef struct Input:            # what the per-port passes read of a source, every cycle
    double value
    int64_t fresh_until_ns       # fresh while now_ns is at most this (INT64_MIN: never received)

cdef struct InputStamp:       # ... and what few of them read (Input stays 16 bytes: 4 a cache line)
    int64_t t_ns
    uint64_t applied_cycle       # the cycle that took the current value
    int32_t received

cdef struct Slot:            # producer side of one measurement source (seqlock; odd = being written)
    uint64_t seq
    double value
    int64_t t_ns
    uint64_t _pad[5]

cdef struct Gate:            # what the gate lets into one source; fixed before the loop starts
    double lo
    double hi
    int64_t max_age_ns
    int32_t writer
    int32_t _pad
    uint64_t accepted
    uint64_t rejected[N_GATE]

cdef struct Command:
    int32_t kind
    int32_t port
    double value
    int64_t starts_ns            # grid command: its window opens (flags CMD_NOW: when taken)
    int64_t expires_ns
    uint64_t id_hash
    uint64_t latch_seq           # reset: clears only latches with a sequence up to this
    uint64_t of_hash             # cancel: the id hash of the command it ends (0: every one of its kind)
    uint32_t gen                 # scheduled: the slot's generation, chosen by the submitter
    int32_t slot                 # scheduled: its slot in the kind's queue, -1 none
    int32_t flags                # CommandFlag bits

cdef struct CommandCell:
    uint64_t seq                 # Vyukov's turn counter: whose turn the cell is
    Command c

cdef struct CommandRing:     # bounded lock-free MPSC queue: any thread pushes, the loop pops
    uint64_t head
    uint64_t _pad_head[7]
    uint64_t tail
    uint64_t _pad_tail[7]
    CommandCell cell[CMD_RING]

cdef struct ActiveCommand:
    double value
    int64_t starts_ns
    int64_t expires_ns
    uint64_t id_hash
    uint64_t seq                 # submission order: breaks ties between equal starts
    int32_t active
    int32_t _pad

cdef struct ScheduledCommand:    # a grid command waiting for its window (schedule.pxi)
    double value
    int64_t starts_ns
    int64_t expires_ns
    uint64_t id_hash
    uint64_t seq
    uint32_t gen                 # the submitter's generation of this slot: it sees the loop took it
    int32_t used

cdef struct PortRow:
    uint64_t cycle
    int64_t valid_until_ns
    double setpoint_w
    double target_w
    double min_w
    double max_w
    double measured_w
    double soc
    double energy_request_wh
    double departure_in_s
    double laxity_s
    int32_t binding
    int32_t binding_node
    uint32_t faults
    uint8_t connected
    uint8_t v2g
    uint8_t contactor_closed       # the command: close the contactor
    uint8_t _pad
    uint64_t latch_seq             # sequence number of the port's latest latch (0: never)
    double capacity_wh
    double min_soc
    double plan_w                  # the planner's advice in force (NaN: none or expired)
    double ev_max_charge_w         # what the EV announces (NaN: nothing fresh), for the planner
    double ev_max_discharge_w
    double given_w                 # what it was given when its power was last measured (closed loop)

cdef struct NodeRow:
    uint64_t cycle
    double import_headroom_w
    double export_headroom_w
    double overload_w              # import beyond the limit that V2G discharge is to relieve
    double fleet_w
    double measured_w
    double non_ev_w
    double non_ev_phase_a[3]       # non-EV current per phase, import + (NaN: no per-phase meter)
    double derate                  # thermal derate factor applied to the limits (1 = none)
    double temperature_c           # heat sink (EVSE) or hot spot (transformer); NaN if none
    int32_t binding
    uint32_t faults

cdef struct SiteRow:
    uint64_t cycle
    int64_t t_ns
    double setpoint_w
    double requested_w
    double fleet_target_w
    double fleet_w
    double fleet_measured_w
    double taper_span             # the taper span in use: learned, else [control] taper_span
    double import_limit_w
    double export_limit_w
    double load_shed_w
    double frequency_hz
    double frequency_response_w
    double fleet_max_w
    double fleet_min_w
    double flex_charge_wh          # the energy the fleet can take over the next hour ...
    double flex_discharge_wh       # ... and give, no EV missing its departure energy
    uint64_t commands_applied
    uint64_t commands_expired
    uint64_t command_digest
    uint64_t measurements_applied
    int32_t binding
    int32_t safe_state
    int32_t ports_charging
    int32_t ports_discharging
    uint64_t latch_counter         # latches so far (the journal watches it)
    uint32_t upstreams_waiting     # upstreams not heard since start (bit per upstream)
    uint32_t upstreams_lost        # heard once, now lost
    uint64_t schedule_version      # +1 whenever the queue of scheduled commands changed
    uint64_t schedule_refused      # scheduled commands the loop had no slot for (never, if submit works)
    int64_t setpoint_expires_ns
    int64_t guidance_expires_ns    # 0: no guidance taken yet
    int64_t guidance_taken_ns
    uint64_t guidance_id
    int32_t guidance_fresh

cdef struct Snapshot:
    SiteRow site
    ActiveCommand active[N_GRID_COMMANDS]
    ScheduledCommand sched[N_GRID_COMMANDS][MAX_SCHEDULED]
    NodeRow node[MAX_NODES]
    PortRow port[MAX_PORTS]

cdef struct SnapshotBuffers:  # triple buffer: the loop never waits, readers never see a torn copy
    uint64_t middle           # buffer index | SNAP_FRESH
    uint64_t _pad[7]
    uint64_t back             # owned by the loop
    uint64_t front            # owned by the (single, locked) reader
    Snapshot buf[3]

cdef struct Trace:
    uint64_t cycle
    int64_t planned_ns
    int64_t wake_ns
    int64_t end_ns

cdef struct Stats:
    uint64_t cycles
    uint64_t overruns
    uint64_t skipped_periods
    uint64_t overrun_streak
    int64_t lat_min_ns
    int64_t lat_max_ns
    uint64_t lat_sum_ns
    int64_t cmp_min_ns
    int64_t cmp_max_ns
    uint64_t cmp_sum_ns
    uint64_t lat_hist[HIST_BINS + 1]
    uint64_t cmp_hist[HIST_BINS + 1]
    uint64_t stage_hist[N_STAGES][HIST_BINS + 1]
    uint64_t trace_head
    Trace trace[TRACE_LEN]

cdef struct Thermal:             # transformer: first-order top-oil and hot-spot (IEC 60076-7 style)
    int32_t enabled
    int32_t ambient              # input indices, -1 if none
    int32_t top_oil
    double rated_w
    double top_oil_rise_k        # rated top-oil rise over ambient
    double hot_spot_gradient_k   # rated hot-spot rise over top oil (H * gr)
    double loss_ratio            # load losses / no-load losses at rated load (R)
    double oil_exponent          # x
    double winding_exponent      # y
    double tau_oil_s
    double tau_winding_s
    double derate_start_c        # hot spot: derate from here ...
    double limit_c               # ... to zero here
    int32_t started
    double d_oil_k               # state: top-oil rise
    double d_hot_k               # state: hot-spot rise over top oil

cdef struct Node:
    # What every cycle reads or writes of every node comes first, in the fewest cache lines
    # (four or five of ten): at 50 ports the nodes and ports no longer fit the L1 cache when a
    # walk touches every line of each. Phase books and the heat sink's thresholds, read only
    # where a node has them, come last.
    int32_t parent
    int32_t depth
    int32_t kind
    int32_t meter                # input index of the node's power meter, or -1
    int32_t heatsink             # input index of the heat-sink temperature, or -1
    uint32_t faults
    int32_t bind_import
    int32_t bind_export
    int32_t binding
    int32_t phase_meter[3]       # input indices of the meter's per-phase power, or -1
    double import_limit_w
    double export_limit_w
    double base_load_min_w       # non-EV load assumed when the meter is stale
    double base_load_max_w
    double phase_limit_a         # per-phase current limit of the flow below (INFINITY: none)
    double fleet_measured_w
    double non_ev_w              # held between meter samples
    double import_headroom_w
    double export_headroom_w
    double overload_w            # non-EV load above the import limit: what discharge must relieve
    double rem_import_w
    double rem_export_w
    double need_w                # arbitration: overload still to relieve
    double alloc_w
    double derate
    double temperature_c
    double flex_take_wh          # fleet_energy: what the ports below take over the hour, summed so far ...
    double flex_give_wh          # ... and give
    double non_ev_phase_a[3]     # held between meter samples; NaN: no per-phase meter or stale (the snapshot's)
    Thermal thermal              # (enabled, its first field, is read every cycle)
    # only where the node has a phase limit, per-phase meters or a heat sink
    double voltage_v             # phase-to-neutral: turns a phase's metered power into its current
    double fleet_phase_a[3]      # the fleet's measured current per phase, import + (per-phase meters)
    double phase_import_a[3]     # per-phase current room for the fleet: charging ...
    double phase_export_a[3]     # ... and discharging (non-EV load taken into account)
    double overload_a[3]         # non-EV current above the phase limit: what discharge must relieve
    double need_a[3]             # arbitration: phase overload still to relieve
    double rem_phase_a[3]
    double phase_w[2][3]         # fleet_capability: charge / discharge power passed up per phase ...
    double phase_a[2][3]         # ... and its current
    double derate_start_c        # heat sink: linear derate from here ...
    double trip_c                # ... to zero here

cdef struct Port:
    # configuration
    int32_t evse
    int32_t npath
    int32_t path[MAX_DEPTH]      # ancestors, nearest first
    int32_t src[N_PORT_SOURCES]  # input index per port source, -1 if none
    double rating_charge_w
    double rating_discharge_w
    uint32_t phase_mask          # site phases the port draws from (bits L1 L2 L3)
    double watts_per_amp         # W per A on each of its phases: voltage x number of phases
    double pilot_step_pct        # an IEC 61851 pilot sets its current, in duty steps of this; 0: none
    # per cycle
    int32_t cp_state             # control pilot state (CP_*, pilot.pxd) when its voltage is sampled
    double pilot_duty_pct        # the duty a PWM pilot offers: 100 (+12 V, no current) or the setpoint's
    int32_t connected
    int32_t v2g
    double soc
    double capacity_wh
    double energy_request_wh
    double departure_in_s
    double laxity_s
    double min_soc
    double ev_max_charge_w       # what its EV announces, fresh (NaN: nothing fresh)
    double ev_max_discharge_w
    double measured_w
    double min_w
    double floor_w               # min_w without the departure reserve (<= 0)
    double max_w
    double open_max_w            # max_w without the closed loop's cap
    double target_w
    double setpoint_w
    double weight                # its weight in the water-filled tier (set_keys; its key is max_w over it)
    int32_t bind_max
    int32_t bind_min
    int32_t binding
    int32_t binding_node
    uint32_t faults
    int32_t contactor_closed
    int64_t contactor_since_ns   # when the command last changed (feedback settles after it)
    uint64_t latch_seq
    double ramp_base_w           # where this cycle's output change starts
    double relief_w              # discharge given to relieve an overloaded node (>= 0)
    double plan_w                # the planner's advice (guidance.pxi), used while fresh
    # closed loop: what the port was seen to take caps what it is given (0: no cap; a cap is
    # never below CL_MARGIN_W, and a zeroed port is uncapped)
    double cap_charge_w
    double cap_discharge_w
    int64_t short_since_ns       # since when it takes less than given (0: it does not)
    double steady_w              # the setpoint it has been given, within the closed loop's tolerance ...
    int64_t steady_since_ns      # ... since then
    double given_w               # the setpoint its latest fresh power was compared with

cdef struct Upstream:
    int32_t input
    int32_t lost
    int32_t heard                # fresh at least once since start
    int64_t healthy_since_ns

cdef struct Options:
    int64_t period_ns
    double port_ramp_w_per_s
    double deadband_w
    int64_t output_hold_ns
    double default_fleet_import_w
    double discharge_reserve_s    # no discharge once laxity falls to this
    double discharge_taper_s      # discharge tapers to zero over this much laxity
    double urgency_window_s       # laxity below this (and >= 0) is served first
    double setpoint_draws_reserve # 1: an export setpoint the fleet cannot meet otherwise draws on floor_w
    uint64_t overrun_streak_safe  # this many overruns in a row enter Safe State
    int64_t safe_exit_ns          # healthy this long before leaving Safe State
    double site_ramp_w_per_s
    double plc_loss_limit
    int64_t contactor_settle_ns
    int64_t stop_timeout_ns
    double stop_open_below_w
    int64_t settle_ns             # taking less than given this long caps a port near what it takes
    double probe_w_per_s          # a capped port's cap rises this fast
    double taper_span             # the taper's span until one is seen (Image.taper_span)
    int32_t freq_mode
    double freq_nominal_hz
    double freq_db_under_hz
    double freq_db_over_hz
    double freq_droop_under
    double freq_droop_over
    double freq_rated_w
    double freq_tau_s
    int32_t curve_n
    double curve_hz[MAX_CURVE]
    double curve_w[MAX_CURVE]

cdef enum:  # OutputLink: who takes a port's output from the write stage
    OUTPUT_PYTHON = 0            # a Python service, from the output mailbox
    OUTPUT_CAN = 1               # the write stage itself: a J1939 setpoint frame
    OUTPUT_PWM = 2               # the write stage's duty, written by the I/O thread (io_pwm)

cdef struct PortOutput:          # what a port's link is to apply (seqlocked; writer: the loop)
    uint64_t seq                 # odd while being written
    uint64_t sequence            # the output's own number: +1 each time it is handed over
    double setpoint_w
    int64_t valid_until_ns       # the dead-man: after this the EVSE must fall back to 0 W
    int64_t contactor_closed
    uint64_t taken               # the sequence a Python link last took (written by that link)
    int64_t put_ns               # when it was handed over (loop only)
    uint64_t refused             # outputs its link could not take (socket full, consumer gone)

cdef struct Outbox:              # the output mailbox for links served by Python
    int32_t efd                  # eventfd the write stage signals when an output moved; -1: none
    int32_t _pad
    uint64_t signals             # eventfd writes
    uint64_t signal_errors       # eventfd writes refused (EAGAIN: the counter is full)
    PortOutput out[MAX_PORTS]    # also what was last handed over, for the deadband (the loop reads its own writes)
    uint8_t link[MAX_PORTS]      # OutputLink per port
    uint8_t link_down[MAX_PORTS] # set by the write stage: the link cannot deliver (the interlock reads it)

cdef struct Guidance:        # the horizon planner's advice (seqlocked; one writer: the planner service)
    uint64_t seq                 # odd while being written; 0: never written
    uint64_t _pad[7]
    int64_t expires_ns           # loop time after which the advice is ignored
    uint64_t plan_id
    double plan_w[MAX_PORTS]     # planned power per port now (NaN: no advice)

cdef struct Exchange:
    uint64_t dirty[DIRTY_WORDS]
    Slot slot[MAX_SOURCES]
    Gate gate[MAX_SOURCES]
    CommandRing ring
    Guidance guidance

cdef struct Image:
    Options opt
    int32_t n_nodes
    int32_t n_ports
    int32_t n_inputs
    int32_t n_upstreams
    int32_t freq_input
    int32_t safe_state
    int64_t safe_overrun_until_ns
    uint64_t cycle
    int64_t now_ns
    int64_t last_now_ns
    uint64_t commands_applied
    uint64_t commands_expired
    uint64_t command_digest
    uint64_t measurements_applied
    uint64_t latch_counter
    uint32_t upstreams_waiting
    uint32_t upstreams_lost
    double requested_w
    double frequency_response_w   # lagged
    double fleet_max_w            # what the fleet could charge now
    double fleet_min_w            # ... and discharge (negative)
    double flex_charge_wh         # what it could take over the next hour
    double flex_discharge_wh      # ... and give, no EV missing its departure energy
    int32_t flex_next             # the first port fleet_energy has not summed in this round
    double fleet_target_w
    double fleet_w
    double fleet_measured_w
    double taper_span             # the SoC span over which this site's EVs taper: learned, else opt's
    double import_limit_w
    double export_limit_w
    int32_t site_binding
    int32_t ports_charging
    int32_t ports_discharging
    int32_t stopping              # a stop began: 0 W everywhere, contactors open as current falls
    int32_t stop_hard             # ... or at once (a hard stop)
    int64_t stop_deadline_ns      # every contactor is open by then
    uint64_t stop_cycle           # the last cycle before the stop began
    ActiveCommand grid_cmd[N_GRID_COMMANDS]
    ScheduledCommand sched[N_GRID_COMMANDS][MAX_SCHEDULED]
    int64_t sched_next_ns         # the earliest start queued (INT64_MAX: none)
    uint64_t sched_version
    uint64_t sched_seq
    uint64_t sched_refused
    Node node[MAX_NODES]
    Port port[MAX_PORTS]
    Input input[MAX_SOURCES]
    InputStamp input_stamp[MAX_SOURCES]
    Upstream upstream[MAX_UPSTREAMS]
    double key[MAX_PORTS]        # each port's arbitration key (set_keys), side by side for sort_ports
    int32_t order[MAX_PORTS]
    int32_t order_tmp[MAX_PORTS]
    uint64_t guide_seq            # the guidance version the ports hold (0: none yet)
    int64_t guide_expires_ns
    uint64_t guide_id
    int64_t guide_taken_ns
    double guide_tmp[MAX_PORTS]
    Stats stats
    Exchange ex
    Outbox outbox
    SnapshotBuffers snap
