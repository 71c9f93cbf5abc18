# pilot: the one current <-> duty map of the IEC 61851-1 control pilot (Annex A, table A.8),
# used by the arbitration (AC ports get 0 or >= 6 A, in steps the duty can express) and by
# the direct-wired PWM pilot. 6-51 A: duty = I / 0.6 %; 51-80 A: duty = I / 2.5 + 64 %;
# 5 %: digital communication (ISO 15118) decides the current. The two ranges do not meet:
# 85 % is 51 A and the next duty up already means 52.5 A or more, so currents between are
# expressed as 51 A (never more than asked).

from libc.math cimport floor, fabs

cdef double PILOT_MIN_A = 6.0
cdef double PILOT_MAX_A = 80.0
cdef double PILOT_LOW_MAX_A = 51.0     # the top of the 0.6 A per % range (85 %)


cdef double pilot_duty_pct(double amps) noexcept nogil:
    """The duty (%) that offers amps; 0 below 6 A (no current may be offered), 96 % above 80 A,
    85 % (51 A) for 51-52.5 A, which no duty expresses."""
    if not amps >= PILOT_MIN_A:
        return 0.0
    if amps > PILOT_MAX_A:
        amps = PILOT_MAX_A
    if amps <= PILOT_LOW_MAX_A:
        return amps / 0.6
    return fmax(amps / 2.5 + 64.0, 85.0)          # the seam: 85 % (51 A), never a duty meaning less


cdef double pilot_current_a(double duty_pct) noexcept nogil:
    """The current (A) a duty (%) offers: 0 outside 10-96 % (5 % asks for digital communication)."""
    if duty_pct < 10.0 - 1e-9 or duty_pct > 96.0 + 1e-9:
        return 0.0
    if duty_pct <= 85.0 + 1e-9:
        return duty_pct * 0.6
    return (duty_pct - 64.0) * 2.5


cdef double pilot_floor_a(double amps, double step_pct) noexcept nogil:
    """The most current a pilot of duty resolution step_pct can offer without exceeding amps:
    0 below 6 A."""
    cdef double duty, a
    if not amps >= PILOT_MIN_A:
        return 0.0
    if amps > PILOT_MAX_A:
        amps = PILOT_MAX_A
    if amps > PILOT_LOW_MAX_A:
        duty = floor((amps / 2.5 + 64.0) / step_pct + 1e-7) * step_pct
        if duty <= 85.0 + 1e-9:
            amps = PILOT_LOW_MAX_A           # the seam: the low range's top is the most it can be
    if amps <= PILOT_LOW_MAX_A:
        duty = floor(amps / 0.6 / step_pct + 1e-7) * step_pct
    a = pilot_current_a(duty)
    if a > amps + 1e-9:                      # rounding put it above (not a float hair): one step down
        a = pilot_current_a(duty - step_pct)
    return a if a >= PILOT_MIN_A - 1e-9 else 0.0


cdef int64_t pilot_duty_ns(double duty_pct, int64_t period_ns) noexcept nogil:
    """A duty as the PWM sysfs interface takes it, in ns of period_ns: rounded down (a longer
    high time would offer more current than the map gave), but a hair of float error is not
    a nanosecond's rounding."""
    return <int64_t>(period_ns * duty_pct / 100.0 + 1e-6)


# The CP's states by the voltage at the EVSE: nominal +-1 V (table A.4); the gaps between are no
# state, and a reading there (a bad contact, a mis-set divider) is counted, never taken for one.
# With the PWM on, the low level is -12 V through the EV's diode; a missing or shorted diode
# lets it rise towards the high level.
cdef double CP_BAND_V = 1.0
cdef double CP_DIODE_MAX_V = -11.0


cdef int32_t cp_state(double volts) noexcept nogil:
    cdef int32_t k
    for k in range(CP_E + 1):                # 12, 9, 6, 3, 0 V
        if fabs(volts - (12.0 - 3.0 * k)) <= CP_BAND_V:
            return k
    return CP_F if fabs(volts + 12.0) <= CP_BAND_V else CP_BETWEEN


cdef bint cp_diode_seen(double low_v) noexcept nogil:
    return low_v <= CP_DIODE_MAX_V
