"""The IEC 61851-1 control pilot's current <-> duty map, one for the whole project: the native
arbitration allocates AC ports (EVSE option pilot = true) in the currents it can express, and a
direct-wired PWM pilot sets its duty with it.

    6-51 A:  duty = I / 0.6 %      (10-85 %)
    51-80 A: duty = I / 2.5 + 64 % (85-96 %)
    5 %:     digital communication (ISO 15118) decides; below 6 A no current may be offered.
"""
from __future__ import annotations

from ._core import pilot_current, pilot_duty, pilot_floor

MIN_A, MAX_A = 6.0, 80.0
DIGITAL_DUTY_PCT = 5.0

__all__ = ["pilot_duty", "pilot_current", "pilot_floor", "MIN_A", "MAX_A", "DIGITAL_DUTY_PCT"]
