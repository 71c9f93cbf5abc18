"""v2g-rt: a V2G local controller with a native real-time control cycle."""
from .arbitration import arbitrate, new_ports
from .controller import Controller, Snapshot, Submission
from .site import Control, Frequency, Node, Port, RealTime, Site, Thermal, Upstream, depot

__all__ = ["Controller", "Snapshot", "Submission", "Site", "Node", "Port", "Upstream", "RealTime",
           "Control", "Frequency", "Thermal", "depot", "arbitrate", "new_ports"]
__version__ = "0.1.0"
