# io_pwm: the control pilot's PWM through the PWM sysfs interface, written by the native I/O
# thread, never by the loop (io_pwm.pxi). Its state lives in Io (io.pxd).

cdef enum:
    MAX_PWM = 32                 # PWM channels (one per direct-wired port)
    PWM_PATH = 192               # .../pwmchipN/pwmM/ and an attribute's name

cdef struct PwmChannel:
    int32_t port                 # the port whose pilot it drives
    int32_t channel              # M of pwmM, for export
    int32_t configured           # period, duty and enable written since start or the last failure
    int64_t period_ns
    int64_t tolerance_ns         # a readback further than this from the duty written disagrees
    int64_t want_ns              # the duty the write stage asks for (the loop stores, the I/O thread loads)
    int64_t written_ns           # the duty last written (-1: none, or to be written again)
    int64_t readback_ns          # the duty the chip reports it runs (-1: none yet)
    char chip[PWM_PATH]          # .../pwmchipN/
    char dir[PWM_PATH]           # .../pwmchipN/pwmM/
    uint64_t writes
    uint64_t write_errors        # refused writes (EINVAL, EACCES, EIO, ...) and missing files (ENOENT)
    uint64_t exports
    uint64_t readbacks
    uint64_t readback_errors
    uint64_t mismatches          # readbacks that disagree with the duty written
    int64_t last_errno

cdef struct PwmIo:
    int32_t n
    PwmChannel ch[MAX_PWM]

cdef void pwm_service(PwmChannel* c) noexcept nogil                  # write on change, read back
cdef void pwm_stage(Image* im, PwmIo* io, bint safe) noexcept nogil   # the write stage's duties
