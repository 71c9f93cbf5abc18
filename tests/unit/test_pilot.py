"""The one current <-> duty map (IEC 61851-1 Annex A) in both directions, its rounding, and the
arbitration allocating pilot ports in currents the pilot expresses without breaking a limit."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from v2g_rt import Controller, _core, config
from v2g_rt.pilot import MAX_A, MIN_A, pilot_current, pilot_duty, pilot_floor


@pytest.mark.parametrize("amps, duty", [(6, 10), (16, 16 / 0.6), (32, 32 / 0.6), (51, 85), (60, 88), (80, 96)])
def test_the_standard_points(amps, duty):
    assert pilot_duty(amps) == pytest.approx(duty)
    assert pilot_current(duty) == pytest.approx(amps)


def test_no_current_below_6_a_nor_outside_10_to_96_percent():
    assert pilot_duty(5.99) == 0 and pilot_duty(0) == 0 and pilot_duty(math.nan) == 0
    assert pilot_current(5.0) == 0 and pilot_current(9.9) == 0 and pilot_current(96.5) == 0
    assert pilot_duty(120) == 96


@given(st.one_of(st.floats(MIN_A, 51.0), st.floats(52.5 + 1e-6, MAX_A)))
def test_duty_and_current_are_inverse_on_each_range(amps):
    assert pilot_current(pilot_duty(amps)) == pytest.approx(amps, abs=1e-9)


@given(st.floats(51.0, 52.5, exclude_min=True))
def test_between_the_ranges_the_duty_offers_51_a_never_more(amps):     # 85 % is 51 A, more is >= 52.5 A
    assert pilot_duty(amps) == 85.0 and pilot_current(85.0) == pytest.approx(51.0)


@given(st.floats(0, 100), st.sampled_from([0.1, 0.5, 1.0]))
def test_floor_never_exceeds_and_is_the_most_the_pilot_expresses(amps, step):
    a = pilot_floor(amps, step)
    if amps < MIN_A:
        assert a == 0
        return
    assert MIN_A - 1e-9 <= a <= min(amps, MAX_A) + 1e-9
    duty = pilot_duty(a)
    assert abs(duty / step - round(duty / step)) < 1e-6          # a duty the pilot can set
    # the next step up would exceed amps (or 80 A), except across the seam 51 -> 52.5 A
    up = pilot_current(duty + step)
    assert up > min(amps, MAX_A) - 1e-9 or up == 0 or (duty + step > 85 and a == pytest.approx(51))


@given(st.integers(100, 960), st.sampled_from([230.0, 690.0, 400.0 * 3]))
def test_floor_keeps_an_expressible_current_that_went_through_watts(tenths, watts_per_amp):
    """A current the pilot expresses, turned into W and back (as a setpoint is), floors to itself:
    a float hair below it is not a step below (a ramp would stall a step short of its target)."""
    duty = tenths / 10
    if 85.0 < duty < 86.0:                   # 85-86 % is no current but 51 A (the seam)
        return
    amps = pilot_current(duty)
    assert pilot_floor(amps * watts_per_amp / watts_per_amp, 0.1) == pytest.approx(amps, abs=1e-9)


@given(st.floats(MIN_A, MAX_A), st.integers(990_000, 1_010_000))
def test_the_duty_written_in_ns_never_offers_more_and_loses_less_than_a_nanosecond(amps, period_ns):
    duty = pilot_duty(amps)
    ns = _core.pilot_duty_to_ns(duty, period_ns)
    offered = pilot_current(100.0 * ns / period_ns)
    assert offered <= pilot_current(duty) + 1e-9
    assert 100.0 * ns / period_ns > duty - 100.0 / period_ns - 1e-12
    assert _core.pilot_duty_to_ns(100.0, period_ns) == period_ns


NOMINAL = {"A": 12.0, "B": 9.0, "C": 6.0, "D": 3.0, "E": 0.0, "F": -12.0}


@given(st.floats(-15.0, 15.0))
def test_cp_states_are_nominal_plus_minus_1_v_and_between_is_none(volts):
    state = _core.cp_level_state(volts)
    near = [s for s, v in NOMINAL.items() if abs(volts - v) <= 1.0]
    assert state == (near[0] if near else None)


@pytest.mark.parametrize("volts,state", [(13.0, "A"), (11.0, "A"), (10.99, None), (10.0, "B"), (7.5, None),
                                         (2.0, "D"), (1.5, None), (-1.0, "E"), (-1.01, None), (-11.0, "F"),
                                         (-13.0, "F"), (-13.01, None)])
def test_cp_thresholds(volts, state):
    assert _core.cp_level_state(volts) == state


def test_the_diode_shows_at_minus_11_v_or_below():
    assert _core.cp_diode(-12.0) and _core.cp_diode(-11.0) and not _core.cp_diode(-10.9) and not _core.cp_diode(-6.0)


def pilot_site(n, import_limit_w):
    text = (f'[site]\nname = "pilot"\nperiod_ms = 10\n[control]\npilot_duty_step_pct = 1\n'
            f'[node.grid]\nkind = "grid"\nimport_limit_w = {import_limit_w}\nexport_limit_w = 100000\n')
    text += "".join(f'[node.e{i}]\nkind = "evse"\nparent = "grid"\npilot = true\nport_max_charge_w = 22080\n'
                    for i in range(n))
    return config.parse(text, "pilot.toml")


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(1, 6), st.floats(0, 100_000), st.floats(0, 150_000))
def test_pilot_ports_get_0_or_an_expressible_current_and_no_limit_breaks(n, limit_w, setpoint_w):
    ctrl = Controller(pilot_site(n, limit_w), clock="virtual")
    t = 10_000_000
    ctrl.step(t)
    for pid in ctrl.port_ids:
        for kind, v in (("connected", 1), ("soc", 0.3), ("capacity_wh", 80_000), ("energy_request_wh", 40_000),
                        ("departure_in_s", 8 * 3600), ("max_charge_w", 22_080), ("min_soc", 0.2), ("v2g", 0)):
            assert ctrl.measure(f"port/{pid}/{kind}", v, t)
    assert ctrl.submit({"id": "p", "kind": "setpoint", "value_w": setpoint_w, "expires_in_s": 600})
    for _ in range(300):                                  # 3 s: every ramp done (50 kW/s)
        t += 10_000_000
        ctrl.step(t)
        w = ctrl.outputs()["setpoint_w"]
        assert w.sum() <= limit_w + 1e-6 and (w >= 0).all()
        amps = w / (3 * 230.0)
        assert all(a == 0 or (a >= MIN_A - 1e-9 and abs(pilot_duty(a) - round(pilot_duty(a))) < 1e-6) for a in amps)
    # a setpoint the pilots can meet is met to within one port's step (at most 2.5 A x 690 W/A)
    feasible = min(setpoint_w, limit_w, n * 22_080)
    if feasible >= 6 * 690:
        assert w.sum() >= feasible - max(6 * 690, 2.5 * 690) * n
