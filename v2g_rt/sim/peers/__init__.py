"""The far ends of simulated devices, reached only through the device's real interface (a socket
pair the core reads as it reads the kernel's): a J1939 bus and an I2C bus with its chips."""
from __future__ import annotations

from ...devices import Devices
from ...devices import attach as attach_devices
from .can import SimCanPeer
from .i2c import SimI2cBus


def _i2c_bus(sock, configs) -> SimI2cBus:
    bus = SimI2cBus(sock)
    for cfg in configs:
        bus.add(cfg)
    bus.start()
    return bus


PEERS = {"can": SimCanPeer, "i2c": _i2c_bus}


def attach(ctrl, site) -> Devices:
    """devices.attach with the simulator playing the far side of every sim backend."""
    return attach_devices(ctrl, site, peers=PEERS)
