# io: the device state, beside the control image and never in it. The read and
# write stages take it as well as the image (cycle.pxd); the update stage takes
# the image alone, so the control law cannot reach a device. Allocated and
# pre-faulted with the image before the loop starts (_core.pyx: new_io).

cdef enum:
    MAX_IO_JOBS = MAX_I2C + MAX_SPI + MAX_PWM + 1
    GPIO_JOB_PERIOD_NS = 1_000_000   # drive lines of chips that sleep: a command waits at most this

cdef enum:  # IoJobKind: one per blocking bus the I/O thread serves
    JOB_I2C = 0                  # an I2C sensor's register (io_i2c)
    JOB_SPI = 1                  # an SPI ADC channel (io_spi)
    JOB_PWM = 2                  # a PWM pilot's duty, written on change and read back (io_pwm)
    JOB_GPIO = 3                 # the drive lines of GPIO chips that sleep (io_gpio: gpio_thread_drive)

cdef struct IoJob:               # one device's slot in the I/O thread's schedule (io_thread.pxi)
    int32_t kind
    int32_t index                # in its bus's table
    int64_t period_ns
    int64_t next_ns
    int64_t last_run_ns          # when it last ran (0: never)
    uint64_t runs
    uint64_t skipped             # periods missed (a slow bus): skipped, never made up in a burst
    uint64_t cost_sum_ns         # time spent in its transfers
    int64_t cost_max_ns
    uint64_t gap_sum_ns          # the periods achieved: between consecutive runs
    int64_t gap_max_ns

cdef struct IoThread:            # the schedule, computed at start-up (io_schedule)
    Exchange* ex                 # where the devices publish: the control image's exchange
    int32_t n
    IoJob job[MAX_IO_JOBS]
    uint64_t passes
    uint64_t pass_sum_ns         # a pass: every job due, each once (bounded by n)
    int64_t pass_max_ns
    uint64_t stop
    int64_t tid

cdef struct Io:
    CanReader can                # drained by the read stage
    CanWriter canw               # setpoint frames, sent by the write stage through can's socket
    IoThread iot                 # runs the jobs of the buses below
    I2cIo i2c
    SpiIo spi
    PwmIo pwm
    GpioIo gpio                  # contactor lines: feedback drained by the read stage, drive set by the write
                                 # stage (or, for chips that sleep, by the I/O thread: JOB_GPIO)
    PlcIo plc                    # PLC modems: probed by the write stage, drained by the read stage
