# io_spi: analog inputs on an SPI ADC, read by the native I/O thread, never by the loop.
#
# The front end is TI's ADS8688: 8 channels, 16 bits, a range register per channel (+-10.24 V
# down to 0-5.12 V), inputs clamped to +-20 V, -40..125 C: a 4-20 mA loop through a 250 ohm
# shunt (1-5 V), a 0-10 V sensor through a divider and the control pilot's +-12 V through a
# divider all meet it directly, where a 12-bit unipolar MCP3208 needs a level shifter for
# the pilot. spidev (Python) opens and configures it (mode 1, speed, ranges); here one ioctl
# SPI_IOC_MESSAGE(n + 1) makes n conversions: each 32-bit frame selects the channel for the
# next conversion (MAN_Ch_n) and carries the previous one's result, so frame k + 1 answers
# frame k, chip select rising between frames to start each conversion. A failed transfer (a
# stuck controller times out with ETIMEDOUT) is counted and publishes nothing, so the value
# goes stale. A sim ADC is served on the Python side (v2g_rt.devices.spi), which converts its
# frames with spi_convert below, as here.

cdef int spi_transfer(SpiChannel* c, uint8_t* tx, uint8_t* rx) noexcept nogil:
    cdef spi_ioc_transfer xfer[SPI_MAX_SAMPLES + 1]
    cdef int32_t k, n = c.samples + 1
    memset(xfer, 0, sizeof(xfer))
    for k in range(n):
        xfer[k].tx_buf = <uint64_t><size_t>&tx[k * SPI_FRAME]
        xfer[k].rx_buf = <uint64_t><size_t>&rx[k * SPI_FRAME]
        xfer[k].len = SPI_FRAME
        xfer[k].speed_hz = c.speed_hz
        xfer[k].bits_per_word = 8
        xfer[k].delay_usecs = c.delay_us
        xfer[k].cs_change = k < n - 1       # CS high between frames: each rising edge converts
    return errno if ioctl(c.fd, SPI_IOC_MESSAGE(n), xfer) < 0 else 0


cdef void spi_tx(const SpiChannel* c, uint8_t* tx) noexcept nogil:
    cdef uint16_t cmd = 0xC000 | (c.channel << 10)      # MAN_Ch_n: convert channel n next
    cdef int32_t k
    for k in range(c.samples + 1):
        tx[k * SPI_FRAME] = cmd >> 8
        tx[k * SPI_FRAME + 1] = cmd & 0xFF
        tx[k * SPI_FRAME + 2] = 0
        tx[k * SPI_FRAME + 3] = 0


cdef inline double ads_volts(int32_t rng, const uint8_t* b) noexcept nogil:
    """A result (frame bytes 2-3, MSB first) in volts at the ADC input."""
    cdef double code = (b[0] << 8) | b[1]
    if rng == ADS_PM_10V:
        return (code - 32768.0) * (20.48 / 65536.0)
    if rng == ADS_PM_5V:
        return (code - 32768.0) * (10.24 / 65536.0)
    if rng == ADS_PM_2V5:
        return (code - 32768.0) * (5.12 / 65536.0)
    if rng == ADS_P_10V:
        return code * (10.24 / 65536.0)
    return code * (5.12 / 65536.0)                   # ADS_P_5V


cdef int32_t spi_convert(SpiChannel* c, const uint8_t* rx, double* value, double* low,
                         bint* pwm) noexcept nogil:
    """The value of one read's answer (frames 1..samples), as SPI_OK or why it is none; a CP's
    value is its high level, low its low level, pwm whether the two differ as a PWM's do."""
    cdef double v, lo = INFINITY, hi = -INFINITY, total = 0.0, reading
    cdef int32_t k
    for k in range(1, c.samples + 1):
        v = ads_volts(c.range, &rx[k * SPI_FRAME + 2])
        total += v
        lo = fmin(lo, v)
        hi = fmax(hi, v)
    pwm[0] = False
    if c.kind == SPI_CP:
        v2g_store_f64(&c.last_reading, hi * c.ratio)
        value[0] = hi * c.ratio * c.gain + c.offset
        low[0] = lo * c.ratio * c.gain + c.offset
        pwm[0] = value[0] - low[0] > 6.0       # both levels seen: a 1 kHz PWM, not noise
        return SPI_OK if cp_state(value[0]) != CP_BETWEEN else SPI_BETWEEN_STATES
    v = total / c.samples
    if c.kind == SPI_4_20MA:
        reading = v / c.ratio * 1e3
        v2g_store_f64(&c.last_reading, reading)
        reading = reading * c.gain + c.offset
        if reading <= 3.6:
            return SPI_WIRE_BREAK
        if reading >= 21.0:
            return SPI_OVER_RANGE
        value[0] = c.at_lo + (reading - 4.0) / 16.0 * (c.at_hi - c.at_lo)
        return SPI_OK
    reading = v * c.ratio
    v2g_store_f64(&c.last_reading, reading)
    reading = reading * c.gain + c.offset
    if reading > 11.0:
        return SPI_OVER_RANGE
    value[0] = c.at_lo + reading / 10.0 * (c.at_hi - c.at_lo)
    return SPI_OK


cdef void spi_read_channel(Exchange* ex, SpiChannel* c, int64_t t_ns) noexcept nogil:
    cdef uint8_t tx[(SPI_MAX_SAMPLES + 1) * SPI_FRAME]
    cdef uint8_t rx[(SPI_MAX_SAMPLES + 1) * SPI_FRAME]
    cdef double value = 0.0, low = 0.0
    cdef bint pwm
    cdef int err
    spi_tx(c, tx)
    err = spi_transfer(c, tx, rx)
    if err:
        bump(&c.errors, 1)
        v2g_store_i64(&c.last_errno, err)
        return
    bump(&c.reads, 1)
    err = spi_convert(c, rx, &value, &low, &pwm)
    if err == SPI_WIRE_BREAK:
        bump(&c.wire_break, 1)
    elif err == SPI_OVER_RANGE:
        bump(&c.over_range, 1)
    elif err == SPI_BETWEEN_STATES:
        bump(&c.between_states, 1)
    elif gate_write(ex, c.input, WRITER_SPI, value, t_ns, t_ns) != GATE_OK:
        bump(&c.gate_rejected, 1)
    elif pwm and c.input_diode >= 0:
        gate_write(ex, c.input_diode, WRITER_SPI, 1.0 if cp_diode_seen(low) else 0.0, t_ns, t_ns)
