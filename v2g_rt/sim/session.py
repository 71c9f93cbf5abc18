"""An EV's charging session as the controller sees it: what the EV side reports.

The simulated plant, tests and (later) the ISO 15118 / OCPP services all send
session data to the controller the same way: as measurements through the exchange.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..site import port_source


@dataclass
class Session:
    soc: float                    # 0..1
    capacity_wh: float
    energy_request_wh: float      # still wanted by departure
    departure_in_s: float         # from the time the values are stamped
    max_charge_w: float
    max_discharge_w: float = 0.0
    min_soc: float = 0.2
    v2g: bool = False
    connected: bool = True

    def publish(self, controller, port_id: str, t_ns: int | None = None, power_w: float | None = None) -> None:
        """Send every field of this session for port_id; raises if the controller rejects one."""
        fields = asdict(self)
        if power_w is not None:
            fields["power_w"] = power_w
        for name, value in fields.items():
            verdict = controller.measure(port_source(port_id, name), float(value), t_ns)
            if not verdict:
                raise ValueError(f"port {port_id} {name}: {verdict.reason}")


def unplug(controller, port_id: str, t_ns: int | None = None) -> None:
    verdict = controller.measure(port_source(port_id, "connected"), 0.0, t_ns)
    if not verdict:
        raise ValueError(f"port {port_id}: {verdict.reason}")
