"""[plc.NAME]: a port's Green PHY modem; every problem names the section and option."""
import pytest

from v2g_rt import config
from v2g_rt.config import ConfigError
from v2g_rt.devices.plc import trip_cycles

BASE = """
[site]
name = "t"
[node.grid]
kind = "grid"
import_limit_w = 100000
export_limit_w = 50000
[node.e1]
kind = "evse"
parent = "grid"
ports = 2
port_max_charge_w = 11000
iso15118 = true
[node.e2]
kind = "evse"
parent = "grid"
port_max_charge_w = 11000
"""


def plc(name="p1", port="e1.1", extra=""):
    return f'\n[plc.{name}]\ninterface = "eth1"\nport = "{port}"\n{extra}'


def problems(text):
    with pytest.raises(ConfigError) as e:
        config.parse(text, "site.toml")
    return [(p.section, p.option, p.code, p.message) for p in e.value.problems]


def test_a_modem_per_port_with_its_defaults():
    site = config.parse(BASE + plc() + plc("p2", "e1.2", 'backend = "sim"\nmac = "00:B0:52:12:34:56"'), "site.toml")
    a, b = site.sections["plc"]
    assert (a.backend, a.interface, a.port, a.mac, a.probe_interval_s, a.loss_window) == \
        ("packet", "eth1", "e1.1", None, 0.1, 20)
    assert a.attenuation_limit_db == 30.0 and b.mac == bytes.fromhex("00b052123456") and b.backend == "sim"


@pytest.mark.parametrize("extra, option, found", [
    ('colour = "red"', "colour", "colour"),
    ('mac = "00:b0:52:12:34"', "mac", "00:b0:52:12:34"),
    ('backend = "serial"', "backend", "serial"),
    ("loss_window = 0", "loss_window", "0"),
    ("loss_window = 2000", "loss_window", "2000"),
    ("probe_interval_ms = 5", "probe_interval_ms", "5"),
    ("attenuation_limit_db = -3", "attenuation_limit_db", "-3"),
])
def test_bad_options_are_named(extra, option, found):
    (section, opt, code, message), = problems(BASE + plc(extra=extra))
    assert (section, opt) == ("plc.p1", option) and found in message


def test_a_port_without_plc_or_that_does_not_exist():
    (s1, o1, _, m1), = problems(BASE + plc(port="e2.1"))
    assert (s1, o1) == ("plc.p1", "port") and "iso15118 = true" in m1
    (s2, o2, _, m2), = problems(BASE + plc(port="e9.1"))
    assert (s2, o2) == ("plc.p1", "port") and "not a port" in m2


def test_a_second_modem_on_one_port_is_a_second_writer():
    (section, option, code, message), = problems(BASE + plc() + plc("p2"))
    assert (section, option, code) == ("plc.p2", "port", "ERR_CONFIG_DEVICE")
    assert "already fed by [plc.p1]" in message


def test_packet_backend_needs_an_interface_and_a_probe_faster_than_the_session_age():
    (section, option, _, _), = problems(BASE + '\n[plc.p1]\nport = "e1.1"\n')
    assert (section, option) == ("plc.p1", "interface")
    (section, option, _, message), = problems(BASE.replace('[site]\nname = "t"', '[site]\nname = "t"\n[control]\n'
                                                           'session_max_age_s = 1') + plc(extra="probe_interval_ms = 1000"))
    assert (section, option) == ("plc.p1", "probe_interval_ms") and "session_max_age_s" in message


@pytest.mark.parametrize("window, limit, interval, cycles", [
    (20, 0.05, 10, 21), (20, 0.0, 10, 11), (30, 0.05, 10, 21), (100, 0.05, 100, 601), (1, 0.5, 5, 6)])
def test_the_trip_deadline_in_cycles(window, limit, interval, cycles):
    assert trip_cycles(window, limit, interval) == cycles
