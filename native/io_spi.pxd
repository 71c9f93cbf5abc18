# io_spi: an SPI ADC (TI ADS8688) read by the native I/O thread, never by the loop (io_spi.pxi).
# Its state lives in Io (io.pxd), beside the control image, never in it.

cdef enum:
    MAX_SPI = 32                 # ADC channels read by the I/O thread
    SPI_MAX_SAMPLES = 64         # conversions in one read (a CP burst spans a PWM period)
    SPI_FRAME = 4                # bytes per ADS8688 frame: a 16-bit command, then 16 bits of result

cdef enum:  # SpiKind: what a channel's front end carries
    SPI_4_20MA = 0               # a current loop through a shunt (ohms)
    SPI_0_10V = 1                # a voltage through a divider (ratio: input V per ADC V)
    SPI_CP = 2                   # the control pilot through a divider: its high and low levels

cdef enum:  # AdsRange: the ADS8688's per-channel input range register (VREF 4.096 V)
    ADS_PM_10V = 0               # +-2.5 x VREF  = +-10.24 V
    ADS_PM_5V = 1                # +-1.25 x VREF = +-5.12 V
    ADS_PM_2V5 = 2               # +-0.625 x VREF = +-2.56 V
    ADS_P_10V = 5                # 0 .. 2.5 x VREF = 10.24 V
    ADS_P_5V = 6                 # 0 .. 1.25 x VREF = 5.12 V

cdef enum:  # SpiResult: what a read gave; anything but SPI_OK publishes nothing
    SPI_OK = 0
    SPI_WIRE_BREAK = 1           # 4-20 mA at or below 3.6 mA (NAMUR NE 43)
    SPI_OVER_RANGE = 2           # 4-20 mA at or above 21.0 mA, 0-10 V above 11 V
    SPI_BETWEEN_STATES = 3       # a CP level in no state's band

cdef struct SpiChannel:
    int32_t fd
    int32_t channel              # ADC input 0..7
    int32_t kind
    int32_t range
    int32_t samples              # conversions per read: averaged, or a CP's high and low levels
    uint32_t speed_hz
    uint16_t delay_us            # between the conversions of a read
    int32_t input                # the source it publishes (single writer: the I/O thread)
    int32_t input_diode          # a CP channel's diode source, -1 if none
    double ratio                 # 4-20 mA: shunt ohms; voltages: input V per ADC V
    double at_lo                 # engineering value at 4 mA or 0 V ...
    double at_hi                 # ... and at 20 mA or 10 V
    double gain                  # calibration of the reading (mA or V): reading * gain + offset
    double offset
    int64_t period_ns
    uint64_t reads
    uint64_t errors              # failed transfers (a stuck controller's ETIMEDOUT, EIO, ...)
    uint64_t wire_break
    uint64_t over_range
    uint64_t between_states
    uint64_t gate_rejected
    int64_t last_errno
    double last_reading          # the reading (mA, V) before calibration, for commissioning

cdef struct SpiIo:
    int32_t n
    SpiChannel c[MAX_SPI]

cdef void spi_tx(const SpiChannel* c, uint8_t* tx) noexcept nogil   # the frames of one read
cdef int32_t spi_convert(SpiChannel* c, const uint8_t* rx, double* value, double* low,
                         bint* pwm) noexcept nogil                    # the frames' answer to a value
cdef void spi_read_channel(Exchange* ex, SpiChannel* c, int64_t t_ns) noexcept nogil
