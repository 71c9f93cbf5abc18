"""Site config: every bad input gives one clear message naming file, section and option."""
import os
import signal
import time

import pytest

from v2g_rt import cli, config
from v2g_rt.config import ConfigError

BASE = """
[site]
name = "t"
period_ms = 1.0

[node.grid]
kind = "grid"
import_limit_w = 100000
export_limit_w = 50000
meter_max_age_s = 5

[node.g1]
kind = "group"
parent = "grid"
import_limit_w = 60000
export_limit_w = 60000

[node.e1]
kind = "evse"
parent = "g1"
ports = 2
port_max_charge_w = 11000
port_max_discharge_w = 11000
"""


def problems(text):
    with pytest.raises(ConfigError) as e:
        config.parse(text, "site.toml")
    return e.value.problems


def test_the_packaged_default_is_a_valid_50_port_simulated_depot():
    site = config.load()
    assert len(site.ports) == 50 and site.name == "sim-depot-50"
    # simulated: EVSEs on the plant's link, one on the simulated J1939 bus
    assert {n.link for n in site.nodes if n.kind == "evse"} == {"sim", "can"}
    assert site.sections["can"].backend == "sim" and site.sections["can"].address is not None
    assert site.sections["sim"].step_s > 0


def test_a_valid_file_builds_the_site():
    site = config.parse(BASE, "site.toml")
    assert [p.id for p in site.ports] == ["e1.1", "e1.2"]
    assert site.node("e1").import_limit_w == 22000          # defaults to ports x port rating
    assert site.node("grid").meter_max_age_s == 5


@pytest.mark.parametrize("edit,section,option,words", [
    (("import_limit_w = 100000", 'import_limit_w = "lots"'), "node.grid", "import_limit_w", "expected a number"),
    (("import_limit_w = 100000", "import_limit_w = -5"), "node.grid", "import_limit_w", "found -5"),
    (("period_ms = 1.0", "period_ms = 0.0001"), "site", "period_ms", "0.01 to 10000 ms"),
    (("period_ms = 1.0", "period_ms = true"), "site", "period_ms", "found a boolean"),
    (("ports = 2", "ports = 20"), "node.e1", "ports", "found 20"),
    (('kind = "group"', 'kind = "feeder"'), "node.g1", "kind", "'feeder'"),
    (("meter_max_age_s = 5", "meter_max_age_s = 5\ncolour = 1"), "node.grid", "colour", "not valid in section"),
    (("port_max_charge_w = 11000", "port_max_charge_w = 11000\nport_max_charge = 1"), "node.e1",
     "port_max_charge", "did you mean 'port_max_charge_w'"),
    (('parent = "g1"', 'parent = "g9"'), "node.e1", "parent", "'g9' is not a node"),
    (("port_max_discharge_w = 11000", 'port_max_discharge_w = 11000\n[node.g2]\nkind = "group"\nparent = "e1"\n'
      "import_limit_w = 1\nexport_limit_w = 1"), "node.g2", "parent", "is an EVSE"),
    (('name = "t"', 'name = "t"\n[sitee]\nx = 1'), "sitee", None, "did you mean [site]"),
])
def test_one_clear_message_per_problem(edit, section, option, words):
    got = problems(BASE.replace(*edit))
    assert len(got) == 1, [str(p) for p in got]
    p = got[0]
    assert (p.file, p.section, p.option) == ("site.toml", section, option)
    assert words in str(p)
    assert str(p).startswith("ERR_CONFIG_")


def test_cycle_in_the_hierarchy():
    text = BASE + '\n[node.g2]\nkind = "group"\nparent = "g3"\nimport_limit_w = 1\nexport_limit_w = 1\n' \
                  '[node.g3]\nkind = "group"\nparent = "g2"\nimport_limit_w = 1\nexport_limit_w = 1\n'
    got = problems(text)
    assert any("cycle in the hierarchy" in str(p) and p.code == "ERR_CONFIG_TOPOLOGY" for p in got)


def test_two_roots_and_missing_required():
    text = BASE + '\n[node.grid2]\nkind = "grid"\nexport_limit_w = 1\n'
    got = [str(p) for p in problems(text)]
    assert any("[node.grid2] import_limit_w: required option is missing" in p for p in got)
    assert any("exactly one node without parent" in p for p in got)


def test_duplicate_ids_are_a_syntax_error_naming_the_line():
    got = problems(BASE + '\n[node.g1]\nkind = "group"\n')
    assert len(got) == 1 and got[0].code == "ERR_CONFIG_SYNTAX" and "line" in got[0].message


def test_more_ports_than_capacity():
    evses = "".join(f'\n[node.x{i}]\nkind = "evse"\nparent = "g1"\nports = 8\nport_max_charge_w = 1000\n'
                    for i in range(33))
    got = problems(BASE + evses)
    assert [p.code for p in got] == ["ERR_CONFIG_CAPACITY"] and "266 ports" in got[0].message


def test_sim_section_is_checked_by_its_owner():
    got = problems(BASE + '\n[sim]\nstep_s = 0\nsetpoint_schedule = [[5, "x"]]\narrival_soc = [0.5, 2]\nmood = 1\n')
    opts = sorted(p.option for p in got)
    assert opts == ["arrival_soc", "mood", "setpoint_schedule", "step_s"]


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load(tmp_path / "missing.toml")
    assert e.value.problems[0].code == "ERR_CONFIG_UNREADABLE"
    assert "missing.toml" in str(e.value)


@pytest.fixture
def deadline():
    """Fail (instead of hanging and eating memory) if the test body takes longer than 5 s."""
    def expired(signum, frame):
        raise TimeoutError("config parsing took longer than 5 s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("value", ["9223372036854775808", "10000000", "-1", "1" + "0" * 400])
def test_an_out_of_range_port_count_is_reported_and_never_used(value, deadline, tmp_path, capsys):
    path = tmp_path / "site.toml"
    path.write_text(BASE.replace("ports = 2", f"ports = {value}"))
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as e:
        cli.main(["check", str(path)])
    assert e.value.code == 2 and time.monotonic() - t0 < 1.0
    err = capsys.readouterr().err
    assert f"ERR_CONFIG_VALUE: {path}: [node.e1] ports: expected an integer from 1 to 8" in err


@pytest.mark.parametrize("option,value,words", [
    ("frames_per_cycle", "100000000", "from 1 to 64"),
    ("frames_per_cycle", "1.5", "expected an integer"),
])
def test_out_of_range_device_counts_are_reported(option, value, words):
    got = problems(BASE + f'\n[can]\nbackend = "sim"\n{option} = {value}\n')
    assert [(p.section, p.option) for p in got] == [("can", option)] and words in got[0].message


@pytest.mark.parametrize("edit,option", [
    (("import_limit_w = 100000", "import_limit_w = " + "9" * 400), "import_limit_w"),
    (("import_limit_w = 100000", "import_limit_w = nan"), "import_limit_w"),
    (("import_limit_w = 100000", "import_limit_w = -inf"), "import_limit_w"),
    (("period_ms = 1.0", "period_ms = 1e300"), "period_ms"),
    (("port_max_discharge_w = 11000", "port_max_discharge_w = [1, 2]"), "port_max_discharge_w"),
    (("meter_max_age_s = 5", "meter_max_age_s = 5\nbase_load_w = [5, " + "1" * 400 + "]"), "base_load_w"),
    (("meter_max_age_s = 5", "meter_max_age_s = 5\nbase_load_w = [5, 1]"), "base_load_w"),
])
def test_bad_numbers_are_reported_once_and_replaced(edit, option):
    got = problems(BASE.replace(*edit))
    assert [p.option for p in got] == [option], [str(p) for p in got]
    assert len(str(got[0])) < 300          # a huge value is cut short in the message


def test_unlimited_accepts_the_toml_inf_literal():
    site = config.parse(BASE + "\n[control]\nport_ramp_w_per_s = inf\n", "site.toml")
    assert site.control.port_ramp_w_per_s == float("inf")


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path, deadline):
    fifo = tmp_path / "site.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as e:
        config.load(fifo)
    p = e.value.problems[0]
    assert (p.code, p.file) == ("ERR_CONFIG_FILE", str(fifo)) and "a FIFO" in p.message


@pytest.mark.parametrize("path,words", [("/dev/zero", "a character device"), ("/", "a directory")])
def test_devices_and_directories_are_refused(path, words, deadline):
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert e.value.code == "ERR_CONFIG_FILE" and words in str(e.value) and "not a regular file" in str(e.value)


def test_a_file_over_1_mib_is_refused_before_it_is_read(tmp_path, deadline):
    path = tmp_path / "site.toml"
    path.write_text(BASE + "#" * config.MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert e.value.code == "ERR_CONFIG_FILE" and "at most 1048576 bytes" in str(e.value)


def test_a_regular_file_under_the_limit_loads(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(BASE + "#" * (config.MAX_CONFIG_BYTES - len(BASE) - 1) + "\n")
    assert config.load(path).name == "t"


def test_a_file_that_is_not_utf8_is_unreadable(tmp_path):
    path = tmp_path / "site.toml"
    path.write_bytes(b'[site]\nname = "\xff"\n')
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert e.value.code == "ERR_CONFIG_UNREADABLE" and "UTF-8" in str(e.value)


HEATSINK = "port_max_discharge_w = 11000\nheatsink_derate_c = [70, 90]\ncan_address = 33"
TX = '\n[node.tx]\nkind = "transformer"\nparent = "grid"\nimport_limit_w = 80000\nexport_limit_w = 80000\n'


def i2c(name, source, sensor="tmp117", extra=""):
    return f'\n[i2c.{name}]\nbackend = "sim"\naddress = 0x48\nsensor = "{sensor}"\nsource = "{source}"\n{extra}'


def one_problem(text):
    got = problems(text)
    assert len(got) == 1, [str(p) for p in got]
    return got[0]


def test_one_can_address_on_two_evses():
    second = '\n[node.e2]\nkind = "evse"\nparent = "g1"\nport_max_charge_w = 11000\n' \
             'heatsink_derate_c = [70, 90]\ncan_address = 33\n'
    p = one_problem(BASE.replace("port_max_discharge_w = 11000", HEATSINK) + second)
    assert (p.section, p.option, p.code) == ("node.e2", "can_address", "ERR_CONFIG_DEVICE")
    assert "also EVSE 'e1'" in p.message


def test_an_i2c_source_that_the_site_does_not_have(tmp_path, capsys):
    path = tmp_path / "site.toml"
    path.write_text(BASE + i2c("amb", "node/tx9/ambient_c"))
    with pytest.raises(SystemExit) as e:
        cli.main(["check", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"ERR_CONFIG_DEVICE: {path}: [i2c.amb] source: 'node/tx9/ambient_c' is not " \
                                 "a source of this site" in err


def test_an_i2c_source_of_another_kind_names_the_sources_that_fit():
    p = one_problem(BASE.replace("port_max_discharge_w = 11000", HEATSINK) + i2c("t", "node/grid/power_w"))
    assert (p.section, p.option, p.code) == ("i2c.t", "source", "ERR_CONFIG_DEVICE")
    assert "is a node_power_w source; the tmp117's temperature can feed: node/e1/heatsink_c" in p.message


def test_an_ina228_power_monitor_feeds_a_meter_but_its_current_feeds_nothing():
    site = config.parse(BASE + i2c("m", "node/grid/power_w", "ina228"), "site.toml")
    assert site.sections["i2c"][0].quantity == "power"
    p = one_problem(BASE + i2c("m", "node/grid/power_w", "ina228", 'quantity = "current"\n'))
    assert "the ina228's current can feed: no source of this site" in p.message


def test_upstream_section_is_read():
    site = config.parse(BASE + '\n[upstream.dms]\ntimeout_s = 10\n', "site.toml")
    assert [(u.name, u.timeout_s) for u in site.upstreams] == [("dms", 10.0)]


def test_the_old_link_section_is_refused_with_its_new_name():
    """[link.NAME] was renamed [upstream.NAME]: refused, never read as an alias ("link" is an EVSE's)."""
    got = problems(BASE + '\n[link.dms]\ntimeout_s = 10\n[link.csms]\ntimeout_s = 60\n')
    assert [(p.section, p.option, p.code) for p in got] == [("link.dms", None, "ERR_CONFIG_UNKNOWN_OPTION"),
                                                            ("link.csms", None, "ERR_CONFIG_UNKNOWN_OPTION")]
    assert "rename the section to [upstream.dms]" in got[0].message
    assert "rename the section to [upstream.csms]" in got[1].message


def test_the_old_sim_dms_link_option_is_refused_with_its_new_name():
    p = one_problem(BASE + '\n[upstream.dms]\ntimeout_s = 10\n[sim]\ndms_link = "dms"\n')
    assert (p.section, p.option, p.code) == ("sim", "dms_link", "ERR_CONFIG_UNKNOWN_OPTION")
    assert "rename it to 'dms_upstream'" in p.message
    site = config.parse(BASE + '\n[upstream.dms]\ntimeout_s = 10\n[sim]\ndms_upstream = "dms"\n', "site.toml")
    assert site.sections["sim"].dms_upstream == "dms"


def test_devices_never_feed_an_upstream_heartbeat():
    p = one_problem(BASE + '\n[upstream.dms]\ntimeout_s = 10\n' + i2c("hb", "upstream/dms/heartbeat"))
    assert (p.section, p.option, p.code) == ("i2c.hb", "source", "ERR_CONFIG_DEVICE")
    assert "upstream heartbeat" in p.message and "devices never feed it" in p.message


def test_a_can_signal_on_a_heartbeat_is_refused_too():
    from v2g_rt.devices import Feed, _feed_problem
    f = Feed("upstream/dms/heartbeat", "node.e1", "can_address", ("heatsink_c",), "the CAN signal X.Y")
    assert "devices never feed it" in _feed_problem(f, {"upstream/dms/heartbeat": "heartbeat"}, {})


def test_can_and_i2c_feeding_one_heat_sink():
    text = BASE.replace("port_max_discharge_w = 11000", HEATSINK) + '\n[can]\nbackend = "sim"\n' + \
        i2c("hs", "node/e1/heatsink_c")
    p = one_problem(text)
    assert (p.section, p.option, p.code) == ("i2c.hs", "source", "ERR_CONFIG_DEVICE")
    assert "already fed by [node.e1] can_address" in p.message


def test_two_i2c_sensors_feeding_one_source():
    text = BASE.replace("port_max_discharge_w = 11000", "port_max_discharge_w = 11000\nheatsink_derate_c = [70, 90]")
    p = one_problem(text + i2c("a", "node/e1/heatsink_c") + i2c("b", "node/e1/heatsink_c"))
    assert (p.section, p.option) == ("i2c.b", "source") and "already fed by [i2c.a] source" in p.message


@pytest.mark.parametrize("thermal,words", [
    ("rated_w = 1e-300", "from 1000 to 1e+09 W, found 1e-300"),
    ("rated_w = 2e12", "found 2e+12"),
])
def test_a_transformer_rating_must_be_physically_sane(thermal, words):
    p = one_problem(BASE + TX + f"\n[node.tx.thermal]\n{thermal}\n")
    assert (p.section, p.option, p.code) == ("node.tx.thermal", "rated_w", "ERR_CONFIG_VALUE") and words in p.message


def test_a_rating_defaulted_from_a_tiny_import_limit_is_refused():
    p = one_problem(BASE + TX.replace("import_limit_w = 80000", "import_limit_w = 500") + "\n[node.tx.thermal]\n")
    assert (p.section, p.option) == ("node.tx.thermal", "rated_w") and "defaults to import_limit_w" in p.message


@pytest.mark.parametrize("name", ["../../etc/passwd", "a b", "", "-x", ".hidden", "x" * 65, "dépôt", "a/b"])
def test_a_site_name_must_be_safe_in_a_file_name(name):
    p = one_problem(BASE.replace('name = "t"', f'name = "{name}"'))
    assert (p.section, p.option, p.code) == ("site", "name", "ERR_CONFIG_VALUE") and "fault journal" in p.message


@pytest.mark.parametrize("name", ["x" * 64, "depot-7.north_2", "0"])
def test_valid_site_names(name):
    assert config.parse(BASE.replace('name = "t"', f'name = "{name}"'), "site.toml").name == name


def test_operator_group_defaults_and_is_checked():
    assert config.parse(BASE, "site.toml").operator_group == "v2g-operator"
    site = config.parse(BASE.replace('name = "t"', 'name = "t"\noperator_group = "_depot-ops2"'), "site.toml")
    assert site.operator_group == "_depot-ops2"
    for bad in ["Ops", "1ops", "-ops", "ops group", "o" * 33, ""]:
        p = one_problem(BASE.replace('name = "t"', f'name = "t"\noperator_group = "{bad}"'))
        assert (p.section, p.option) == ("site", "operator_group") and "group name" in p.message


def test_source_kinds_lists_exactly_the_controllers_sources():
    from v2g_rt import Controller
    site = config.load()
    assert set(Controller(site, clock="virtual").sources) == set(site.source_kinds())


@pytest.mark.parametrize("value,words", [("[" * 5000 + "]" * 5000, "nested too deeply"),
                                         ("{a=" * 5000 + "1" + "}" * 5000, "nested too deeply"),
                                         ("1" * 5000, "4300")])
def test_what_tomllib_raises_besides_a_decode_error_is_a_syntax_problem(value, words):
    p = one_problem(BASE + f"\n[sim]\nseed = {value}\n")
    assert (p.code, p.section) == ("ERR_CONFIG_SYNTAX", "-") and words in p.message


def test_control_options_are_declared_once():
    """site.Control's fields carry default, accessor and range; the core takes a subset by name."""
    from dataclasses import fields

    from v2g_rt import Control, _core
    names = {f.name for f in fields(Control)}
    assert set(_core.CONTROL_OPTIONS) <= names
    assert all(f.metadata["accessor"] in ("get_float", "get_int", "get_bool") for f in fields(Control))
    core = _core.Core(1_000_000, True)
    with pytest.raises(TypeError, match="unknown control option"):
        core.configure(ramp_w_per_s=1.0)


def test_plc_is_a_sensor_of_link_quality_not_a_link():
    from importlib import resources
    text = resources.files("v2g_rt.data").joinpath(config.DEFAULT_SITE).read_text()
    text = text.replace('link = "sim"', 'link = "plc"', 1)
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, "t.toml")
    (p,) = [p for p in e.value.problems if p.option == "link"]
    assert "iso15118" in p.message and "sim, can, ocpp, modbus, pwm" in p.message


def test_an_error_names_each_code_once():
    with pytest.raises(ConfigError) as e:
        config.parse(BASE.replace("import_limit_w = 100000", "import_limit_w = -5"), "site.toml")
    text = str(e.value)
    assert text.startswith("ERR_CONFIG_VALUE: site.toml: [node.grid] import_limit_w")
    assert text.count("ERR_CONFIG_VALUE") == 1
