# pilot: the one current <-> duty map of the IEC 61851-1 control pilot (pilot.pxi).

cdef double pilot_duty_pct(double amps) noexcept nogil
cdef double pilot_current_a(double duty_pct) noexcept nogil
cdef double pilot_floor_a(double amps, double step_pct) noexcept nogil
cdef int64_t pilot_duty_ns(double duty_pct, int64_t period_ns) noexcept nogil   # rounded down: never more current

cdef enum:  # CpState: the control pilot's state from its high level (IEC 61851-1 table A.4)
    CP_BETWEEN = -1              # between two states' bands: never data
    CP_A = 0                     # 12 V: no vehicle
    CP_B = 1                     # 9 V: vehicle connected, not ready
    CP_C = 2                     # 6 V: ready, charging
    CP_D = 3                     # 3 V: ready, ventilation required
    CP_E = 4                     # 0 V: CP shorted to PE, or no supply
    CP_F = 5                     # -12 V: EVSE not available

cdef int32_t cp_state(double volts) noexcept nogil   # CP_A..CP_F, or CP_BETWEEN
cdef bint cp_diode_seen(double low_v) noexcept nogil   # a PWM low level that shows the EV's diode
