"""After any stop the last published snapshot is the safe one: no power, contactors open,
valid until the stop — a reader (a link service, the journal) never acts on live setpoints."""
import time

from helpers import S, make_site, plug_all
from v2g_rt import Controller

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
