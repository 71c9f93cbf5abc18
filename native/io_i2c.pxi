# io_i2c: sensors on I2C, read by a native I/O thread, never by the loop.
#
# A stuck I2C bus blocks a transfer for the adapter's timeout, so the loop must
# never make one. The I/O thread (nogil, SCHED_FIFO below the loop) reads one
# sensor register at a time on a schedule set at start-up and publishes each
# value with its timestamp into the sensor's own measurement slot (it is that
# slot's only writer, through the gate); the cycle takes it like any measurement. A failed
# transfer (NACK, EIO, timeout) is counted and publishes nothing, so the value
# goes stale and the interlock treats it. In virtual time the same transfers run
# from poll_io() in the stepping thread. Only real transfers (I2C_RDWR, SMBus
# ioctls) are made here: a sim sensor is served on the Python side
# (v2g_rt.devices.i2c), which decodes its bytes with i2c_raw below.

from libc.errno cimport errno


cdef int i2c_transfer(I2cSensor* s, uint8_t* buf) noexcept nogil:
    """Read s.nbytes of register s.reg, MSB first, into buf; 0 or an errno."""
    cdef uint8_t reg = <uint8_t>s.reg
    cdef i2c_msg msgs[2]
    cdef i2c_rdwr_ioctl_data rdwr
    cdef i2c_smbus_ioctl_data args
    cdef i2c_smbus_data data
    cdef int k
    if s.mode == I2C_MODE_RDWR:
        msgs[0].addr = <uint16_t>s.addr
        msgs[0].flags = 0
        msgs[0].len = 1
        msgs[0].buf = &reg
        msgs[1].addr = <uint16_t>s.addr
        msgs[1].flags = I2C_M_RD
        msgs[1].len = <uint16_t>s.nbytes
        msgs[1].buf = buf
        rdwr.msgs = msgs
        rdwr.nmsgs = 2
        return errno if ioctl(s.fd, I2C_RDWR, &rdwr) < 0 else 0
    args.read_write = I2C_SMBUS_READ          # I2C_MODE_SMBUS
    args.command = reg
    args.data = &data
    if s.nbytes == 2:
        args.size = I2C_SMBUS_WORD_DATA
        if ioctl(s.fd, I2C_SMBUS, &args) < 0:
            return errno
        buf[0] = data.word & 0xFF             # SMBus words arrive low byte first
        buf[1] = data.word >> 8
        return 0
    args.size = I2C_SMBUS_I2C_BLOCK_DATA
    data.block[0] = <uint8_t>s.nbytes
    if ioctl(s.fd, I2C_SMBUS, &args) < 0:
        return errno
    for k in range(s.nbytes):
        buf[k] = data.block[1 + k]
    return 0


cdef int64_t i2c_raw(int32_t decode, const uint8_t* b) noexcept nogil:
    """The raw number in a register's bytes (MSB first): 2 bytes for DECODE_BE16_SIGNED, else 3."""
    cdef int64_t raw
    if decode == DECODE_BE16_SIGNED:
        raw = <int16_t>((b[0] << 8) | b[1])
    elif decode == DECODE_BE24_UNSIGNED:
        raw = (b[0] << 16) | (b[1] << 8) | b[2]
    elif decode == DECODE_BE24_UNSIGNED_SHIFT4:
        raw = ((b[0] << 16) | (b[1] << 8) | b[2]) >> 4
    else:
        raw = (b[0] << 16) | (b[1] << 8) | b[2]
        if raw & 0x800000:
            raw -= 0x1000000
        raw >>= 4
    return raw


cdef void i2c_read_sensor(Exchange* ex, I2cSensor* s, int64_t t_ns) noexcept nogil:
    cdef uint8_t buf[32]
    cdef int err = i2c_transfer(s, buf)
    if err:
        bump(&s.errors, 1)
        v2g_store_i64(&s.last_errno, err)
        return
    bump(&s.reads, 1)
    cdef int64_t raw = i2c_raw(s.decode, buf)
    if s.has_invalid_raw and raw == s.invalid_raw:
        bump(&s.not_ready, 1)                # e.g. a TMP117 before its first conversion
        return
    if gate_write(ex, s.input, WRITER_I2C, raw * s.scale + s.offset, t_ns, t_ns) != GATE_OK:
        bump(&s.gate_rejected, 1)


cdef int32_t i2c_due(I2cIo* io) noexcept nogil:
    cdef int32_t k, best = 0
    for k in range(1, io.n):
        if io.s[k].next_ns < io.s[best].next_ns:
            best = k
    return best


cdef void i2c_poll(I2cIo* io, int64_t now_ns) noexcept nogil:
    """Every transfer that is due by now_ns (virtual time: the stepping thread)."""
    cdef I2cSensor* s
    cdef int32_t k
    for k in range(io.n):
        s = &io.s[k]
        while s.next_ns <= now_ns:
            i2c_read_sensor(io.ex, s, now_ns)
            s.next_ns += s.period_ns


cdef void* i2c_thread_main(void* arg) noexcept nogil:
    cdef I2cIo* io = <I2cIo*>arg
    cdef I2cSensor* s
    cdef int64_t now
    pthread_setname_np(pthread_self(), b"v2g-i2c")
    v2g_store_i64(&io.tid, gettid())
    cdef int64_t nap = 1_000_000 if io.gpio.n_thread_out else 50_000_000
    while not v2g_load_acquire(&io.stop):
        gpio_thread_drive(io.gpio)
        now = mono_ns()
        if io.n == 0:
            sleep_until(now + nap)
            continue
        s = &io.s[i2c_due(io)]
        if s.next_ns > now:
            # Never sleep past a stop request (or a GPIO drive's change) by more than the nap.
            sleep_until(s.next_ns if s.next_ns - now < nap else now + nap)
            continue
        i2c_read_sensor(io.ex, s, mono_ns())
        s.next_ns += s.period_ns
        if s.next_ns < now:                  # fell behind (a slow bus): skip, never burst
            s.next_ns = now + s.period_ns
    return NULL


cdef void i2c_schedule(I2cIo* io, int64_t start_ns) noexcept nogil:
    """Spread the sensors' first reads over their periods so transfers do not bunch."""
    cdef int32_t k
    for k in range(io.n):
        io.s[k].next_ns = start_ns + io.s[k].period_ns * k // (io.n if io.n else 1)
