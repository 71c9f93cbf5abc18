"""The wall clock, and whether it can be trusted.

A board without an RTC boots in 1970 (or at the last saved time) and steps when NTP
first answers. Wall-clock expiries (`expires_at`) mean nothing until then, so the
controller asks `synchronized()` before it converts one; control itself runs on
CLOCK_MONOTONIC and never depends on this.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from typing import Protocol

TIME_ERROR = 5                      # adjtimex(2): the clock is not synchronised
TIMESYNCD_FLAG = "/run/systemd/timesync/synchronized"


class WallClock(Protocol):
    def now(self) -> float: ...            # seconds since the epoch
    def synchronized(self) -> bool: ...


class _Timex(ctypes.Structure):
    # struct timex is 208 bytes on 64-bit Linux; only `modes` (0: read only) is set.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 204)]


class SystemClock:
    """CLOCK_REALTIME, synchronised when the kernel says so (chrony, ntpd, timesyncd all
    clear STA_UNSYNC through adjtimex) or systemd-timesyncd has left its flag file."""

    def __init__(self, cache_s: float = 1.0):
        self._cache_s = cache_s
        self._checked = -1e18
        self._synced = False
        name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(name, use_errno=True) if name else None

    def now(self) -> float:
        return time.time()

    def synchronized(self) -> bool:
        t = time.monotonic()
        if t - self._checked >= self._cache_s:
            self._checked = t
            self._synced = os.path.exists(TIMESYNCD_FLAG) or self._kernel_synced()
        return self._synced

    def _kernel_synced(self) -> bool:
        if self._libc is None:
            return False
        tx = _Timex()
        state = self._libc.adjtimex(ctypes.byref(tx))
        return 0 <= state != TIME_ERROR


class FixedClock:
    """A wall clock a test or a simulation sets: now() = monotonic + offset_s."""

    def __init__(self, offset_s: float = 1.8e9, synced: bool = True):
        self.offset_s = offset_s
        self.synced = synced

    def now(self) -> float:
        return time.monotonic() + self.offset_s

    def synchronized(self) -> bool:
        return self.synced
