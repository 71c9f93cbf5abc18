# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The native core of v2g-rt: process image, cycle, exchange and scheduler.

They are compiled as one module so the C compiler sees the whole loop at once.
Python reaches the image only through the methods of `Core`, which go through
the exchange; `v2g_rt.controller.Controller` is the public face.
"""

from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, INT64_MAX, INT64_MIN
from libc.stdlib cimport free
from libc.string cimport memset
from libc.errno cimport errno, EPERM, EINVAL
from libc.math cimport INFINITY, NAN
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.string cimport memcpy, strlen
from posix.unistd cimport write, close, read

# Declarations: _core.pxd (the control image, the kernel interfaces, what each unit offers).
include "clock.pxi"
include "exchange.pxi"
include "guidance.pxi"
include "io_can.pxi"
include "io_gpio.pxi"
include "io_i2c.pxi"
include "io_spi.pxi"
include "io_pwm.pxi"
include "io_thread.pxi"
include "io_plc.pxi"
include "pilot.pxi"
include "interlock.pxi"
include "arbitrate.pxi"
include "schedule.pxi"
include "cycle.pxi"
include "scheduler.pxi"
include "entry.pxi"

import os

CAPACITY = {"ports": MAX_PORTS, "nodes": MAX_NODES, "sources": MAX_SOURCES,
            "upstreams": MAX_UPSTREAMS, "depth": MAX_DEPTH, "command_ring": CMD_RING,
            "hist_bins": HIST_BINS, "trace": TRACE_LEN, "scheduled_per_kind": MAX_SCHEDULED}

NODE_KINDS = {"grid": NODE_GRID, "transformer": NODE_TRANSFORMER,
              "group": NODE_GROUP, "evse": NODE_EVSE}

# Every measurement source kind, once: its code in the image and its physical range (the gate
# refuses values outside it). Port kinds come first, in SRC_PORT_* order.
SOURCES = {
    "connected": (SRC_PORT_CONNECTED, 0.0, 1.0), "soc": (SRC_PORT_SOC, 0.0, 1.0),
    "capacity_wh": (SRC_PORT_CAPACITY_WH, 1.0, 1e7),
    "energy_request_wh": (SRC_PORT_ENERGY_REQUEST_WH, 0.0, 1e7),
    "departure_in_s": (SRC_PORT_DEPARTURE_IN_S, -1e7, 1e8),
    "max_charge_w": (SRC_PORT_MAX_CHARGE_W, 0.0, 1e7), "max_discharge_w": (SRC_PORT_MAX_DISCHARGE_W, 0.0, 1e7),
    "min_soc": (SRC_PORT_MIN_SOC, 0.0, 1.0), "v2g": (SRC_PORT_V2G, 0.0, 1.0),
    "power_w": (SRC_PORT_POWER_W, -1e7, 1e7),
    "contactor": (SRC_PORT_CONTACTOR, 0.0, 1.0), "plc_loss": (SRC_PORT_PLC_LOSS, 0.0, 1.0),
    "cp_v": (SRC_PORT_CP_V, -15.0, 15.0), "cp_diode": (SRC_PORT_CP_DIODE, 0.0, 1.0),
    "node_power_w": (SRC_NODE_POWER_W, -1e9, 1e9), "heatsink_c": (SRC_NODE_HEATSINK_C, -60.0, 250.0),
    "ambient_c": (SRC_NODE_AMBIENT_C, -60.0, 80.0), "top_oil_c": (SRC_NODE_TOP_OIL_C, -60.0, 250.0),
    "node_power_l1_w": (SRC_NODE_POWER_L1_W, -1e9, 1e9), "node_power_l2_w": (SRC_NODE_POWER_L2_W, -1e9, 1e9),
    "node_power_l3_w": (SRC_NODE_POWER_L3_W, -1e9, 1e9),
    "frequency_hz": (SRC_SITE_FREQUENCY_HZ, 40.0, 70.0), "heartbeat": (SRC_UPSTREAM_HEARTBEAT, 0.0, 1.0),
}
SOURCE_KINDS = {name: code for name, (code, _, _) in SOURCES.items()}
SOURCE_RANGES = {name: (lo, hi) for name, (_, lo, hi) in SOURCES.items()}
PORT_SOURCES = {name: code for name, code in SOURCE_KINDS.items() if code < N_PORT_SOURCES}
assert list(PORT_SOURCES.values()) == list(range(N_PORT_SOURCES))

COMMAND_KINDS = {"setpoint": CMD_SETPOINT, "export_limit": CMD_EXPORT_LIMIT,
                 "import_limit": CMD_IMPORT_LIMIT, "load_shed": CMD_LOAD_SHED,
                 "cancel": CMD_CANCEL, "reset_fault": CMD_RESET_FAULT, "latch_fault": CMD_LATCH_FAULT,
                 "disable_port": CMD_DISABLE_PORT, "enable_port": CMD_ENABLE_PORT}
GRID_COMMANDS = N_GRID_COMMANDS

BINDINGS = ("none", "rating", "grid_command", "setpoint", "load_shed", "default_profile",
            "safe_state", "stale_meter", "base_load", "children", "parent", "ev_limit",
            "soc", "not_connected", "no_v2g", "fault", "ramp", "deadband", "thermal",
            "phase_current", "site_ramp", "frequency", "measured", "relief", "guidance",
            "taper")
assert len(BINDINGS) == BIND_TAPER + 1

FAULTS = {"session_stale": FAULT_SESSION_STALE, "overtemp": FAULT_OVERTEMP, "temp_stale": FAULT_TEMP_STALE,
          "iso_timeout": FAULT_ISO_TIMEOUT, "contactor": FAULT_CONTACTOR, "journal": FAULT_JOURNAL,
          "out_of_service": FAULT_OUT_OF_SERVICE, "link_down": FAULT_LINK_DOWN,
          "pilot": FAULT_PILOT, "cp_diode": FAULT_CP_DIODE}
LATCHED_FAULTS = FAULT_LATCHED
PERSISTENT_FAULTS = FAULT_PERSISTENT
GATE_CODES = ("accepted", "ERR_MEAS_BAD_VALUE", "ERR_MEAS_FUTURE", "ERR_MEAS_TOO_OLD",
              "ERR_MEAS_DEVICE_OWNED", "ERR_MEAS_OUT_OF_ORDER")
assert len(GATE_CODES) == N_GATE
WRITERS = {"python": WRITER_PYTHON, "can": WRITER_CAN, "i2c": WRITER_I2C, "gpio": WRITER_GPIO, "spi": WRITER_SPI, "plc": WRITER_PLC}
GPIO_FD_KINDS = {"chardev": GPIO_FD_CHARDEV, "sim": GPIO_FD_SIM}
GPIO_DRIVES = {"loop": GPIO_DRIVE_LOOP, "io-thread": GPIO_DRIVE_THREAD}
FREQUENCY_MODES = {"off": FREQ_OFF, "droop": FREQ_DROOP, "curve": FREQ_CURVE}
cdef char* UPDATE_DONE = b"UPDATE_DONE\n"
STAGES = ("read", "update", "write", "publish")    # a cycle's stages, in order
assert len(STAGES) == N_STAGES
STAGE_BIN_NS_ = STAGE_BIN_NS
J1939_PGNS = {"setpoint": PGN_SETPOINT, "address_claimed": PGN_ADDRESS_CLAIMED}   # what the write stage sends
SAFE_REASONS = {"upstream": SAFE_UPSTREAM, "overrun": SAFE_OVERRUN, "stopped": SAFE_STOPPED}


# Field layouts of the published rows, for numpy structured dtypes. Offsets are
# taken from the compiled structs, so Python cannot disagree with C about them.
cdef PortRow _pr
cdef NodeRow _nr
cdef SiteRow _sr
cdef Trace _tr
cdef PortOutput _po
cdef ActiveCommand _ac
cdef ScheduledCommand _sc

cdef size_t _off(void* field, void* base):
    return <size_t>field - <size_t>base

def _layout(name):
    if name == "port":
        b = <void*>&_pr
        return sizeof(PortRow), [
            ("cycle", "u8", _off(&_pr.cycle, b)), ("valid_until_ns", "i8", _off(&_pr.valid_until_ns, b)),
            ("setpoint_w", "f8", _off(&_pr.setpoint_w, b)), ("target_w", "f8", _off(&_pr.target_w, b)),
            ("min_w", "f8", _off(&_pr.min_w, b)), ("max_w", "f8", _off(&_pr.max_w, b)),
            ("measured_w", "f8", _off(&_pr.measured_w, b)), ("soc", "f8", _off(&_pr.soc, b)),
            ("energy_request_wh", "f8", _off(&_pr.energy_request_wh, b)),
            ("departure_in_s", "f8", _off(&_pr.departure_in_s, b)), ("laxity_s", "f8", _off(&_pr.laxity_s, b)),
            ("binding", "i4", _off(&_pr.binding, b)), ("binding_node", "i4", _off(&_pr.binding_node, b)),
            ("faults", "u4", _off(&_pr.faults, b)), ("connected", "?", _off(&_pr.connected, b)),
            ("v2g", "?", _off(&_pr.v2g, b)), ("contactor_closed", "?", _off(&_pr.contactor_closed, b)),
            ("latch_seq", "u8", _off(&_pr.latch_seq, b)), ("capacity_wh", "f8", _off(&_pr.capacity_wh, b)),
            ("min_soc", "f8", _off(&_pr.min_soc, b)), ("plan_w", "f8", _off(&_pr.plan_w, b)),
            ("ev_max_charge_w", "f8", _off(&_pr.ev_max_charge_w, b)),
            ("ev_max_discharge_w", "f8", _off(&_pr.ev_max_discharge_w, b)),
            ("given_w", "f8", _off(&_pr.given_w, b))]
    if name == "node":
        b = <void*>&_nr
        return sizeof(NodeRow), [
            ("cycle", "u8", _off(&_nr.cycle, b)),
            ("import_headroom_w", "f8", _off(&_nr.import_headroom_w, b)),
            ("export_headroom_w", "f8", _off(&_nr.export_headroom_w, b)),
            ("overload_w", "f8", _off(&_nr.overload_w, b)),
            ("fleet_w", "f8", _off(&_nr.fleet_w, b)), ("measured_w", "f8", _off(&_nr.measured_w, b)),
            ("non_ev_w", "f8", _off(&_nr.non_ev_w, b)),
            ("non_ev_l1_a", "f8", _off(&_nr.non_ev_phase_a[0], b)),
            ("non_ev_l2_a", "f8", _off(&_nr.non_ev_phase_a[1], b)),
            ("non_ev_l3_a", "f8", _off(&_nr.non_ev_phase_a[2], b)), ("derate", "f8", _off(&_nr.derate, b)),
            ("temperature_c", "f8", _off(&_nr.temperature_c, b)), ("binding", "i4", _off(&_nr.binding, b)),
            ("faults", "u4", _off(&_nr.faults, b))]
    if name == "site":
        b = <void*>&_sr
        return sizeof(SiteRow), [
            ("cycle", "u8", _off(&_sr.cycle, b)), ("t_ns", "i8", _off(&_sr.t_ns, b)),
            ("setpoint_w", "f8", _off(&_sr.setpoint_w, b)), ("requested_w", "f8", _off(&_sr.requested_w, b)),
            ("fleet_target_w", "f8", _off(&_sr.fleet_target_w, b)), ("fleet_w", "f8", _off(&_sr.fleet_w, b)),
            ("fleet_measured_w", "f8", _off(&_sr.fleet_measured_w, b)),
            ("taper_span", "f8", _off(&_sr.taper_span, b)),
            ("import_limit_w", "f8", _off(&_sr.import_limit_w, b)),
            ("export_limit_w", "f8", _off(&_sr.export_limit_w, b)),
            ("load_shed_w", "f8", _off(&_sr.load_shed_w, b)), ("frequency_hz", "f8", _off(&_sr.frequency_hz, b)),
            ("frequency_response_w", "f8", _off(&_sr.frequency_response_w, b)),
            ("fleet_max_w", "f8", _off(&_sr.fleet_max_w, b)), ("fleet_min_w", "f8", _off(&_sr.fleet_min_w, b)),
            ("flex_charge_wh", "f8", _off(&_sr.flex_charge_wh, b)),
            ("flex_discharge_wh", "f8", _off(&_sr.flex_discharge_wh, b)),
            ("commands_applied", "u8", _off(&_sr.commands_applied, b)),
            ("commands_expired", "u8", _off(&_sr.commands_expired, b)),
            ("command_digest", "u8", _off(&_sr.command_digest, b)),
            ("measurements_applied", "u8", _off(&_sr.measurements_applied, b)),
            ("binding", "i4", _off(&_sr.binding, b)), ("safe_state", "i4", _off(&_sr.safe_state, b)),
            ("ports_charging", "i4", _off(&_sr.ports_charging, b)),
            ("ports_discharging", "i4", _off(&_sr.ports_discharging, b)),
            ("latch_counter", "u8", _off(&_sr.latch_counter, b)),
            ("upstreams_waiting", "u4", _off(&_sr.upstreams_waiting, b)), ("upstreams_lost", "u4", _off(&_sr.upstreams_lost, b)),
            ("schedule_version", "u8", _off(&_sr.schedule_version, b)),
            ("schedule_refused", "u8", _off(&_sr.schedule_refused, b)),
            ("setpoint_expires_ns", "i8", _off(&_sr.setpoint_expires_ns, b)),
            ("guidance_expires_ns", "i8", _off(&_sr.guidance_expires_ns, b)),
            ("guidance_taken_ns", "i8", _off(&_sr.guidance_taken_ns, b)),
            ("guidance_id", "u8", _off(&_sr.guidance_id, b)), ("guidance_fresh", "i4", _off(&_sr.guidance_fresh, b))]
    if name == "active":
        b = <void*>&_ac
        return sizeof(ActiveCommand), [
            ("value", "f8", _off(&_ac.value, b)), ("starts_ns", "i8", _off(&_ac.starts_ns, b)),
            ("expires_ns", "i8", _off(&_ac.expires_ns, b)), ("id_hash", "u8", _off(&_ac.id_hash, b)),
            ("seq", "u8", _off(&_ac.seq, b)), ("active", "i4", _off(&_ac.active, b))]
    if name == "scheduled":
        b = <void*>&_sc
        return sizeof(ScheduledCommand), [
            ("value", "f8", _off(&_sc.value, b)), ("starts_ns", "i8", _off(&_sc.starts_ns, b)),
            ("expires_ns", "i8", _off(&_sc.expires_ns, b)), ("id_hash", "u8", _off(&_sc.id_hash, b)),
            ("seq", "u8", _off(&_sc.seq, b)), ("gen", "u4", _off(&_sc.gen, b)), ("used", "i4", _off(&_sc.used, b))]
    if name == "output":
        b = <void*>&_po
        return sizeof(PortOutput), [
            ("sequence", "u8", _off(&_po.sequence, b)), ("setpoint_w", "f8", _off(&_po.setpoint_w, b)),
            ("valid_until_ns", "i8", _off(&_po.valid_until_ns, b)),
            ("contactor_closed", "i8", _off(&_po.contactor_closed, b))]
    if name == "trace":
        b = <void*>&_tr
        return sizeof(Trace), [
            ("cycle", "u8", _off(&_tr.cycle, b)), ("planned_ns", "i8", _off(&_tr.planned_ns, b)),
            ("wake_ns", "i8", _off(&_tr.wake_ns, b)), ("end_ns", "i8", _off(&_tr.end_ns, b))]
    raise KeyError(name)


def pilot_duty(double amps):
    """IEC 61851-1 control pilot: the duty (%) that offers amps (0 below 6 A)."""
    return pilot_duty_pct(amps)


def pilot_current(double duty_pct):
    """IEC 61851-1 control pilot: the current (A) a duty (%) offers (0 outside 10-96 %)."""
    return pilot_current_a(duty_pct)


def pilot_duty_to_ns(double duty_pct, int64_t period_ns):
    """A duty (%) as the ns of high time a PWM pilot of period_ns writes (rounded down)."""
    return pilot_duty_ns(duty_pct, period_ns)


def pilot_floor(double amps, double step_pct):
    """The most current a pilot with duty resolution step_pct offers without exceeding amps."""
    if not step_pct > 0.0:
        raise ValueError(f"step_pct must be > 0, not {step_pct}")
    return pilot_floor_a(amps, step_pct)


# The control options the core takes (the rest of site.Control configures sources): where each
# lives in Options and how it is stored (f8: as is; ns: seconds to saturated ns; u8: a count).
cdef Options _op
_OPTION_FIELDS = {
    "port_ramp_w_per_s": (_off(&_op.port_ramp_w_per_s, &_op), "f8"),
    "deadband_w": (_off(&_op.deadband_w, &_op), "f8"),
    "output_hold_s": (_off(&_op.output_hold_ns, &_op), "ns"),
    "default_fleet_import_w": (_off(&_op.default_fleet_import_w, &_op), "f8"),
    "discharge_reserve_s": (_off(&_op.discharge_reserve_s, &_op), "f8"),
    "discharge_taper_s": (_off(&_op.discharge_taper_s, &_op), "f8"),
    "urgency_window_s": (_off(&_op.urgency_window_s, &_op), "f8"),
    "setpoint_draws_reserve": (_off(&_op.setpoint_draws_reserve, &_op), "f8"),
    "overrun_streak_safe": (_off(&_op.overrun_streak_safe, &_op), "u8"),
    "safe_exit_s": (_off(&_op.safe_exit_ns, &_op), "ns"),
    "site_ramp_w_per_s": (_off(&_op.site_ramp_w_per_s, &_op), "f8"),
    "plc_loss_limit": (_off(&_op.plc_loss_limit, &_op), "f8"),
    "contactor_settle_s": (_off(&_op.contactor_settle_ns, &_op), "ns"),
    "stop_timeout_s": (_off(&_op.stop_timeout_ns, &_op), "ns"),
    "stop_open_below_w": (_off(&_op.stop_open_below_w, &_op), "f8"),
    "settle_s": (_off(&_op.settle_ns, &_op), "ns"),
    "probe_w_per_s": (_off(&_op.probe_w_per_s, &_op), "f8"),
    "taper_span": (_off(&_op.taper_span, &_op), "f8"),
}
CONTROL_OPTIONS = tuple(_OPTION_FIELDS)


cdef set_options(Options* o, dict options):
    unknown = set(options) - set(CONTROL_OPTIONS)
    if unknown:
        raise TypeError(f"unknown control option(s) {', '.join(sorted(unknown))}")
    cdef char* field
    for name, value in options.items():
        off, kind = _OPTION_FIELDS[name]
        field = <char*>o + <size_t>off
        if name == "discharge_taper_s":
            value = max(value, 1e-3)          # the taper divides by it
        if kind == "f8":
            (<double*>field)[0] = value
        elif kind == "ns":
            (<int64_t*>field)[0] = v2g_s_to_ns(value)
        else:
            (<uint64_t*>field)[0] = value


cdef void image_defaults(Image* im, int64_t period_ns) noexcept nogil:
    snap_init(&im.snap)
    ring_init(&im.ex.ring)
    im.opt.period_ns = period_ns        # the control options come from site.Control (configure)
    im.opt.freq_mode = FREQ_OFF
    im.freq_input = -1
    im.sched_next_ns = INT64_MAX
    im.stats.lat_min_ns = INT64_MAX
    im.stats.cmp_min_ns = INT64_MAX
    im.stats.lat_max_ns = INT64_MIN
    im.stats.cmp_max_ns = INT64_MIN


cdef Image* new_image(int64_t period_ns) except NULL:
    cdef size_t size = (sizeof(Image) + 4095) // 4096 * 4096
    cdef Image* im = <Image*>aligned_alloc(4096, size)
    if im == NULL:
        raise MemoryError(f"cannot allocate the process image ({size} bytes)")
    memset(im, 0, size)      # also pre-faults every page before the loop runs
    image_defaults(im, period_ns)
    return im


cdef Io* new_io(Image* im) except NULL:
    """The device state beside the image im, pre-faulted like it."""
    cdef size_t size = (sizeof(Io) + 4095) // 4096 * 4096
    cdef Io* io = <Io*>aligned_alloc(4096, size)
    if io == NULL:
        raise MemoryError(f"cannot allocate the device state ({size} bytes)")
    memset(io, 0, size)
    io.can.fd = -1
    io.iot.ex = &im.ex
    io.gpio.epfd = -1
    return io


def i2c_decode(int32_t decode, const uint8_t[::1] data):
    """The raw number in a register's bytes (MSB first), decoded as the I/O thread decodes it;
    the reader of sensors served on the Python side uses it too."""
    if not DECODE_BE16_SIGNED <= decode <= DECODE_BE24_UNSIGNED_SHIFT4:
        raise ValueError(f"no decode {decode}")
    if data.shape[0] != (2 if decode == DECODE_BE16_SIGNED else 3):
        raise ValueError(f"{data.shape[0]} bytes for decode {decode}")
    return i2c_raw(decode, &data[0])


SPI_KINDS = {"4-20mA": SPI_4_20MA, "0-10V": SPI_0_10V, "cp": SPI_CP}
SPI_RANGES = {"+-10.24V": ADS_PM_10V, "+-5.12V": ADS_PM_5V, "+-2.56V": ADS_PM_2V5,
              "0-10.24V": ADS_P_10V, "0-5.12V": ADS_P_5V}      # ADS8688 range register codes
SPI_RESULTS = ("ok", "ERR_SPI_WIRE_BREAK", "ERR_SPI_OVER_RANGE", "ERR_CP_BETWEEN_STATES")
SPI_FRAME_BYTES = SPI_FRAME
CP_STATES = "ABCDEF"


cdef SpiChannel _spi_channel(int kind, int rng, int channel, int samples, double ratio, double at_lo,
                             double at_hi, double gain, double offset) except *:
    cdef SpiChannel c
    memset(&c, 0, sizeof(c))
    if kind not in SPI_KINDS.values() or rng not in SPI_RANGES.values() or not 0 <= channel <= 7 \
            or not 1 <= samples <= SPI_MAX_SAMPLES or not ratio > 0 or not gain > 0:
        raise ValueError("bad SPI channel")
    c.kind, c.range, c.channel, c.samples, c.ratio = kind, rng, channel, samples, ratio
    c.at_lo, c.at_hi, c.gain, c.offset = at_lo, at_hi, gain, offset
    c.input = c.input_diode = -1
    return c


def spi_frames(int channel, int samples):
    """The frames one read of an ADS8688 channel sends (samples conversions), as the I/O thread
    sends them; the far side of a sim ADC answers them."""
    cdef SpiChannel c = _spi_channel(SPI_0_10V, ADS_P_10V, channel, samples, 1.0, 0.0, 1.0, 1.0, 0.0)
    out = bytearray((samples + 1) * SPI_FRAME)
    cdef uint8_t* b = out
    spi_tx(&c, b)
    return bytes(out)


def spi_value(int kind, int rng, int channel, int samples, double ratio, double at_lo, double at_hi,
              double gain, double offset, const uint8_t[::1] rx):
    """One read's answer converted as the I/O thread converts it: (SPI_RESULTS index, value, the
    CP's low level, whether the CP carries a PWM, the reading in mA or V before calibration)."""
    cdef SpiChannel c = _spi_channel(kind, rng, channel, samples, ratio, at_lo, at_hi, gain, offset)
    cdef double value = NAN, low = NAN
    cdef bint pwm = False
    if rx.shape[0] != (samples + 1) * SPI_FRAME:
        raise ValueError(f"{rx.shape[0]} bytes for {samples} conversions")
    code = spi_convert(&c, &rx[0], &value, &low, &pwm)
    return code, value, low, bool(pwm), c.last_reading


def spi_convert_cost_ns(kind, int samples, int64_t n):
    """Benchmarks: the mean ns of one native conversion of a read of `samples` conversions (the
    I/O thread's spi_convert, without the transfer)."""
    cdef SpiChannel c = _spi_channel(SPI_KINDS[kind], ADS_PM_10V if kind == "cp" else ADS_P_10V, 0, samples,
                                     2.0 if kind == "cp" else 250.0, -40.0, 160.0, 1.0, 0.0)
    cdef uint8_t rx[(SPI_MAX_SAMPLES + 1) * SPI_FRAME]
    cdef double value = 0.0, low = 0.0
    cdef bint pwm
    cdef int64_t k, t0
    for k in range((samples + 1) * SPI_FRAME):
        rx[k] = <uint8_t>(0x60 + k * 7)
    with nogil:
        t0 = mono_ns()
        for k in range(n):
            rx[SPI_FRAME + 3] = <uint8_t>k           # a different answer each time
            spi_convert(&c, rx, &value, &low, &pwm)     # stores its reading: never optimised away
        t0 = mono_ns() - t0
    return t0 / n


def cp_level_state(double volts):
    """The control pilot's state (A-F) at a high level of volts, or None between states."""
    cdef int32_t s = cp_state(volts)
    return None if s == CP_BETWEEN else CP_STATES[s]


def cp_diode(double low_v):
    """Whether a PWM's low level shows the EV's diode (reaches -12 V)."""
    return bool(cp_diode_seen(low_v))


cdef class Core:
    """One process image and the loop that runs over it.

    Build the site with add_node/add_port/add_source, then either step it in
    virtual time (step, run_steps) or start the real-time loop (start, stop).
    """
    cdef Image* im
    cdef Io* io                          # the devices: reached by the read and write stages, not the update
    cdef Runner runner
    cdef pthread_t thread
    cdef pthread_t io_thread
    cdef bint io_running
    cdef bint io_scheduled               # virtual time: the I/O jobs' first runs are set
    cdef bint gpio_job                   # the I/O thread has the job of the sleeping GPIO chips
    cdef readonly bint running
    cdef readonly bint frozen
    cdef readonly bint virtual
    cdef readonly uint64_t pushed        # commands pushed so far (the loop's commands_applied follows)
    cdef pthread_mutex_t reader_lock     # taken only without the GIL (read_snapshot)

    def __cinit__(self, int64_t period_ns, bint virtual=False):
        if not 10_000 <= period_ns <= 10_000_000_000:
            raise ValueError(f"period {period_ns} ns is outside 10 us .. 10 s")
        self.im = new_image(period_ns)
        self.im.outbox.efd = -1              # none yet: __dealloc__ closes only a real one
        self.io = new_io(self.im)
        self.im.outbox.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.im.outbox.efd < 0:
            raise OSError(errno, f"cannot create the output mailbox's eventfd: {os.strerror(errno)}")
        pthread_mutex_init(&self.reader_lock, NULL)
        self.runner.im = self.im
        self.runner.io = self.io
        self.virtual = virtual

    def __dealloc__(self):
        if self.running:
            self._join(True)
        if self.im != NULL:
            if self.im.outbox.efd >= 0:
                close(self.im.outbox.efd)
            free(self.im)
            self.im = NULL
        if self.io != NULL and self.io.gpio.epfd >= 0:
            close(self.io.gpio.epfd)
        free(self.io)
        self.io = NULL
        pthread_mutex_destroy(&self.reader_lock)

    # ------------------------------------------------------------ building

    cdef void _check_open(self) except *:
        if self.frozen:
            raise RuntimeError("the site is fixed once the controller has stepped or started")

    def configure(self, **options):
        """Control options (names and units as the fields of v2g_rt.site.Control; CONTROL_OPTIONS
        lists those the core takes). An unknown name is a TypeError."""
        self._check_open()
        set_options(&self.im.opt, options)

    def configure_frequency(self, mode, double nominal_hz=50.0, double deadband_under_hz=0.036,
                            double deadband_over_hz=0.036, double droop_under=0.05, double droop_over=0.05,
                            double rated_w=0.0, double response_time_s=0.0, curve=()):
        """Frequency response: 'off', 'droop' (IEEE 1547 parameters) or 'curve' [(Hz, W), ...]."""
        self._check_open()
        o = &self.im.opt
        o.freq_mode = FREQUENCY_MODES[mode]
        o.freq_nominal_hz = nominal_hz
        o.freq_db_under_hz = deadband_under_hz
        o.freq_db_over_hz = deadband_over_hz
        o.freq_droop_under = droop_under
        o.freq_droop_over = droop_over
        o.freq_rated_w = rated_w
        o.freq_tau_s = response_time_s / 2.302585092994046   # 90 % of a step after response_time_s
        if len(curve) > MAX_CURVE or (mode == "curve" and len(curve) < 2):
            raise ValueError(f"a frequency-watt curve needs 2..{MAX_CURVE} points")
        o.curve_n = len(curve)
        for k, (hz, w) in enumerate(curve):
            o.curve_hz[k] = hz
            o.curve_w[k] = w

    def add_node(self, kind, int32_t parent, double import_limit_w, double export_limit_w,
                 double base_load_min_w=0.0, double base_load_max_w=0.0, double phase_limit_a=float("inf"),
                 double voltage_v=230.0):
        self._check_open()
        cdef int32_t i = self.im.n_nodes
        cdef int k
        if i >= MAX_NODES:
            raise ValueError(f"more than {MAX_NODES} nodes")
        if (i == 0) != (parent == -1) or parent >= i:
            raise ValueError("node 0 is the root; every other node needs an earlier parent")
        cdef Node* n = &self.im.node[i]
        n.parent = parent
        n.depth = 0 if parent < 0 else self.im.node[parent].depth + 1
        if n.depth >= MAX_DEPTH:
            raise ValueError(f"hierarchy deeper than {MAX_DEPTH} levels")
        n.kind = NODE_KINDS[kind]
        n.meter = -1
        n.import_limit_w = import_limit_w
        n.export_limit_w = export_limit_w
        n.base_load_min_w = base_load_min_w
        n.base_load_max_w = base_load_max_w
        n.phase_limit_a = phase_limit_a
        if not voltage_v > 0.0:
            raise ValueError(f"node voltage {voltage_v} V: expected > 0")
        n.voltage_v = voltage_v
        for k in range(3):
            n.phase_meter[k] = -1
            n.non_ev_phase_a[k] = NAN
        n.heatsink = -1
        n.derate_start_c = 70.0
        n.trip_c = 90.0
        n.thermal.ambient = -1
        n.thermal.top_oil = -1
        n.derate = 1.0
        n.temperature_c = NAN
        self.im.n_nodes += 1
        return i

    def set_heatsink_derate(self, int32_t node, double start_c, double trip_c):
        """EVSE heat sink: linear derate from start_c to zero at trip_c (needs a heatsink_c source)."""
        self._check_open()
        if not start_c < trip_c:
            raise ValueError("the derate must start below the trip temperature")
        self.im.node[node].derate_start_c = start_c
        self.im.node[node].trip_c = trip_c

    def set_transformer_thermal(self, int32_t node, *, double rated_w, double top_oil_rise_k,
                                double hot_spot_gradient_k, double loss_ratio, double oil_exponent,
                                double winding_exponent, double tau_oil_s, double tau_winding_s,
                                double derate_start_c, double limit_c):
        """Transformer hot-spot model; the parameters and their defaults are v2g_rt.site.Thermal's."""
        self._check_open()
        if rated_w <= 0 or tau_oil_s <= 0 or tau_winding_s <= 0 or not derate_start_c < limit_c:
            raise ValueError("thermal model needs rated_w > 0, time constants > 0 and derate start < limit")
        t = &self.im.node[node].thermal
        t.enabled = 1
        t.rated_w = rated_w
        t.top_oil_rise_k = top_oil_rise_k
        t.hot_spot_gradient_k = hot_spot_gradient_k
        t.loss_ratio = loss_ratio
        t.oil_exponent = oil_exponent
        t.winding_exponent = winding_exponent
        t.tau_oil_s = tau_oil_s
        t.tau_winding_s = tau_winding_s
        t.derate_start_c = derate_start_c
        t.limit_c = limit_c

    def add_port(self, int32_t evse, double rating_charge_w, double rating_discharge_w,
                 uint32_t phase_mask=7, double voltage_v=230.0, double pilot_step_pct=0.0):
        self._check_open()
        cdef int32_t i = self.im.n_ports
        cdef int32_t a, k
        if i >= MAX_PORTS:
            raise ValueError(f"more than {MAX_PORTS} ports")
        if not 0 <= evse < self.im.n_nodes:
            raise ValueError(f"port's node {evse} does not exist")
        cdef Port* p = &self.im.port[i]
        p.evse = evse
        p.rating_charge_w = rating_charge_w
        p.rating_discharge_w = rating_discharge_w
        if not 0 < phase_mask < 8 or voltage_v <= 0:
            raise ValueError("a port uses phases L1..L3 (mask 1..7) at a voltage > 0")
        p.phase_mask = phase_mask
        p.watts_per_amp = voltage_v * ((phase_mask & 1) + (phase_mask >> 1 & 1) + (phase_mask >> 2 & 1))
        if not 0.0 <= pilot_step_pct <= 10.0:
            raise ValueError("a pilot's duty step is 0 (no pilot) .. 10 %")
        p.pilot_step_pct = pilot_step_pct
        p.pilot_duty_pct = 100.0             # a steady +12 V until a PWM pilot's setpoint offers a current
        p.binding_node = -1
        p.plan_w = NAN
        for k in range(N_PORT_SOURCES):
            p.src[k] = -1
        a = evse
        p.npath = 0
        while a >= 0:
            p.path[p.npath] = a
            p.npath += 1
            a = self.im.node[a].parent
        self.im.order[i] = i
        self.im.n_ports += 1
        return i

    def add_source(self, kind, int32_t target, double max_age_s):
        """Register a measurement source of a kind of SOURCES; returns its index."""
        self._check_open()
        cdef double lo = SOURCE_RANGES[kind][0]
        cdef double hi = SOURCE_RANGES[kind][1]
        if not max_age_s >= 0:
            raise ValueError(f"max age {max_age_s} s is not valid")
        cdef int32_t i = self.im.n_inputs
        cdef int32_t k = SOURCE_KINDS[kind]
        if i >= MAX_SOURCES:
            raise ValueError(f"more than {MAX_SOURCES} measurement sources")
        if k < N_PORT_SOURCES:
            if not 0 <= target < self.im.n_ports:
                raise ValueError(f"port {target} does not exist")
            self.im.port[target].src[k] = i
        elif SRC_NODE_POWER_W <= k <= SRC_NODE_POWER_L3_W:
            if not 0 <= target < self.im.n_nodes:
                raise ValueError(f"node {target} does not exist")
            if k == SRC_NODE_POWER_W:
                self.im.node[target].meter = i
            elif k == SRC_NODE_HEATSINK_C:
                self.im.node[target].heatsink = i
            elif k == SRC_NODE_AMBIENT_C:
                self.im.node[target].thermal.ambient = i
            elif k >= SRC_NODE_POWER_L1_W:
                self.im.node[target].phase_meter[k - SRC_NODE_POWER_L1_W] = i
            else:
                self.im.node[target].thermal.top_oil = i
        elif k == SRC_SITE_FREQUENCY_HZ:
            self.im.freq_input = i
        elif k == SRC_UPSTREAM_HEARTBEAT:
            if self.im.n_upstreams >= MAX_UPSTREAMS:
                raise ValueError(f"more than {MAX_UPSTREAMS} upstreams")
            self.im.upstream[self.im.n_upstreams].input = i
            self.im.upstream[self.im.n_upstreams].lost = 1
            self.im.n_upstreams += 1
        self.im.input[i].fresh_until_ns = INT64_MIN
        g = &self.im.ex.gate[i]
        g.lo, g.hi, g.max_age_ns, g.writer = lo, hi, v2g_s_to_ns(max_age_s), WRITER_PYTHON
        self.im.n_inputs += 1
        return i

    @property
    def period_ns(self):
        return self.im.opt.period_ns

    # ------------------------------------------------------------ virtual time

    cdef void _before_step(self, int64_t now_ns) except *:
        if self.running:
            raise RuntimeError("the real-time loop is running; step() is for virtual time")
        if self.im.n_nodes == 0:
            raise RuntimeError("the site has no nodes")
        if now_ns <= self.im.now_ns:
            raise ValueError(f"time must advance: {now_ns} ns is not after {self.im.now_ns} ns")
        self.frozen = True

    def step(self, int64_t now_ns):
        """Run one cycle at virtual time now_ns (must increase)."""
        self._before_step(now_ns)
        with nogil:
            cycle_run(self.im, self.io, now_ns)

    def run_steps(self, int64_t n, int64_t dt_ns):
        """Run n cycles, advancing virtual time by dt_ns before each."""
        if n < 0 or dt_ns <= 0:
            raise ValueError("need n >= 0 steps and dt_ns > 0")
        if n == 0:
            return
        self._before_step(self.im.now_ns + dt_ns)
        cdef int64_t k
        cdef int64_t t = self.im.now_ns
        with nogil:
            for k in range(n):
                t += dt_ns
                cycle_run(self.im, self.io, t)

    def now_ns(self):
        """The controller's clock: virtual time (the last step) or CLOCK_MONOTONIC."""
        return self.im.now_ns if self.virtual else mono_ns()

    # ------------------------------------------------------------ real time

    def start(self, int priority=0, int cpu=-1, bint lock_memory=False):
        """Start the loop thread. Returns what was applied and warnings for what was not."""
        if self.running:
            raise RuntimeError("already running")
        if self.virtual:
            raise RuntimeError("a virtual-time controller cannot run in real time; create it with clock='monotonic'")
        if self.im.n_nodes == 0:
            raise RuntimeError("the site has no nodes")
        warnings = []
        locked = False
        if lock_memory:
            if mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0:
                locked = True
            else:
                warnings.append(("mlockall", errno))
        cdef pthread_attr_t attr
        cdef sched_param sp
        cdef cpu_set_t cpus
        cdef int rc
        cdef bint fifo = priority > 0
        cdef bint pin = cpu >= 0
        while True:
            pthread_attr_init(&attr)
            pthread_attr_setstacksize(&attr, LOOP_STACK_BYTES)
            if fifo:
                pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED)
                pthread_attr_setschedpolicy(&attr, SCHED_FIFO)
                sp.sched_priority = priority
                pthread_attr_setschedparam(&attr, &sp)
            if pin:
                CPU_ZERO(&cpus)
                CPU_SET(cpu, &cpus)
                pthread_attr_setaffinity_np(&attr, sizeof(cpu_set_t), &cpus)
            self.runner.stop = 0
            self.im.stopping = 0             # a restarted loop (bench windows) starts live
            self.im.stop_hard = 0
            self.runner.tid = 0
            self.frozen = True
            rc = pthread_create(&self.thread, &attr, loop_main, &self.runner)
            pthread_attr_destroy(&attr)
            if rc == 0:
                break
            if rc == EPERM and fifo:
                warnings.append(("sched_fifo", rc))
                fifo = False
            elif rc == EINVAL and pin:
                warnings.append(("affinity", rc))
                pin = False
            else:
                raise OSError(rc, f"cannot create the loop thread: {os.strerror(rc)}")
        self.running = True
        io = self._start_io(priority - 10 if fifo and priority > 10 else 0, cpu if pin else -1)
        if io:
            warnings.append(("io_thread", io))
        return {"policy": "SCHED_FIFO" if fifo else "SCHED_OTHER",
                "priority": priority if fifo else 0, "cpu": cpu if pin else None,
                "memory_locked": locked, "failed": warnings}

    def loop_tid(self):
        """The loop thread's kernel tid (0 until it has started)."""
        return v2g_load_i64(&self.runner.tid)

    cdef int _start_io(self, int priority, int cpu) noexcept:
        """The I/O thread (I2C, SPI, PWM, sleeping GPIO chips), one step below the loop; returns 0 or
        the pthread_create error."""
        cdef pthread_attr_t attr
        cdef sched_param sp
        cdef int rc
        self._add_gpio_job()
        if self.io.iot.n == 0:
            return 0
        io_schedule(&self.io.iot, mono_ns())
        self.io.iot.stop = 0
        pthread_attr_init(&attr)
        pthread_attr_setstacksize(&attr, LOOP_STACK_BYTES)
        if priority > 0:
            pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED)
            pthread_attr_setschedpolicy(&attr, SCHED_FIFO)
            sp.sched_priority = priority
            pthread_attr_setschedparam(&attr, &sp)
        rc = pthread_create(&self.io_thread, &attr, io_thread_main, self.io)
        pthread_attr_destroy(&attr)
        self.io_running = rc == 0
        return rc

    cdef void _add_gpio_job(self) noexcept:
        """Drive lines on chips that sleep are set by the I/O thread: one job for them all."""
        if self.io.gpio.n_thread_out and not self.gpio_job:
            io_add_job(&self.io.iot, JOB_GPIO, 0, GPIO_JOB_PERIOD_NS)
            self.gpio_job = True

    cdef void _join(self, bint hard) noexcept:
        v2g_store_release(&self.runner.stop, STOP_HARD if hard else STOP_SOFT)
        with nogil:
            pthread_join(self.thread, NULL)
            # Only now: its last pass writes the safe outputs the stopped loop left (pilots, GPIO chips).
            v2g_store_release(&self.io.iot.stop, 1)
            if self.io_running:
                pthread_join(self.io_thread, NULL)
        self.io_running = False
        self.running = False

    def begin_stop(self, bint hard=False):
        """Virtual time: the next steps are a stop's (0 W, contactors opening as current falls);
        stop() finishes it."""
        if self.running:
            raise RuntimeError("stop() stops the real-time loop")
        stop_begin(self.im, hard)

    @property
    def stop_cycles(self):
        """Cycles the stop has run so far (None: no stop began)."""
        return self.im.cycle - self.im.stop_cycle if self.im.stopping else None

    def stop(self, bint hard=False):
        """Stop and publish safe outputs: 0 W at once, each contactor opened once its current
        has fallen or after stop_timeout_s (hard: at once), then outputs safe to hold for ever.
        The real-time loop does it in its own cycles; in virtual time the remaining cycles of
        the stop run here, one period apart."""
        cdef int64_t t
        cdef int64_t k, n
        if self.running:
            self._join(hard)         # the loop publishes them itself as it exits
        elif self.frozen:
            n = self.im.opt.stop_timeout_ns // self.im.opt.period_ns + 2
            with nogil:
                stop_begin(self.im, hard)
                t = self.im.now_ns
                k = 0
                while not stop_done(self.im) and k < n:
                    t += self.im.opt.period_ns
                    cycle_run(self.im, self.io, t)
                    k += 1
                publish_stopped(self.im, self.io)
                io_run_kind(self.io, JOB_PWM, self.im.now_ns)
                io_run_kind(self.io, JOB_GPIO, self.im.now_ns)

    cdef void _claim(self, int32_t input, int32_t writer) except *:
        if not 0 <= input < self.im.n_inputs:
            raise ValueError(f"source {input} does not exist")
        cdef Gate* g = &self.im.ex.gate[input]
        if g.writer != WRITER_PYTHON and g.writer != writer:
            raise ValueError(f"source {input} already has a device writer; one writer per source")
        g.writer = writer

    # ------------------------------------------------------------ devices

    def attach_can(self, int fd, int budget, signals):
        """The loop drains fd (struct can_frame) each cycle and decodes signals:
        [(pgn, sa, shift, length, big_endian, signed, min_dlc, raw_max_valid, scale, offset,
          minimum, maximum, input), ...]."""
        self._check_open()
        if len(signals) > MAX_CAN_SIGNALS:
            raise ValueError(f"{len(signals)} CAN signals; at most {MAX_CAN_SIGNALS}")
        cdef CanReader* r = &self.io.can
        cdef CanSignal* g
        for k, (pgn, sa, shift, length, big, signed, min_dlc, raw_max, scale, offset, lo, hi, inp) in enumerate(signals):
            if not 0 <= inp < self.im.n_inputs or not 1 <= length <= 64 or not 0 <= shift <= 64 - length:
                raise ValueError(f"bad CAN signal #{k}")
            self._claim(inp, WRITER_CAN)
            g = &r.sig[k]
            g.pgn, g.sa, g.shift, g.length, g.big_endian, g.is_signed = pgn, sa, shift, length, big, signed
            g.min_dlc, g.raw_max_valid, g.scale, g.offset = min_dlc, raw_max, scale, offset
            g.minimum, g.maximum, g.input = lo, hi, inp
        r.n_signals = len(signals)
        can_attach(r, fd, budget)

    def attach_can_writer(self, int address, uint64_t name, double timeout_s, double interval_s, ports):
        """The write stage sends each port's output as a J1939 setpoint frame through the CAN
        socket, from `address` once claimed with `name`: ports = [(port, destination, number on
        its EVSE), ...]; timeout_s goes in every frame (the module's own dead-man); a port's
        frames at most every interval_s, but 0 W and an opening contactor go at once."""
        self._check_open()
        cdef CanWriter* w = &self.io.canw
        if self.io.can.fd < 0:
            raise ValueError("attach_can first: setpoint frames go out through its socket")
        if not 0 <= address <= 253:
            raise ValueError(f"J1939 address {address}: expected 0..253")
        if not 0.1 <= timeout_s <= 25.0:
            raise ValueError(f"module timeout {timeout_s} s: a frame carries 0.1 to 25 s")
        if len(ports) > MAX_PORTS:
            raise ValueError(f"{len(ports)} CAN ports; at most {MAX_PORTS}")
        for k, (port, da, number) in enumerate(ports):
            if not 0 <= port < self.im.n_ports or not 0 <= da <= 253 or da == address or not 0 <= number <= 255:
                raise ValueError(f"bad CAN port #{k}: port {port}, destination {da}, number {number}")
            w.port[k], w.da[k], w.port_no[k] = port, da, number
            self.im.outbox.link[port] = OUTPUT_CAN
        w.n_ports = len(ports)
        w.address = address
        w.name = name
        w.timeout_ds = <int32_t>(timeout_s * 10.0 + 0.5)
        w.interval_ns = v2g_s_to_ns(interval_s)
        can_writer_attach(w)

    def can_writer_stats(self):
        cdef CanWriter* w = &self.io.canw
        return {"address": w.address, "claim": ("none", "waiting", "held", "lost")[w.claim_state],
                "frames_sent": v2g_load_relaxed(&w.frames_sent),
                "frames_refused": v2g_load_relaxed(&w.frames_refused),
                "claims_sent": v2g_load_relaxed(&w.claims_sent),
                "claims_contested": v2g_load_relaxed(&w.claims_contested),
                "write_errors": v2g_load_relaxed(&w.write_errors), "last_errno": v2g_load_i64(&w.last_errno)}

    def can_stats(self):
        cdef CanReader* r = &self.io.can
        return {"frames": v2g_load_relaxed(&r.frames), "decoded": v2g_load_relaxed(&r.decoded),
                "unknown_pgn": v2g_load_relaxed(&r.unknown_pgn), "error_frames": v2g_load_relaxed(&r.error_frames),
                "bus_off": v2g_load_relaxed(&r.bus_off), "short_frames": v2g_load_relaxed(&r.short_frames),
                "not_available": v2g_load_relaxed(&r.not_available), "out_of_range": v2g_load_relaxed(&r.out_of_range),
                "non_j1939": v2g_load_relaxed(&r.non_j1939), "read_errors": v2g_load_relaxed(&r.read_errors),
                "budget_full": v2g_load_relaxed(&r.budget_full), "bad_dlc": v2g_load_relaxed(&r.bad_dlc),
                "kernel_dropped": v2g_load_relaxed(&r.kernel_dropped),
                "gate_rejected": v2g_load_relaxed(&r.gate_rejected), "last_errno": v2g_load_i64(&r.last_errno)}

    def add_i2c_sensor(self, int fd, int addr, int mode, int reg, int nbytes, int decode, int input,
                       double scale, double offset, double period_s, invalid_raw=None):
        """A register read by the I/O thread every period_s and published to source `input`;
        a raw reading equal to invalid_raw (the register's "no value yet") is counted, not published."""
        self._check_open()
        cdef I2cIo* io = &self.io.i2c
        if io.n >= MAX_I2C:
            raise ValueError(f"more than {MAX_I2C} I2C sensors")
        if not 0 <= input < self.im.n_inputs or not 1 <= nbytes <= 32 or period_s <= 0 \
                or mode not in (I2C_MODE_RDWR, I2C_MODE_SMBUS):
            raise ValueError("bad I2C sensor")
        self._claim(input, WRITER_I2C)
        cdef I2cSensor* s = &io.s[io.n]
        s.fd, s.addr, s.mode, s.reg, s.nbytes, s.decode, s.input = fd, addr, mode, reg, nbytes, decode, input
        s.scale, s.offset = scale, offset
        s.period_ns = v2g_s_to_ns(period_s)
        s.has_invalid_raw = invalid_raw is not None
        s.invalid_raw = invalid_raw if invalid_raw is not None else 0
        io_add_job(&self.io.iot, JOB_I2C, io.n, s.period_ns)
        io.n += 1
        return io.n - 1

    def add_spi_channel(self, int fd, kind, rng, int channel, int input, int input_diode, *,
                        int samples, int speed_hz, int delay_us, double ratio, double at_lo, double at_hi,
                        double gain, double offset, double period_s):
        """An ADS8688 channel (kind in SPI_KINDS, rng in SPI_RANGES) read by the I/O thread every
        period_s (samples conversions delay_us apart) and published to source `input` (a CP's
        diode to input_diode, -1: none)."""
        self._check_open()
        cdef SpiIo* io = &self.io.spi
        if io.n >= MAX_SPI:
            raise ValueError(f"more than {MAX_SPI} SPI channels")
        cdef SpiChannel c = _spi_channel(SPI_KINDS[kind], SPI_RANGES[rng], channel, samples, ratio, at_lo,
                                         at_hi, gain, offset)
        if not 0 <= input < self.im.n_inputs or not -1 <= input_diode < self.im.n_inputs or period_s <= 0 \
                or not 0 <= delay_us <= 65535 or speed_hz <= 0:
            raise ValueError("bad SPI channel")
        self._claim(input, WRITER_SPI)
        if input_diode >= 0:
            self._claim(input_diode, WRITER_SPI)
        c.fd, c.input, c.input_diode, c.speed_hz, c.delay_us = fd, input, input_diode, speed_hz, delay_us
        c.period_ns = v2g_s_to_ns(period_s)
        io.c[io.n] = c
        io_add_job(&self.io.iot, JOB_SPI, io.n, c.period_ns)
        io.n += 1
        return io.n - 1

    def add_pwm_channel(self, int port, chip_dir, int channel, int64_t period_ns, double interval_s):
        """Port's control pilot on PWM channel `channel` of the sysfs pwmchip at chip_dir (its
        directory): the write stage hands each cycle's duty to the I/O thread, which writes it
        on change (at most every interval_s) and reads it back."""
        self._check_open()
        cdef PwmIo* io = &self.io.pwm
        cdef bytes chip = os.fsencode(os.path.join(chip_dir, ""))
        cdef bytes path = os.fsencode(os.path.join(chip_dir, f"pwm{channel}", ""))
        if io.n >= MAX_PWM:
            raise ValueError(f"more than {MAX_PWM} PWM channels")
        if not 0 <= port < self.im.n_ports or not 0 <= channel < 1024 or period_ns <= 0 or interval_s <= 0:
            raise ValueError("bad PWM channel")
        if len(path) + 16 >= PWM_PATH:
            raise ValueError(f"PWM path {chip_dir!r} longer than {PWM_PATH - 16} bytes")
        for k in range(io.n):
            if io.ch[k].port == port:
                raise ValueError(f"port {port} already has a PWM pilot")
        cdef PwmChannel* c = &io.ch[io.n]
        memset(c, 0, sizeof(PwmChannel))
        memcpy(c.chip, <char*>chip, len(chip) + 1)
        memcpy(c.dir, <char*>path, len(path) + 1)
        c.port, c.channel, c.period_ns = port, channel, period_ns
        c.tolerance_ns = period_ns // 1000        # 0.1 %: a chip rounds to its clock, no further
        c.want_ns = period_ns                     # 100 %: +12 V, no current offered
        c.written_ns = -1
        c.readback_ns = -1
        self.im.outbox.link[port] = OUTPUT_PWM
        io_add_job(&self.io.iot, JOB_PWM, io.n, v2g_s_to_ns(interval_s))
        io.n += 1
        return io.n - 1
    def claim(self, int32_t input, int32_t writer):
        """A device served on the Python side (a sim backend) takes source `input`: from now on
        the gate takes it from `writer` alone (write_measurement(..., writer))."""
        self._check_open()
        if writer not in (WRITER_CAN, WRITER_I2C, WRITER_SPI, WRITER_PLC):
            raise ValueError(f"{writer} is not a device writer")
        self._claim(input, writer)

    def i2c_stats(self):
        cdef I2cSensor* s
        out = []
        for k in range(self.io.i2c.n):
            s = &self.io.i2c.s[k]
            out.append({"reads": v2g_load_relaxed(&s.reads), "errors": v2g_load_relaxed(&s.errors),
                        "not_ready": v2g_load_relaxed(&s.not_ready),
                        "gate_rejected": v2g_load_relaxed(&s.gate_rejected),
                        "last_errno": v2g_load_i64(&s.last_errno), "period_s": s.period_ns / 1e9,
                        "mode": ("i2c_rdwr", "smbus")[s.mode], "address": s.addr})
        return out, v2g_load_i64(&self.io.iot.tid)

    def spi_stats(self):
        cdef SpiChannel* c
        out = []
        for k in range(self.io.spi.n):
            c = &self.io.spi.c[k]
            out.append({"reads": v2g_load_relaxed(&c.reads), "errors": v2g_load_relaxed(&c.errors),
                        "wire_break": v2g_load_relaxed(&c.wire_break), "over_range": v2g_load_relaxed(&c.over_range),
                        "between_states": v2g_load_relaxed(&c.between_states),
                        "gate_rejected": v2g_load_relaxed(&c.gate_rejected), "last_errno": v2g_load_i64(&c.last_errno),
                        "reading": v2g_load_f64(&c.last_reading), "period_s": c.period_ns / 1e9,
                        "channel": c.channel, "mode": "spi_ioc_message"})
        return out

    def pwm_stats(self):
        cdef PwmChannel* c
        out = []
        for k in range(self.io.pwm.n):
            c = &self.io.pwm.ch[k]
            rb = v2g_load_i64(&c.readback_ns)
            out.append({"port": c.port, "path": os.fsdecode(c.dir), "period_ns": c.period_ns,
                        "duty_ns": v2g_load_i64(&c.want_ns), "readback_ns": rb,
                        "readback_pct": rb * 100.0 / c.period_ns if rb >= 0 else None,
                        "writes": v2g_load_relaxed(&c.writes), "write_errors": v2g_load_relaxed(&c.write_errors),
                        "exports": v2g_load_relaxed(&c.exports), "readbacks": v2g_load_relaxed(&c.readbacks),
                        "readback_errors": v2g_load_relaxed(&c.readback_errors),
                        "mismatches": v2g_load_relaxed(&c.mismatches), "last_errno": v2g_load_i64(&c.last_errno)})
        return out

    def io_schedule_stats(self):
        """The I/O thread's schedule: per job its kind, period, runs, skipped periods, cost and
        achieved period (mean, max); per pass its count and time."""
        cdef IoThread* t = &self.io.iot
        cdef IoJob* j
        jobs = []
        for k in range(t.n):
            j = &t.job[k]
            runs = v2g_load_relaxed(&j.runs)
            jobs.append({"kind": ("i2c", "spi", "pwm", "gpio")[j.kind], "index": j.index, "period_s": j.period_ns / 1e9,
                         "runs": runs, "skipped": v2g_load_relaxed(&j.skipped),
                         "cost_mean_s": v2g_load_relaxed(&j.cost_sum_ns) / runs / 1e9 if runs else None,
                         "cost_max_s": v2g_load_i64(&j.cost_max_ns) / 1e9,
                         "period_mean_s": v2g_load_relaxed(&j.gap_sum_ns) / (runs - 1) / 1e9 if runs > 1 else None,
                         "period_max_s": v2g_load_i64(&j.gap_max_ns) / 1e9})
        passes = v2g_load_relaxed(&t.passes)
        return {"jobs": jobs, "passes": passes, "pass_max_s": v2g_load_i64(&t.pass_max_ns) / 1e9,
                "pass_mean_s": v2g_load_relaxed(&t.pass_sum_ns) / passes / 1e9 if passes else None,
                "tid": v2g_load_i64(&t.tid)}

    def attach_gpio_input(self, int fd, kind, int input, int debounce_cycles, int initial):
        """The read stage drains fd's edge events (struct gpio_v2_line_event) each cycle and
        publishes the debounced level (initial: the level read at start-up, -1 unknown) into
        source `input`, whose one writer it becomes."""
        self._check_open()
        cdef GpioIo* g = &self.io.gpio
        cdef GpioIn* l
        cdef epoll_event ev
        if g.n_in >= MAX_GPIO:
            raise ValueError(f"more than {MAX_GPIO} GPIO feedback lines")
        if not 0 <= input < self.im.n_inputs or debounce_cycles < 0 or initial not in (-1, 0, 1):
            raise ValueError("bad GPIO feedback line")
        if g.epfd < 0:
            g.epfd = epoll_create1(EPOLL_CLOEXEC)
            if g.epfd < 0:
                raise OSError(errno, os.strerror(errno))
        ev.events = EPOLLIN
        ev.data.u32 = g.n_in
        if epoll_ctl(g.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            raise OSError(errno, f"GPIO line fd {fd}: {os.strerror(errno)}")
        self._claim(input, WRITER_GPIO)
        l = &g.inp[g.n_in]
        memset(l, 0, sizeof(GpioIn))
        l.fd, l.kind, l.input, l.debounce_cycles = fd, GPIO_FD_KINDS[kind], input, debounce_cycles
        if initial >= 0:
            l.known, l.raw, l.stable = 1, initial, initial
        g.n_in += 1
        return g.n_in - 1

    def attach_gpio_output(self, int fd, kind, int port, drive, int initial):
        """The write stage (drive "loop") or the I/O thread ("io-thread") sets fd's line to the
        contactor command handed over for `port` whenever it changes; `initial` is the value the
        line was requested with (its safe one, open)."""
        self._check_open()
        cdef GpioIo* g = &self.io.gpio
        cdef GpioOut* o
        if g.n_out >= MAX_GPIO:
            raise ValueError(f"more than {MAX_GPIO} GPIO drive lines")
        if not 0 <= port < self.im.n_ports or initial not in (0, 1):
            raise ValueError("bad GPIO drive line")
        o = &g.out[g.n_out]
        memset(o, 0, sizeof(GpioOut))
        o.fd, o.kind, o.port, o.drive, o.driven = fd, GPIO_FD_KINDS[kind], port, GPIO_DRIVES[drive], initial
        o.want = initial
        if o.drive == GPIO_DRIVE_THREAD:
            g.n_thread_out += 1
        g.n_out += 1
        return g.n_out - 1

    def gpio_stats(self):
        cdef GpioIn* l
        cdef GpioOut* o
        inputs, outputs = [], []
        for k in range(self.io.gpio.n_in):
            l = &self.io.gpio.inp[k]
            inputs.append({"events": v2g_load_relaxed(&l.events), "bounces": v2g_load_relaxed(&l.bounces),
                           "lost": v2g_load_relaxed(&l.lost), "bad_events": v2g_load_relaxed(&l.bad_events),
                           "budget_full": v2g_load_relaxed(&l.budget_full),
                           "read_errors": v2g_load_relaxed(&l.read_errors),
                           "gate_rejected": v2g_load_relaxed(&l.gate_rejected),
                           "level": l.stable if l.known and not l.failed else None,
                           "last_errno": v2g_load_i64(&l.last_errno)})
        for k in range(self.io.gpio.n_out):
            o = &self.io.gpio.out[k]
            outputs.append({"sets": v2g_load_relaxed(&o.sets), "write_errors": v2g_load_relaxed(&o.write_errors),
                            "driven": o.driven, "last_errno": v2g_load_i64(&o.last_errno),
                            "drive": ("loop", "io-thread")[o.drive]})
        return {"inputs": inputs, "outputs": outputs, "poll_errors": v2g_load_relaxed(&self.io.gpio.poll_errors)}

    def attach_plc(self, int fd, int32_t port, int32_t input, bytes mac, modem, int32_t window,
                   double interval_s, double attenuation_limit_db, int frames_per_cycle=PLC_BATCH):
        """A port's PLC modem on the AF_PACKET socket fd (bound to its interface and 0x88E1,
        nonblocking): probed every interval_s from our address mac, loss over the last `window`
        probes published to source `input` (-1: none) as the PLC writer. modem: its 6-byte
        address, or None to probe the local management address and learn it from the answer."""
        self._check_open()
        cdef PlcIo* io = &self.io.plc
        cdef PlcModem* m
        if io.n >= MAX_PLC:
            raise ValueError(f"more than {MAX_PLC} PLC modems")
        if not 0 <= port < self.im.n_ports or not -1 <= input < self.im.n_inputs:
            raise ValueError(f"bad PLC port {port} or source {input}")
        if not 1 <= window <= PLC_WINDOW_MAX or not interval_s > 0 or len(mac) != 6 \
                or (modem is not None and len(modem) != 6):
            raise ValueError(f"bad PLC modem: window 1..{PLC_WINDOW_MAX}, interval > 0, 6-byte addresses")
        if input >= 0:
            self._claim(input, WRITER_PLC)
        if io.n == 0:
            plc_attach(io, frames_per_cycle)
        m = &io.m[io.n]
        memset(m, 0, sizeof(PlcModem))
        m.fd, m.port, m.input, m.window = fd, port, input, window
        m.interval_ns = v2g_s_to_ns(interval_s)
        m.attenuation_limit_db = attenuation_limit_db
        memcpy(m.mac, <const char*>mac, 6)
        if modem is not None:
            memcpy(m.modem, <const char*>modem, 6)
            m.modem_known = 1
        plc_modem_init(m)
        io.n += 1
        return io.n - 1

    def plc_stats(self):
        """Per modem (attach order): link, loss, attenuation and the counters."""
        cdef PlcModem* m
        out = []
        for k in range(self.io.plc.n):
            m = &self.io.plc.m[k]
            row = {"port": m.port, "link_up": bool(m.link_up), "loss": v2g_load_f64(&m.loss),
                   "window_filled": m.filled, "window": m.window,
                   "attenuation_db": v2g_load_f64(&m.attenuation_db), "attenuation_high": bool(m.attenuation_high),
                   "stations": m.stations, "tx_mbps": m.tx_mbps, "rx_mbps": m.rx_mbps,
                   "modem": bytes(m.modem[:6]).hex(":") if m.modem_known else None,
                   "last_errno": v2g_load_i64(&m.last_errno)}
            row.update({"probes_sent": v2g_load_relaxed(&m.probes_sent), "probes_refused": v2g_load_relaxed(&m.probes_refused), "answers": v2g_load_relaxed(&m.answers)})
            row.update({"lost": v2g_load_relaxed(&m.lost), "late": v2g_load_relaxed(&m.late), "link_changes": v2g_load_relaxed(&m.link_changes)})
            row.update({"atten_reports": v2g_load_relaxed(&m.atten_reports), "atten_over": v2g_load_relaxed(&m.atten_over), "atten_responses": v2g_load_relaxed(&m.atten_responses)})
            row.update({"frames": v2g_load_relaxed(&m.frames), "outgoing": v2g_load_relaxed(&m.outgoing), "wrong_mmv": v2g_load_relaxed(&m.wrong_mmv)})
            row.update({"wrong_type": v2g_load_relaxed(&m.wrong_type), "wrong_length": v2g_load_relaxed(&m.wrong_length), "unknown_mac": v2g_load_relaxed(&m.unknown_mac)})
            row.update({"truncated": v2g_load_relaxed(&m.truncated), "gate_rejected": v2g_load_relaxed(&m.gate_rejected), "budget_full": v2g_load_relaxed(&m.budget_full)})
            row.update({"read_errors": v2g_load_relaxed(&m.read_errors), "write_errors": v2g_load_relaxed(&m.write_errors)})
            out.append(row)
        return out

    def poll_io(self):
        """Virtual time: run the I/O jobs (I2C, SPI, PWM) due by now (the real-time I/O thread
        does this itself)."""
        if self.running:
            raise RuntimeError("the I/O thread serves the devices while the loop runs")
        cdef int64_t now = self.im.now_ns
        self._add_gpio_job()
        if self.io.iot.n and not self.io_scheduled:
            io_schedule(&self.io.iot, now)
            self.io_scheduled = True
        with nogil:
            io_pass(self.io, now, True)

    # ------------------------------------------------------------ exchange

    def push_command(self, int32_t kind, int32_t port, double value, int64_t expires_ns,
                     uint64_t id_hash, uint64_t latch_seq=0, *, int64_t starts_ns=0, bint now=True,
                     int slot=-1, uint32_t gen=0, uint64_t of_hash=0, bint reanchor=False):
        """Queue a validated command; False if the ring is full. Lock-free. A grid command
        opens its window when the loop takes it (now) or at starts_ns, waiting in its kind's
        queue at `slot` (generation `gen`, see schedule.pxi)."""
        cdef Command c
        if not -1 <= slot < MAX_SCHEDULED:
            raise ValueError(f"slot {slot} outside -1..{MAX_SCHEDULED - 1}")
        c.kind = kind
        c.port = port
        c.value = value
        c.starts_ns = starts_ns
        c.expires_ns = expires_ns
        c.id_hash = id_hash
        c.latch_seq = latch_seq
        c.of_hash = of_hash
        c.gen = gen
        c.slot = slot
        c.flags = (CMD_NOW if now else 0) | (CMD_REANCHOR if reanchor else 0)
        if not ring_push(&self.im.ex.ring, &c):
            return False
        self.pushed += 1                     # with the GIL: pushes are counted in ring order
        return True

    def read_schedule(self):
        """Copies of the latest published active command and queue of each grid kind (bytes of
        ActiveCommand rows, then ScheduledCommand rows, kind by kind) and how many commands the
        loop had taken by then (compare `pushed`)."""
        active = PyBytes_FromStringAndSize(NULL, sizeof(ActiveCommand) * N_GRID_COMMANDS)
        queued = PyBytes_FromStringAndSize(NULL, sizeof(ScheduledCommand) * N_GRID_COMMANDS * MAX_SCHEDULED)
        cdef char* da = PyBytes_AS_STRING(active)
        cdef char* dq = PyBytes_AS_STRING(queued)
        cdef Snapshot* s
        cdef uint64_t applied
        with nogil:
            pthread_mutex_lock(&self.reader_lock)
            s = snap_latest(&self.im.snap)
            memcpy(da, s.active, sizeof(s.active))
            memcpy(dq, s.sched, sizeof(s.sched))
            applied = s.site.commands_applied
            pthread_mutex_unlock(&self.reader_lock)
        return active, queued, applied

    def write_guidance(self, const double[::1] plan_w, int64_t expires_ns, uint64_t plan_id):
        """The planner's advice: a planned power per port (W, NaN: none), followed by the
        arbitration's order until expires_ns (controller clock). One writer at a time."""
        if plan_w.shape[0] != self.im.n_ports:
            raise ValueError(f"guidance for {plan_w.shape[0]} ports; the site has {self.im.n_ports}")
        cdef int32_t n = self.im.n_ports
        with nogil:
            guidance_write(&self.im.ex.guidance, &plan_w[0] if n > 0 else NULL, n, expires_ns, plan_id)

    cdef int64_t _now(self) noexcept nogil:
        return self.im.now_ns if self.virtual else mono_ns()

    def write_measurement(self, int32_t index, double value, int64_t t_ns, int32_t writer=WRITER_PYTHON):
        """Publish one value through the gate as writer (a device served on the Python side
        writes as its own kind, see claim); returns its GATE_CODES index (0: accepted)."""
        if not 0 <= index < self.im.n_inputs:
            raise IndexError(index)
        if writer not in (WRITER_PYTHON, WRITER_CAN, WRITER_I2C, WRITER_SPI, WRITER_PLC):
            raise ValueError(f"no writer {writer}")
        return gate_write(&self.im.ex, index, writer, value, t_ns, self._now())

    def write_measurements(self, const int32_t[::1] index, const double[::1] value, int64_t t_ns):
        """Publish many values stamped t_ns through the gate; returns counts per GATE_CODES."""
        cdef Py_ssize_t k, n = index.shape[0]
        cdef uint64_t counts[N_GATE]
        cdef int64_t now = self._now()
        if value.shape[0] != n:
            raise ValueError("index and value differ in length")
        for k in range(n):
            if not 0 <= index[k] < self.im.n_inputs:
                raise IndexError(index[k])
        memset(counts, 0, sizeof(counts))
        with nogil:
            for k in range(n):
                counts[gate_write(&self.im.ex, index[k], WRITER_PYTHON, value[k], t_ns, now)] += 1
        return tuple(counts[k] for k in range(N_GATE))

    def count_rejection(self, int32_t index, int code):
        """Count a value refused before it reached the gate (not even a number) as the gate would."""
        if not 0 <= index < self.im.n_inputs or not 0 < code < N_GATE:
            raise IndexError((index, code))
        gate_count(&self.im.ex.gate[index], code)

    def gate_stats(self):
        """Per source: (accepted, rejected per GATE_CODES[1:]) since start."""
        cdef Gate* g
        out = []
        for i in range(self.im.n_inputs):
            g = &self.im.ex.gate[i]
            out.append(tuple(v2g_load_relaxed(&g.accepted if k == 0 else &g.rejected[k]) for k in range(N_GATE)))
        return out

    def read_slot(self, int32_t index):
        """The value last published into source `index` and its time: (value, t_ns), or None
        when nothing was published yet (a reader's look at the exchange, never the image)."""
        if not 0 <= index < self.im.n_inputs:
            raise IndexError(index)
        cdef double value = 0.0
        cdef int64_t t_ns = 0
        cdef int k
        for k in range(1000):
            if slot_read(&self.im.ex.slot[index], &value, &t_ns):
                return None if v2g_load_relaxed(&self.im.ex.slot[index].seq) == 0 else (value, t_ns)
        return None

    def read_snapshot(self):
        """Copies of the latest published site, node and port rows (bytes).

        The bytes are allocated first, with the GIL; the reader lock is then taken
        and the rows copied without it, so no thread ever waits on this lock while
        holding the GIL (a collection inside an allocation could otherwise hand
        the GIL to a reader that then blocks on the lock).
        """
        cdef Py_ssize_t nn = sizeof(NodeRow) * self.im.n_nodes
        cdef Py_ssize_t np_ = sizeof(PortRow) * self.im.n_ports
        site = PyBytes_FromStringAndSize(NULL, sizeof(SiteRow))
        nodes = PyBytes_FromStringAndSize(NULL, nn)
        ports = PyBytes_FromStringAndSize(NULL, np_)
        cdef char* ds = PyBytes_AS_STRING(site)
        cdef char* dn = PyBytes_AS_STRING(nodes)
        cdef char* dp = PyBytes_AS_STRING(ports)
        cdef Snapshot* s
        with nogil:
            pthread_mutex_lock(&self.reader_lock)
            s = snap_latest(&self.im.snap)
            memcpy(ds, &s.site, sizeof(SiteRow))
            memcpy(dn, s.node, nn)
            memcpy(dp, s.port, np_)
            pthread_mutex_unlock(&self.reader_lock)
        return site, nodes, ports

    def update_under_seccomp(self, int64_t n, bint with_read=False):
        """For a throwaway child process only (tests/native/test_update_seccomp.py): enter seccomp
        strict mode (read, write, _exit, sigreturn only), run n cycles of the update stage (with
        the read stage too if asked), write UPDATE_DONE to stdout and _exit(0). Any other system
        call and the kernel ends the thread with SIGKILL. The caller must be the process's only
        thread (strict mode acts per thread). Returns only if seccomp could not be entered."""
        if self.running:
            raise RuntimeError("the real-time loop is running")
        cdef Image* im = self.im
        cdef Io* io = self.io
        cdef int64_t t = im.now_ns
        cdef int64_t k
        cdef int rc
        with nogil:
            rc = prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0)
            if rc == 0:
                for k in range(n):
                    t += im.opt.period_ns
                    cycle_begin(im, t)
                    if with_read:
                        cycle_read(im, io)
                    cycle_update(im)
                write(1, UPDATE_DONE, strlen(UPDATE_DONE))
                syscall(SYS_exit, 0)
        return errno

    def outbox_fd(self):
        """The eventfd the write stage signals when a port's output was handed over: poll it,
        read it (8 bytes) to re-arm, then read_outputs()."""
        return self.im.outbox.efd

    def read_outputs(self, take=()):
        """Every port's latest output (bytes of PortOutput rows), each row consistent. The
        ports in `take` (indices) are the caller's: their rows count as taken by their link."""
        cdef Py_ssize_t n = self.im.n_ports
        taken = bytearray(n)
        for j in take:
            if not 0 <= j < n:
                raise ValueError(f"port {j} does not exist")
            taken[j] = 1
        cdef unsigned char* tk = taken
        out = PyBytes_FromStringAndSize(NULL, sizeof(PortOutput) * n)
        cdef PortOutput* dst = <PortOutput*>PyBytes_AS_STRING(out)
        cdef PortOutput* o
        cdef uint64_t s1
        cdef Py_ssize_t i
        with nogil:
            for i in range(n):
                o = &self.im.outbox.out[i]
                while True:                  # the loop rewrites a row at most once a cycle
                    s1 = v2g_load_acquire(&o.seq)
                    if s1 & 1:
                        v2g_cpu_relax()
                        continue
                    dst[i].sequence = v2g_load_relaxed(&o.sequence)
                    dst[i].setpoint_w = v2g_load_f64(&o.setpoint_w)
                    dst[i].valid_until_ns = v2g_load_i64(&o.valid_until_ns)
                    dst[i].contactor_closed = v2g_load_i64(&o.contactor_closed)
                    v2g_fence_acquire()
                    if v2g_load_relaxed(&o.seq) == s1:
                        break
                if tk[i]:
                    v2g_store_release(&o.taken, dst[i].sequence)
        return out

    def output_refused(self):
        """Per port: outputs its link could not take (a refused frame, a consumer gone)."""
        return [v2g_load_relaxed(&self.im.outbox.out[i].refused) for i in range(self.im.n_ports)]

    def outbox_stats(self):
        return {"signals": v2g_load_relaxed(&self.im.outbox.signals),
                "signal_errors": v2g_load_relaxed(&self.im.outbox.signal_errors)}

    def read_stats(self):
        """Loop statistics; safe to call while the loop runs."""
        cdef Stats* st = &self.im.stats
        return {
            "cycles": v2g_load_relaxed(&st.cycles),
            "overruns": v2g_load_relaxed(&st.overruns),
            "skipped_periods": v2g_load_relaxed(&st.skipped_periods),
            "overrun_streak": v2g_load_relaxed(&st.overrun_streak),
            "lat_min_ns": v2g_load_i64(&st.lat_min_ns), "lat_max_ns": v2g_load_i64(&st.lat_max_ns),
            "lat_sum_ns": v2g_load_relaxed(&st.lat_sum_ns),
            "cmp_min_ns": v2g_load_i64(&st.cmp_min_ns), "cmp_max_ns": v2g_load_i64(&st.cmp_max_ns),
            "cmp_sum_ns": v2g_load_relaxed(&st.cmp_sum_ns),
            "lat_hist": self._hist(st.lat_hist), "cmp_hist": self._hist(st.cmp_hist),
            "stage_hist": {name: self._hist(st.stage_hist[k]) for k, name in enumerate(STAGES)},
        }

    cdef bytes _hist(self, uint64_t* h):
        cdef uint64_t copy[HIST_BINS + 1]
        cdef int i
        for i in range(HIST_BINS + 1):
            copy[i] = v2g_load_relaxed(&h[i])
        return PyBytes_FromStringAndSize(<char*>copy, sizeof(copy))

    def read_trace(self):
        """The recent cycles (bytes of Trace rows, oldest first) that no write raced."""
        cdef Stats* st = &self.im.stats
        cdef uint64_t h1 = v2g_load_acquire(&st.trace_head)
        cdef bytes raw = PyBytes_FromStringAndSize(<char*>st.trace, sizeof(st.trace))
        v2g_fence_acquire()
        cdef uint64_t h2 = v2g_load_acquire(&st.trace_head)
        # Entries with absolute index in [h2 - TRACE_LEN + 1, h1) were not overwritten.
        cdef uint64_t first = h2 - TRACE_LEN + 1 if h2 >= TRACE_LEN else 0
        return raw, first, h1, TRACE_LEN
