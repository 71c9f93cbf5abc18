"""Device drivers: open and configure devices with the Python libraries, then hand their fds
to the native core, which does the reads (the loop for CAN, the I/O thread for I2C)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import V2GError


class DeviceError(V2GError):
    """A device that cannot be opened or configured; the message names the device and the remedy."""

    def __init__(self, message: str, code: str = "ERR_DEVICE_MISSING"):
        super().__init__(code, message)


@dataclass
class Devices:
    """What attach() opened for a controller; the sim peers are the far sides of sim backends."""
    can: object | None = None
    i2c: list = field(default_factory=list)
    can_peer: object | None = None
    i2c_peer: object | None = None

    def close(self) -> None:
        for dev in [self.can, *self.i2c, self.can_peer, self.i2c_peer]:
            if dev is not None:
                dev.close()


def attach(ctrl, site) -> Devices:
    """Open the site's CAN bus and I2C sensors and hand them to ctrl (before it steps or starts)."""
    from . import can, i2c
    devices = Devices()
    try:
        if site.sections.get("can") is not None:
            devices.can, devices.can_peer = can.attach(ctrl, site)
        if site.sections.get("i2c"):
            devices.i2c, devices.i2c_peer = i2c.attach(ctrl, site)
    except BaseException:
        devices.close()
        raise
    return devices
