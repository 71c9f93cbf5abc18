# io_i2c: I2C sensors read by the native I/O thread (io_thread), never by the loop (io_i2c.pxi).
# Its state lives in Io (io.pxd), beside the control image, never in it.

cdef enum:
    MAX_I2C = 32                 # sensors read by the I/O thread

cdef enum:  # I2cMode: how a sensor's register is read
    I2C_MODE_RDWR = 0            # I2C_RDWR: register write + repeated-start read (plain I2C adapters)
    I2C_MODE_SMBUS = 1           # I2C_SMBUS word / I2C-block read (SMBus-only adapters)

cdef enum:  # I2cDecode: register bytes (MSB first) to a raw number
    DECODE_BE16_SIGNED = 0       # TMP117 temperature, INA228 DIETEMP
    DECODE_BE24_UNSIGNED = 1     # INA228 POWER
    DECODE_BE24_SIGNED_SHIFT4 = 2    # INA228 CURRENT, VSHUNT (20 bits in the top of 24)
    DECODE_BE24_UNSIGNED_SHIFT4 = 3  # INA228 VBUS

cdef struct I2cSensor:
    int32_t fd
    int32_t addr
    int32_t mode
    int32_t reg
    int32_t nbytes
    int32_t decode
    int32_t input                # the source it publishes (single writer: the I/O thread)
    double scale
    double offset
    int64_t invalid_raw          # the register's "no value yet" code (TMP117: 0x8000), if any
    int32_t has_invalid_raw
    int64_t period_ns
    uint64_t reads
    uint64_t errors
    uint64_t not_ready           # reads that returned the register's "no value yet" code
    uint64_t gate_rejected       # decoded values the measurement gate refused
    int64_t last_errno

cdef struct I2cIo:               # the I/O thread's sensors (the loop never reads them)
    int32_t n
    I2cSensor s[MAX_I2C]

cdef int64_t i2c_raw(int32_t decode, const uint8_t* b) noexcept nogil   # register bytes to a number
cdef void i2c_read_sensor(Exchange* ex, I2cSensor* s, int64_t t_ns) noexcept nogil
