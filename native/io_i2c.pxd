# io_i2c: I2C sensors read by the native I/O thread, never by the loop (io_i2c.pxi).

cdef int64_t i2c_raw(int32_t decode, const uint8_t* b) noexcept nogil   # register bytes to a number
cdef void i2c_schedule(I2cIo* io, int64_t start_ns) noexcept nogil
cdef void i2c_poll(Image* im, int64_t now_ns) noexcept nogil        # virtual time: transfers due by now
cdef void* i2c_thread_main(void* arg) noexcept nogil                # pthread start routine; arg: Image*
