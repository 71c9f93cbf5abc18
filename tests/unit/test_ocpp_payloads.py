"""What OCPP payloads mean to the controller and the profiles it sends (no network)."""
import datetime as dt

import pytest

from v2g_rt.services import ocpp_payloads as pay
from v2g_rt.services.ocpp import parse_listen, path_station
from v2g_rt.site import Node, Port, Site

NOW = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.timezone.utc)


def sampled(measurand, value, unit="W", **kw):
    return {"measurand": measurand, "value": value, "unit_of_measure": {"unit": unit}, **kw}


def test_power_import_is_positive_export_negative_and_kw_scaled():
    mv = [{"timestamp": "t1", "sampled_value": [sampled("Power.Active.Import", 7.4, "kW"), sampled("SoC", 55, "Percent")]},
          {"timestamp": "t2", "sampled_value": [sampled("Power.Active.Export", 3000)]}]
    assert pay.meter_readings(mv) == [("t1", "power_w", 7400.0), ("t1", "soc", 0.55), ("t2", "power_w", -3000.0)]


def test_energy_registers_and_per_phase_values_are_not_power():
    mv = [{"timestamp": "t", "sampled_value": [{"value": 1234.0},                      # default: energy register
                                               sampled("Power.Active.Import", 2300, phase="L1")]}]
    assert pay.meter_readings(mv) == []


def test_ac_needs_in_amps_become_watts_by_the_evse_phases_and_voltage():
    one_phase = Node("e", "evse", "grid", 7400, 0, link="ocpp", phases="L1", voltage_v=230)
    three = Node("e", "evse", "grid", 22000, 0, link="ocpp", phases="L1L2L3", voltage_v=230)
    needs = {"requested_energy_transfer": "AC_three_phase", "departure_time": "2026-12-03T10:00:00Z",
             "ac_charging_parameters": {"energy_amount": 20000, "ev_min_current": 6, "ev_max_current": 16,
                                        "ev_max_voltage": 400}}
    assert dict(pay.charging_needs(needs, three, NOW)) == {"departure_in_s": 7200.0, "energy_request_wh": 20000.0,
                                                            "max_charge_w": 16 * 3 * 230}
    assert dict(pay.charging_needs(needs, one_phase, NOW))["max_charge_w"] == 16 * 230


def test_dc_and_v2x_needs():
    node = Node("e", "evse", "grid", 50000, 50000, link="ocpp")
    needs = {"dc_charging_parameters": {"ev_max_current": 125, "ev_max_voltage": 400, "energy_amount": 30000,
                                        "ev_energy_capacity": 60000, "state_of_charge": 40},
             "v2x_charging_parameters": {"max_discharge_power": 11000}}
    got = dict(pay.charging_needs(needs, node, NOW))
    assert got == {"energy_request_wh": 30000.0, "max_charge_w": 50000.0, "capacity_wh": 60000.0, "soc": 0.4,
                   "max_discharge_w": 11000.0, "v2g": 1.0}


@pytest.mark.parametrize("w", [-11000.0, -0.4, 0.0, 7000.0])
def test_a_201_txprofile_never_discharges(w):
    p = pay.tx_profile(pay.V201, 2, "tx", w, NOW, 30)
    period = p["charging_profile"]["charging_schedule"][0]["charging_schedule_period"][0]
    assert p["evse_id"] == 2 and period == {"start_period": 0, "limit": max(w, 0.0)}
    assert p["charging_profile"]["valid_to"] == "2026-12-03T08:00:30.000Z"


def test_a_21_txprofile_is_a_signed_central_setpoint_with_an_offline_limit():
    p = pay.tx_profile(pay.V21, 1, "tx", -5000.0, NOW, 30)["charging_profile"]
    period = p["charging_schedule"][0]["charging_schedule_period"][0]
    assert period == {"start_period": 0, "operation_mode": "CentralSetpoint", "setpoint": -5000.0, "limit": 0.0,
                      "discharge_limit": -5000.0}
    assert p["max_offline_duration"] == 30 and p["invalid_after_offline_duration"] is True
    assert p["stack_level"] == 1 and p["charging_profile_purpose"] == "TxProfile" and p["transaction_id"] == "tx"


def test_the_fallback_is_a_persistent_charge_only_default_at_stack_level_0():
    p = pay.fallback_profile(7000.0)
    prof = p["charging_profile"]
    assert p["evse_id"] == 0 and prof["stack_level"] == 0 and prof["charging_profile_purpose"] == "TxDefaultProfile"
    assert "valid_to" not in prof and prof["charging_schedule"][0]["charging_schedule_period"][0]["limit"] == 7000.0


def test_fallback_shares_fit_every_node_with_all_stations_on_fallback():
    nodes = (Node("grid", "grid", None, 40_000, 40_000, base_load_w=(0, 10_000)),
             Node("g", "group", "grid", 12_000, 12_000),
             Node("a", "evse", "g", 22_000, 22_000, link="ocpp"), Node("b", "evse", "g", 22_000, 22_000, link="ocpp"),
             Node("c", "evse", "grid", 11_000, 11_000, link="ocpp"))
    ports = (Port("a.1", "a", 11e3, 11e3), Port("a.2", "a", 11e3, 11e3), Port("b.1", "b", 11e3, 11e3),
             Port("c.1", "c", 11e3, 11e3))
    site = Site("s", 1e-3, nodes, ports)
    share = {e: pay.fallback_share_w(site, e) for e in "abc"}
    assert share == {"a": 8000.0, "b": 4000.0, "c": 7500.0}      # group 12 kW by 3 ports; grid 30 kW by 4
    assert share["a"] + share["b"] <= 12_000 and sum(share.values()) <= 30_000


def test_listen_addresses():
    assert parse_listen("0.0.0.0:9443") == ("0.0.0.0", 9443)
    assert parse_listen("[::1]:9443") == ("::1", 9443)
    assert parse_listen("depot.local:443") == ("depot.local", 443)
    for bad in ("9443", "::1:9443", "host:0", "host:70000", "[::1]", "host:"):
        assert parse_listen(bad) is None, bad


def test_the_station_id_is_the_last_path_segment():
    assert path_station("/ocpp/cs01") == "cs01"
    assert path_station("/cs%2001/?x=1") == "cs 01"
    assert path_station("/a/b/cs02/") == "cs02"
