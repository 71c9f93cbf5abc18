# schedule: grid commands in their windows, the scheduled ones queued per kind (schedule.pxi).

cdef void grid_command(Image* im, const Command* c) noexcept nogil      # apply one now, or queue it
cdef void grid_cancel(Image* im, const Command* c) noexcept nogil       # by kind or by id, active and queued
cdef void schedule_due(Image* im) noexcept nogil                        # open the windows that are due
