"""The far ends of simulated devices, reached only through the device's own interface: a J1939
bus behind the socket pair the core reads as it reads the kernel's, and I2C chips that the
controller's reader of sensors served on the Python side reads register by register, and
contactors behind the pipes the loop reads and writes as it does GPIO line requests."""
from __future__ import annotations

from ...devices import Devices
from ...devices import attach as attach_devices
from .can import SimCanPeer
from .gpio import SimGpioPeer
from .i2c import SimI2cBus
from .plc import SimPlcPeer


def _i2c_bus(served, configs) -> SimI2cBus:
    bus = SimI2cBus(configs)
    served.plug(bus.transfer)
    return bus


PEERS = {"can": SimCanPeer, "i2c": _i2c_bus, "gpio": SimGpioPeer, "plc": SimPlcPeer}


def attach(ctrl, site) -> Devices:
    """devices.attach with the simulator playing the far side of every sim backend."""
    return attach_devices(ctrl, site, peers=PEERS)
