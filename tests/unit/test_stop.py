"""After any stop the last published snapshot is the safe one: no power, contactors open,
valid until the stop — a reader (a link service, the journal) never acts on live setpoints.
On the way there 0 W goes out at once and each contactor opens only once its port's current
has fallen, or at stop_timeout_s, or at once on a hard stop: never under load otherwise."""
import time
from dataclasses import replace

import pytest

from helpers import MS, S, make_site, plug_all
from v2g_rt import Controller
from v2g_rt.site import port_source

CHARGE = {"kind": "setpoint", "id": 1, "value_w": 20_000.0, "expires_in_s": 600}


def assert_safe(ctrl):
    snap = ctrl.snapshot()
    assert "stopped" in snap.site["safe_state"]
    assert (snap.ports["setpoint_w"] == 0).all() and (snap.ports["min_w"] == 0).all()
    assert (snap.ports["max_w"] == 0).all() and not snap.ports["contactor_closed"].any()
    assert (snap.ports["valid_until_ns"] <= snap.t_ns).all()
    assert snap.site["fleet_w"] == 0 and snap.site["ports_charging"] == 0


def test_virtual_stop_publishes_safe_outputs():
    ctrl = Controller(make_site(4, meter=False), clock="virtual")
    ctrl.step(S)
    plug_all(ctrl, S)
    assert ctrl.submit(CHARGE)
    ctrl.run_steps(3)
    live = ctrl.snapshot()
    assert live.ports["setpoint_w"].sum() > 0 and live.ports["contactor_closed"].all()
    ctrl.stop()
    assert_safe(ctrl)


def test_real_time_stop_publishes_safe_outputs():
    ctrl = Controller(make_site(4, meter=False))
    ctrl.start()
    plug_all(ctrl, None)
    assert ctrl.submit(CHARGE)
    deadline = time.monotonic() + 5
    while ctrl.snapshot().ports["setpoint_w"].sum() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ctrl.snapshot().ports["setpoint_w"].sum() > 0
    ctrl.stop()
    assert_safe(ctrl)


@pytest.fixture
def charging():
    site = make_site(4, meter=False)
    ctrl = Controller(replace(site, control=replace(site.control, stop_timeout_s=0.5)), clock="virtual")
    ctrl.step(S)
    plug_all(ctrl, S)
    assert ctrl.submit(CHARGE)
    ctrl.run_steps(3)
    for pid in ctrl.port_ids:                    # each EV draws 5 kW
        ctrl.measure(port_source(pid, "power_w"), 5000.0, ctrl.now_ns())
    assert ctrl.snapshot().ports["contactor_closed"].all()
    return ctrl


def test_stop_sends_0_w_at_once_and_opens_each_contactor_when_its_current_has_fallen(charging):
    ctrl = charging
    ctrl.begin_stop()
    ctrl.run_steps(1)
    out = ctrl.outputs()
    assert (out["setpoint_w"] == 0).all() and out["contactor_closed"].all()     # still under load
    assert "stopped" in ctrl.snapshot().site["safe_state"]
    first = ctrl.port_ids[0]
    ctrl.measure(port_source(first, "power_w"), 40.0, ctrl.now_ns())                  # below stop_open_below_w
    ctrl.run_steps(1)
    closed = ctrl.outputs()["contactor_closed"]
    assert not closed[0] and closed[1:].all()
    for pid in ctrl.port_ids[1:]:
        ctrl.measure(port_source(pid, "power_w"), 0.0, ctrl.now_ns())
    t = ctrl.now_ns()
    ctrl.stop()
    assert ctrl.snapshot().t_ns - t <= 2 * MS                                    # done in the next cycle
    assert_safe(ctrl)


def test_stop_opens_the_contactors_at_stop_timeout_when_current_never_falls(charging):
    ctrl = charging
    t = ctrl.now_ns()
    ctrl.stop()                  # virtual time: no new measurement arrives during the stop's cycles
    assert 0.5 * S <= ctrl.snapshot().t_ns - t <= 0.5 * S + 2 * MS
    assert_safe(ctrl)


def test_hard_stop_opens_the_contactors_at_once(charging):
    ctrl = charging
    ctrl.begin_stop(hard=True)
    ctrl.run_steps(1)
    assert not ctrl.outputs()["contactor_closed"].any()
