# io_pwm: the control pilot's PWM, set through the PWM sysfs interface by the native I/O thread.
#
# The write stage only stores each port's duty (pwm_stage: no system call); the I/O thread
# writes it to /sys/class/pwm/pwmchipN/pwmM/duty_cycle when it changed (a sysfs write can
# block on a chip behind a slow bus) and reads back the duty the chip reports. The first time,
# and after a failure, it exports the channel if needed and writes duty 0 (never above a new
# period), the period, the duty and enable. Each attribute is one open-write-close, as the
# interface wants: a value is parsed per write() and a shorter one would not shorten a file
# behind it. A refused write or a missing file is counted and retried on the next run; a
# readback that disagrees is counted and period, duty and enable written again. A sim pwmchip is a directory
# laid out like the sysfs tree (v2g_rt.sim.peers.pwm), written through the same code.

from posix.fcntl cimport open, O_RDONLY, O_WRONLY, O_TRUNC, O_CLOEXEC
from posix.unistd cimport read
from libc.errno cimport ENOENT, EBADMSG, EIO


cdef void attr_path(char* out, const char* dir, const char* name) noexcept nogil:
    cdef size_t n = strlen(dir)
    memcpy(out, dir, n)
    memcpy(out + n, name, strlen(name) + 1)


cdef int sysfs_write(const char* dir, const char* name, int64_t value) noexcept nogil:
    cdef char path[PWM_PATH + 16]
    cdef char buf[24]
    cdef int k = 23, fd, err = 0
    buf[k] = 10                              # "\n"
    while True:
        k -= 1
        buf[k] = 48 + value % 10
        value //= 10
        if value == 0:
            break
    attr_path(path, dir, name)
    fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
    if fd < 0:
        return errno
    if write(fd, &buf[k], 24 - k) != 24 - k:
        err = errno if errno else EIO
    close(fd)
    return err


cdef int sysfs_read(const char* dir, const char* name, int64_t* value) noexcept nogil:
    cdef char path[PWM_PATH + 16]
    cdef char buf[24]
    cdef int fd, k
    cdef ssize_t n
    attr_path(path, dir, name)
    fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0:
        return errno
    n = read(fd, buf, sizeof(buf))
    close(fd)
    if n < 0:
        return errno
    value[0] = 0
    for k in range(n):
        if not 48 <= buf[k] <= 57:
            break
        value[0] = value[0] * 10 + buf[k] - 48
    else:
        k = n
    return 0 if k > 0 and (k == n or buf[k] == 10) else EBADMSG


cdef inline void pwm_failed(PwmChannel* c, int err) noexcept nogil:
    bump(&c.write_errors, 1)
    v2g_store_i64(&c.last_errno, err)


cdef void pwm_service(PwmChannel* c) noexcept nogil:
    cdef int64_t want = v2g_load_i64(&c.want_ns)
    cdef int64_t rb
    cdef int err
    if not c.configured:
        err = sysfs_write(c.dir, b"duty_cycle", 0)
        if err == ENOENT and sysfs_write(c.chip, b"export", c.channel) == 0:
            bump(&c.exports, 1)                  # configured on the next run, once it exists
            return
        if not err:
            err = sysfs_write(c.dir, b"period", c.period_ns)
        if not err:
            err = sysfs_write(c.dir, b"duty_cycle", want)
        if not err:
            err = sysfs_write(c.dir, b"enable", 1)
        if err:
            pwm_failed(c, err)
            return
        c.configured = 1
        c.written_ns = want
        bump(&c.writes, 1)
    elif want != c.written_ns:
        err = sysfs_write(c.dir, b"duty_cycle", want)
        if err:
            pwm_failed(c, err)
            c.configured = err != ENOENT     # gone (unexported): export and configure again
            return
        c.written_ns = want
        bump(&c.writes, 1)
    err = sysfs_read(c.dir, b"duty_cycle", &rb)
    if err:
        bump(&c.readback_errors, 1)
        v2g_store_i64(&c.last_errno, err)
        return
    bump(&c.readbacks, 1)
    v2g_store_i64(&c.readback_ns, rb)
    if rb - c.written_ns > c.tolerance_ns or c.written_ns - rb > c.tolerance_ns:
        bump(&c.mismatches, 1)
        c.configured = 0                     # a reset chip lost its period too: all again next run


cdef void pwm_stage(Image* im, PwmIo* io, bint safe) noexcept nogil:
    """Each PWM pilot's duty for the I/O thread: its port's, or 100 % (+12 V, no current) when
    safe outputs are due."""
    cdef PwmChannel* c
    cdef double duty
    cdef int32_t k
    for k in range(io.n):
        c = &io.ch[k]
        duty = 100.0 if safe else im.port[c.port].pilot_duty_pct
        v2g_store_i64(&c.want_ns, pilot_duty_ns(duty, c.period_ns))
