# io_i2c: sensors on I2C, read by a native I/O thread, never by the loop.
#
# A stuck I2C bus blocks a transfer for the adapter's timeout, so the loop must
# never make one. The I/O thread (nogil, SCHED_FIFO below the loop) reads one
# sensor register per job of its schedule (io_thread.pxi) and publishes each
# value with its timestamp into the sensor's own measurement slot (it is that
# slot's only writer, through the gate); the cycle takes it like any measurement. A failed
# transfer (NACK, EIO, timeout) is counted and publishes nothing, so the value
# goes stale and the interlock treats it. In virtual time the same jobs run
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
