"""v2g-rt: a V2G local controller with a native real-time control cycle."""
from .controller import Controller, Snapshot, Submission
from .site import Control, Link, Node, Port, RealTime, Site, depot

__all__ = ["Controller", "Snapshot", "Submission", "Site", "Node", "Port", "Link",
           "RealTime", "Control", "depot"]
__version__ = "0.1.0"
