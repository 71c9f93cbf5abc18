# pilot: the one current <-> duty map of the IEC 61851-1 control pilot (pilot.pxi).

cdef double pilot_duty_pct(double amps) noexcept nogil
cdef double pilot_current_a(double duty_pct) noexcept nogil
cdef double pilot_floor_a(double amps, double step_pct) noexcept nogil
