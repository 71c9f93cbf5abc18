# arbitrate: the fleet target distributed down the hierarchy within the envelopes (arbitrate.pxi).

cdef void cycle_arbitrate(Image* im) noexcept nogil
