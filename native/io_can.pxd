# io_can: J1939 frames drained by the read stage, setpoint frames sent by the write stage (io_can.pxi).

cdef void can_attach(CanReader* r, int fd, int budget) noexcept nogil
cdef void can_writer_attach(CanWriter* w) noexcept nogil
cdef void can_drain(Image* im) noexcept nogil                       # read stage: one recvmmsg()
cdef void can_write(Image* im) noexcept nogil                       # write stage: one sendmmsg()
