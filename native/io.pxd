# io: the device state, beside the control image and never in it. The read and
# write stages take it as well as the image (cycle.pxd); the update stage takes
# the image alone, so the control law cannot reach a device. Allocated and
# pre-faulted with the image before the loop starts (_core.pyx: new_io).

cdef struct Io:
    CanReader can                # drained by the read stage
    CanWriter canw               # setpoint frames, sent by the write stage through can's socket
    I2cIo i2c                    # read by the native I/O thread
    GpioIo gpio                  # contactor lines: feedback drained by the read stage, drive set by the write stage
    PlcIo plc                    # PLC modems: probed by the write stage, drained by the read stage
