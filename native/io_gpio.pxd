# io_gpio: contactor lines on the GPIO character device (io_gpio.pxi): feedback edges drained by
# the read stage, drive outputs set by the write stage (or by the I/O thread for chips that sleep).
# Its state lives in Io (io.pxd), beside the control image, never in it.

cdef enum:
    MAX_GPIO = 128               # feedback lines, and drive lines (each)
    GPIO_EVENT_BATCH = 16        # edge events taken per line per cycle: the per-line budget
    GPIO_EVENT_SIZE = 48         # sizeof(struct gpio_v2_line_event)

cdef enum:  # GpioFd: what a line's fd is; everything but the one system call is shared
    GPIO_FD_CHARDEV = 0          # a line request of /dev/gpiochipN (v2 uAPI)
    GPIO_FD_SIM = 1              # a pipe to the simulated far side carrying the same 48-byte events,
                                 # or taking the same struct gpio_v2_line_values for a drive

cdef enum:  # GpioDrive: who sets a drive line
    GPIO_DRIVE_LOOP = 0          # the write stage (chips whose set never sleeps)
    GPIO_DRIVE_THREAD = 1        # the native I/O thread (expanders on I2C/SPI: a set can sleep)

cdef struct GpioIn:              # a contactor feedback line: 1 = closed (active_low applied by the kernel)
    int32_t fd
    int32_t kind
    int32_t input                # the port's contactor source (single writer: the read stage)
    int32_t debounce_cycles      # software debounce; 0 where the kernel debounces
    int32_t raw                  # the level the last edge left
    int32_t stable               # the debounced level the source gets
    int32_t known                # a level is known (initial read or an edge); until then nothing is published
    int32_t failed               # the fd failed: nothing is published, the source goes stale
    uint64_t raw_cycle           # the cycle of the last change of raw
    uint32_t line_seqno          # the kernel's per-line event number last seen
    uint64_t events
    uint64_t bounces             # edges undone inside the debounce time: counted, never data
    uint64_t lost                # events the kernel dropped (gaps in line_seqno)
    uint64_t bad_events          # records that are no edge event, or a partial one
    uint64_t budget_full         # cycles that left events for the next one
    uint64_t read_errors
    uint64_t gate_rejected
    int64_t last_errno

cdef struct GpioOut:             # a contactor drive line: 1 = close
    int32_t fd
    int32_t kind
    int32_t port                 # image port whose handed-over contactor command it carries
    int32_t drive
    int32_t driven               # the value last set (-1: none yet)
    uint64_t want                # GPIO_DRIVE_THREAD: the value the write stage wants (atomic)
    uint64_t sets
    uint64_t write_errors        # a refused set is retried next time, never waited for
    int64_t last_errno

cdef struct GpioIo:
    int32_t n_in
    int32_t n_out
    int32_t n_thread_out         # drive lines the I/O thread sets
    int32_t epfd                 # every feedback fd: one epoll_wait(0) finds those with events
    GpioIn inp[MAX_GPIO]
    GpioOut out[MAX_GPIO]
    epoll_event ready[MAX_GPIO]
    gpio_v2_line_event buf[GPIO_EVENT_BATCH]
    uint64_t poll_errors

cdef void gpio_drain(Image* im, GpioIo* g) noexcept nogil     # read stage
cdef void gpio_write(Image* im, GpioIo* g) noexcept nogil     # write stage
cdef void gpio_thread_drive(GpioIo* g) noexcept nogil         # the I/O thread's hook: sets of sleeping chips
