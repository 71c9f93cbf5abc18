# The native core's declarations: what each unit offers the others, included in
# the order the units build on each other (uvloop's habit: loop.pxd includes
# its units' .pxd). Every .pxi that _core.pyx includes comes after all of them,
# so nothing is used before it is declared. A unit's helpers that no other unit
# uses are not declared here; they precede their uses in the unit's .pxi.
#
# Cython reads this file through v2g_rt/_core.pxd (it finds a module's own .pxd
# by the module's name); here, beside _core.pyx, the build sees it as a dependency.

from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from image cimport *             # the control image: structs and enums
from syscalls cimport *          # kernel, libc and compiler interfaces

include "clock.pxd"
include "exchange.pxd"
include "guidance.pxd"
include "io_can.pxd"
include "io_gpio.pxd"
include "io_i2c.pxd"
include "io_spi.pxd"
include "io_pwm.pxd"
include "io_plc.pxd"
include "io.pxd"
include "io_thread.pxd"
include "pilot.pxd"
include "interlock.pxd"
include "arbitrate.pxd"
include "schedule.pxd"
include "cycle.pxd"
include "scheduler.pxd"

# _core.pyx itself: an image for entry.pxi's scratch use as for a Core
cdef set_options(Options* o, dict options)
cdef Image* new_image(int64_t period_ns) except NULL
