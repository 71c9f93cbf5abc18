"""The relay of the loop's output eventfd: every Python link is woken by every hand-over, none
steals another's wakeup, and a link that leaves closes only its own eventfd."""
import os
import select

import pytest

from helpers import MS, S, make_site, plug_all
from v2g_rt import Control, Controller
from v2g_rt.services import output_events

CHARGE = {"kind": "setpoint", "id": "c", "value_w": 12_000.0, "expires_in_s": 3600}


def woken(fd, timeout_s=5.0) -> bool:
    """Readable within timeout_s (the relay is a thread: its write is not instant), then re-armed."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    if not p.poll(timeout_s * 1e3):
        return False
    os.eventfd_read(fd)
    return True


@pytest.fixture
def ctrl():
    c = Controller(make_site(4, meter=False, control=Control(port_ramp_w_per_s=float("inf"))), clock="virtual")
    c.step(S)
    plug_all(c, S)
    return c


def forget_earlier_hand_overs(ctrl) -> None:
    """The hand-overs while plugging in are still counted on the loop's eventfd: a relay started
    now would pass them on late, at a time the test cannot tell from a new hand-over."""
    try:
        os.eventfd_read(ctrl.output_fd())
    except BlockingIOError:
        pass


def test_every_subscriber_is_woken_by_each_hand_over(ctrl):
    forget_earlier_hand_overs(ctrl)
    events = output_events(ctrl)
    assert output_events(ctrl) is events                  # one relay per controller
    a, b = events.subscribe(), events.subscribe()
    try:
        assert ctrl.submit(CHARGE)
        ctrl.step(S + MS)
        assert woken(a) and woken(b)
        assert not woken(a, 0.05) and not woken(b, 0.05)   # nothing new: nobody is woken again
        events.unsubscribe(b)
        assert ctrl.submit({**CHARGE, "id": "c2", "value_w": 4_000.0})
        ctrl.step(S + 2 * MS)
        assert woken(a)
    finally:
        events.unsubscribe(a)
