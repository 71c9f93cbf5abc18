"""The far ends of simulated devices, reached only through the device's own interface: a J1939
bus behind the socket pair the core reads as it reads the kernel's, I2C chips and SPI ADCs that
the controller's reader of sensors served on the Python side reads register by register and
frame by frame, contactors behind the pipes the loop reads and writes as it does GPIO line
requests, and pwmchips laid out as the sysfs tree the I/O thread writes."""
from __future__ import annotations

from ...devices import Devices
from ...devices import attach as attach_devices
from .can import SimCanPeer
from .gpio import SimGpioPeer
from .i2c import SimI2cBus
from .pwm import SimPwmChips
from .spi import SimAdcs
from .plc import SimPlcPeer


def _i2c_bus(served, configs) -> SimI2cBus:
    bus = SimI2cBus(configs)
    served.plug(bus.transfer)
    return bus


def _adcs(served, configs) -> SimAdcs:
    adcs = SimAdcs(configs)
    served.plug(adcs.transfer)
    return adcs


PEERS = {"can": SimCanPeer, "i2c": _i2c_bus, "gpio": SimGpioPeer, "spi": _adcs, "pwm": SimPwmChips,
         "plc": SimPlcPeer}


def attach(ctrl, site) -> Devices:
    """devices.attach with the simulator playing the far side of every sim backend."""
    return attach_devices(ctrl, site, peers=PEERS)
