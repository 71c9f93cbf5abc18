"""The output mailbox: what each port's link is to apply, handed over by the write stage, with an
eventfd that wakes a Python link only when there is something new."""
import os

import pytest

from helpers import MS, S, make_site, plug_all
from v2g_rt import Control, Controller

CHARGE = {"kind": "setpoint", "id": "c", "value_w": 12_000.0, "expires_in_s": 3600}


def drain(fd) -> int:
    try:
        return int.from_bytes(os.read(fd, 8), "little")
    except BlockingIOError:
        return 0


@pytest.fixture
def ctrl():
    c = Controller(make_site(4, meter=False, control=Control(port_ramp_w_per_s=float("inf"), deadband_w=500.0,
                                                             output_hold_s=5.0)), clock="virtual")
    c.step(S)
    plug_all(c, S)
    assert c.submit(CHARGE)
    c.step(S + MS)
    return c


def test_outputs_are_the_cycles_setpoints_with_their_dead_man(ctrl):
    out, snap = ctrl.outputs(), ctrl.snapshot()
    # water-filled shares are fractions: their sum may round in the last bit
    assert (out["setpoint_w"] == snap.ports["setpoint_w"]).all() and out["setpoint_w"].sum() == pytest.approx(12_000.0)
    assert (out["valid_until_ns"] == snap.t_ns + 5 * S).all() and out["contactor_closed"].all()
    assert (out["sequence"] >= 1).all()
    assert drain(ctrl.output_fd()) >= 1


def test_the_eventfd_wakes_only_for_a_move_past_the_deadband(ctrl):
    fd = ctrl.output_fd()
    drain(fd)
    before = ctrl.outputs()
    assert ctrl.submit({**CHARGE, "id": "small", "value_w": 12_400.0})     # no port moves 500 W
    ctrl.step(S + 2 * MS)
    assert drain(fd) == 0 and (ctrl.outputs()["sequence"] == before["sequence"]).all()
    assert ctrl.submit({**CHARGE, "id": "big", "value_w": 4_000.0})
    ctrl.step(S + 3 * MS)
    out = ctrl.outputs()
    moved = out["sequence"] == before["sequence"] + 1
    assert drain(fd) == 1 and moved.any() and (out["sequence"][~moved] == before["sequence"][~moved]).all()
    assert out["setpoint_w"].sum() == pytest.approx(4_000.0, abs=500.0 * (~moved).sum())


def test_a_keep_alive_at_half_the_validity_renews_the_dead_man(ctrl):
    fd = ctrl.output_fd()
    drain(fd)
    first = ctrl.outputs()
    ctrl.step(S + MS + 2 * S)                      # 2 s later: no change, still valid: nothing
    assert drain(fd) == 0
    ctrl.step(S + MS + 2 * S + S // 2)             # half the 5 s validity has passed
    again = ctrl.outputs()
    assert drain(fd) == 1 and (again["sequence"] == first["sequence"] + 1).all()
    assert (again["valid_until_ns"] > first["valid_until_ns"]).all()


def test_stop_hands_over_safe_outputs_and_wakes_the_links(ctrl):
    fd = ctrl.output_fd()
    drain(fd)
    ctrl.stop()
    out = ctrl.outputs()
    assert (out["setpoint_w"] == 0).all() and not out["contactor_closed"].any()
    assert (out["valid_until_ns"] == ctrl.snapshot().t_ns).all()
    assert drain(fd) >= 1                          # 0 W, each contactor opening, the final outputs


def test_a_link_that_stops_taking_its_outputs_is_counted_per_port(ctrl):
    served = list(ctrl.port_ids[:2])                 # a link serves two ports and takes their outputs
    t = S + MS
    for k in range(8):                               # 8 keep-alives, 2.5 s apart
        ctrl.outputs(take=served)
        t += 2 * S + S // 2
        ctrl.step(t)
    refused = ctrl.stats()["outputs_refused"]
    assert set(refused) == set(ctrl.port_ids[2:])    # nobody took the other two
    assert all(n >= 7 for n in refused.values())
    with pytest.raises(KeyError):
        ctrl.outputs(take=["no-such-port"])
