"""v2g_rt.arbitrate(): the cycle's arbitration for callers outside the loop, and its bad input."""
import math

import numpy as np
import pytest

import v2g_rt
from v2g_rt import arbitration


def fleet(n=6, now=1000.0):
    p = v2g_rt.new_ports(n)
    p["connected"] = True
    p["soc"] = np.linspace(0.3, 0.8, n)
    p["capacity_wh"] = 60_000
    p["energy_request_wh"] = 10_000
    p["departure_s"] = now + 3600 * np.arange(2, 2 + n)
    p["max_charge_w"] = 11_000
    p["max_discharge_w"] = 11_000
    p["min_soc"] = 0.2
    p["v2g"] = True
    return p


def test_follows_a_setpoint_inside_the_limits():
    p = fleet()
    w = v2g_rt.arbitrate(p, 1000.0, import_limit_w=50_000, export_limit_w=30_000, setpoint_w=20_000)
    assert w.dtype == np.float64 and w.shape == (6,)
    assert w.sum() == pytest.approx(20_000) and (w >= 0).all()
    w = v2g_rt.arbitrate(p, 1000.0, import_limit_w=50_000, export_limit_w=30_000, setpoint_w=-100_000)
    assert w.sum() == pytest.approx(-30_000) and (w <= 0).all()
    w = v2g_rt.arbitrate(p, 1000.0, import_limit_w=50_000, export_limit_w=30_000)
    assert w.sum() == pytest.approx(50_000)                 # no setpoint: charge within the limit


def test_scarce_power_is_spread_the_smallest_reachable_energy_getting_the_most():
    p = fleet(3)
    p["soc"] = [0.3, 0.5, 0.5]
    p["capacity_wh"] = [100_000, 30_000, 60_000]
    # the last one would miss its 10 kWh (3273 s at 11 kW) unless served at once: laxity 127 s;
    # it is not served first (a strict urgent tier lost the most, see arbitrate.pxi set_keys)
    p["departure_s"] = [1000 + 10 * 3600, 1000 + 10 * 3600, 1000 + 3400]
    w = v2g_rt.arbitrate(p, 1000.0, import_limit_w=1e6, export_limit_w=1e6, setpoint_w=15_000)
    # limits: their 10 kWh within the hour the answer holds, the last one's within its 3400 s
    limit = np.array([10_000, 10_000, 10_000 / 3400 * 3600])
    # ... and the taper's line (taper_span 0.2) at the SoC each reaches by the hold's end at 11 kW
    hold_h = np.array([1, 1, 3400 / 3600])
    limit = np.minimum(limit, 11_000 * (1 - p["soc"]) / (0.2 + 11_000 * hold_h / p["capacity_wh"]))
    # reachable energy (kWh): min(capacity, energy now + limit x time left); shares as limit / reach^1.5
    reach = np.minimum(p["capacity_wh"], p["soc"] * p["capacity_wh"] + limit * [10, 10, 3400 / 3600]) / 1000
    weight = limit / reach ** 1.5
    assert list(w) == pytest.approx(list(15_000 * weight / weight.sum()))   # no port reaches its limit
    assert w[1] > w[2] > w[0] > 0


def test_no_history_between_calls():
    p = fleet()
    a = v2g_rt.arbitrate(p, 1000.0, import_limit_w=1e6, export_limit_w=1e6, setpoint_w=-25_000)
    v2g_rt.arbitrate(fleet(50), 5.0, import_limit_w=1e6, export_limit_w=1e6, setpoint_w=300_000)
    b = v2g_rt.arbitrate(p, 1000.0, import_limit_w=1e6, export_limit_w=1e6, setpoint_w=-25_000)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("field,value,reason,port_w", [
    ("capacity_wh", math.nan, "capacity", 0.0),
    ("capacity_wh", -5.0, "capacity", 0.0),
    ("soc", math.nan, "soc", 0.0),
    ("soc", 1.7, "soc_clamped", 0.0),            # clamped to full: no more charge
    ("max_charge_w", -1.0, "power_limit", 0.0),
    ("max_charge_w", math.inf, "power_limit", 0.0),
    ("energy_request_wh", math.nan, "energy_request", None),
    ("departure_s", math.nan, "departure", None),
    ("min_soc", math.nan, "min_soc", None),
])
def test_bad_rows_have_defined_behaviour_and_are_counted(field, value, reason, port_w):
    p = fleet(4)
    p[field][0] = value
    before = arbitration.rejected[reason]
    w = v2g_rt.arbitrate(p, 1000.0, import_limit_w=20_000, export_limit_w=20_000, setpoint_w=15_000)
    assert arbitration.rejected[reason] == before + 1
    assert np.isfinite(w).all() and w.sum() <= 20_000 + 1e-6 and (w >= 0).all()
    if port_w is not None:
        assert w[0] == port_w


def test_departure_in_the_past_ranks_by_what_it_has_and_never_discharges():
    p = fleet(3)
    p["departure_s"][2] = 500.0                            # already late: it can reach only what it has,
    p["soc"][2] = 0.25                                     # 15 kWh: less than the others can reach
    w = v2g_rt.arbitrate(p, 1000.0, import_limit_w=1e6, export_limit_w=1e6, setpoint_w=11_000)
    assert w[2] > max(w[0], w[1]) > 0                      # the largest share, not all of it
    w = v2g_rt.arbitrate(p, 1000.0, import_limit_w=1e6, export_limit_w=1e6, setpoint_w=-30_000)
    assert w[2] == 0.0


@pytest.mark.parametrize("kw", [dict(import_limit_w=math.nan, export_limit_w=1.0),
                                dict(import_limit_w=1.0, export_limit_w=-3.0),
                                dict(import_limit_w=1.0, export_limit_w=1.0, setpoint_w=math.inf)])
def test_bad_limits_or_setpoint_are_refused(kw):
    with pytest.raises(ValueError):
        v2g_rt.arbitrate(fleet(), 0.0, **kw)


def test_no_port_gets_more_than_it_absorbs_before_its_request_is_met_within_dt():
    p = fleet(2)
    p["energy_request_wh"] = [50, 20_000]                  # one nearly full: 50 Wh
    w = v2g_rt.arbitrate(p, 1000.0, import_limit_w=1e6, export_limit_w=1e6, setpoint_w=12_000, dt_s=60)
    assert w[0] == pytest.approx(50 * 3600 / 60) and w[1] == pytest.approx(12_000 - 3_000)
    with pytest.raises(ValueError, match="dt_s"):
        v2g_rt.arbitrate(p, 1000.0, import_limit_w=1e6, export_limit_w=1e6, dt_s=0)


def test_contradictory_limits_give_zero():
    w = v2g_rt.arbitrate(fleet(), 1000.0, import_limit_w=0.0, export_limit_w=0.0, setpoint_w=40_000)
    assert (w == 0).all()


@pytest.mark.parametrize("now_s", [math.nan, math.inf, -9.3e9, 9.3e9])
def test_a_time_outside_the_loops_clock_is_refused(now_s):
    with pytest.raises(ValueError, match="now_s"):
        v2g_rt.arbitrate(fleet(), now_s, import_limit_w=1.0, export_limit_w=1.0)


def test_wrong_array_is_refused():
    with pytest.raises(ValueError, match="new_ports"):
        v2g_rt.arbitrate(np.zeros(3), 0.0, import_limit_w=1.0, export_limit_w=1.0)


def test_calls_in_sequence_close_the_loop_through_measured_w():
    p = fleet(2)
    p["soc"] = 0.3
    taper = np.array([30.0, 11_000.0])                   # the first EV takes 30 W whatever it is given
    w = np.zeros(2)
    for k in range(13):                                  # one call a second, past settle_s (10 s)
        w = v2g_rt.arbitrate(p, 5000.0 + k, import_limit_w=1e6, export_limit_w=1e6, setpoint_w=3_400, dt_s=5)
        p["measured_w"] = np.minimum(w, taper)
    assert w[0] < 30 + 600 and w[1] == pytest.approx(3_400 - 30)
    fresh = v2g_rt.arbitrate(p, 1.0, import_limit_w=1e6, export_limit_w=1e6, setpoint_w=3_400, dt_s=5)
    assert fresh[0] > 30 + 600                           # time went back: a new sequence, no history


def test_arrays_without_measured_w_keep_working():
    p = np.zeros(2, arbitration.PORT_FIELDS)
    p["connected"], p["soc"], p["capacity_wh"], p["min_soc"] = True, 0.5, 60_000, 0.2
    p["energy_request_wh"], p["departure_s"], p["max_charge_w"] = 10_000, 1e9, 11_000
    assert v2g_rt.arbitrate(p, 0.0, import_limit_w=1e6, export_limit_w=1e6).sum() == pytest.approx(20_000)
