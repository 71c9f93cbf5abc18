"""The far side of the GPIO sim backend: contactors wired to the loop's lines through pipes.

A contactor reads its drive line's pipe (the struct gpio_v2_line_values the loop's write stage
writes, 16 bytes) and, a settle time after its coil changes, moves its auxiliary contact, whose
feedback line's pipe gets the same 48-byte struct gpio_v2_line_event the GPIO character device
delivers (rising = closed). It can be told to weld (stays closed), stick (stays open) or bounce
(extra edges before the contact rests). The loop reads both pipes exactly as it reads line
requests of /dev/gpiochipN; only its one system call per fd kind differs.
"""
from __future__ import annotations

import os
import struct

from ...devices.gpio import EVENT_SIZE

EVENT = struct.Struct("=QIIII24x")          # timestamp_ns, id, offset, seqno, line_seqno
VALUES = struct.Struct("=QQ")               # bits, mask
RISING, FALLING = 1, 2
assert EVENT.size == EVENT_SIZE


class SimContactor:
    """One port's contactor: coil on the drive line, auxiliary contact on the feedback line."""

    def __init__(self, port: str, settle_ns: int):
        self.port, self.settle_ns = port, settle_ns
        self.drive_fd = self.feedback_fd = -1
        self.coil = False                 # what the drive line last said (True: close)
        self.closed = False               # the main contacts
        self.change_at: int | None = None
        self.welded = self.stuck = False
        self.bounces = 0                  # extra edge pairs at the next change
        self.seqno = 0
        self.drives = 0                   # drive records taken
        self.dropped = 0                  # events the loop's full pipe refused

    def weld(self) -> None:
        """From now on it does not open, whatever the coil says (welded contacts)."""
        self.welded, self.stuck = True, False

    def stick(self) -> None:
        """Open whatever the coil says (a mechanism that does not pull in)."""
        self.stuck, self.welded = True, False

    def bounce(self, pairs: int) -> None:
        """The next contact change rings: pairs of edges back and forth before it rests."""
        self.bounces = pairs

    def poll(self, t_ns: int) -> None:
        if self.drive_fd >= 0:
            while True:
                try:
                    raw = os.read(self.drive_fd, VALUES.size * 16)
                except BlockingIOError:
                    break
                if not raw:
                    break
                for k in range(len(raw) // VALUES.size):
                    bits, mask = VALUES.unpack_from(raw, k * VALUES.size)
                    if mask & 1:
                        self.drives += 1
                        if bool(bits & 1) != self.coil:
                            self.coil = bool(bits & 1)
                            self.change_at = t_ns + self.settle_ns
        if self.change_at is not None and t_ns >= self.change_at:
            self.change_at = None
            want = (self.coil or self.welded and self.closed) and not self.stuck
            if want != self.closed:
                for _ in range(self.bounces):
                    self.edge(want, t_ns)
                    self.edge(not want, t_ns)
                self.bounces = 0
                self._set(want, t_ns)

    def _set(self, closed: bool, t_ns: int) -> None:
        if closed != self.closed:
            self.closed = closed
            self.edge(closed, t_ns)

    def edge(self, rising: bool, t_ns: int) -> None:
        """One edge event on the feedback line (also how the initial level is told)."""
        if self.feedback_fd < 0:
            return
        self.seqno += 1
        try:
            os.write(self.feedback_fd, EVENT.pack(t_ns, RISING if rising else FALLING, 0, self.seqno, self.seqno))
        except BlockingIOError:
            self.dropped += 1


class SimGpioPeer:
    """Every sim line's far end, grouped into one contactor per port."""

    def __init__(self, far, period_s: float, settle_s: float = 0.05):
        self.far = far
        self.contactors: dict[str, SimContactor] = {}
        for cfg, fd in far.lines:
            c = self.contactors.setdefault(cfg.port, SimContactor(cfg.port, round(settle_s * 1e9)))
            if cfg.feedback:
                c.feedback_fd = fd
            else:
                c.drive_fd = fd
        for c in self.contactors.values():
            c.edge(False, 0)               # the level at start: open (a real line is read instead)

    def poll(self, t_ns: int) -> None:
        for c in self.contactors.values():
            c.poll(t_ns)

    def closed(self, port: str) -> bool:
        return self.contactors[port].closed

    def close(self) -> None:
        self.far.close()
