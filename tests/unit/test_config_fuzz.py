"""Malformed configs only ever raise ConfigError: never another exception, never a hang.

Hypothesis puts hostile values (wrong types, huge ints, NaN/inf, dates, nested tables and
arrays) into every option of a full site, and throws arbitrary text at the parser.
"""
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from v2g_rt import config
from v2g_rt.config import ConfigError

# A site using every section; each option below is a slot the fuzzer may overwrite.
SECTIONS = {
    "site": {"name": '"t"', "period_ms": "1.0", "status_socket": '""', "operator_group": '"v2g-operator"'},
    "rt": {"priority": "80", "cpu": "-1", "lock_memory": "false", "cpu_dma_latency_us": "-1",
           "watchdog_device": '""', "watchdog_timeout_s": "10"},
    "control": {"port_ramp_w_per_s": '"unlimited"', "deadband_w": "0", "overrun_streak_safe": "3",
                "plc_loss_limit": "0.05"},
    "upstream.dms": {"timeout_s": "10"},
    "node.grid": {"kind": '"grid"', "import_limit_w": "100000", "export_limit_w": "50000", "meter_max_age_s": "5",
                  "base_load_w": "[0, 1000]", "phase_limit_a": '"inf"'},
    "node.tx": {"kind": '"transformer"', "parent": '"grid"', "import_limit_w": "90000", "export_limit_w": "90000"},
    "node.tx.thermal": {"rated_w": "90000", "hot_spot_c": "[98, 120]", "ambient_max_age_s": "60",
                        "top_oil_max_age_s": "-1", "tau_oil_s": "10800"},
    "node.e1": {"kind": '"evse"', "parent": '"tx"', "ports": "2", "port_max_charge_w": "11000",
                "port_max_discharge_w": "11000", "heatsink_derate_c": "[70, 90]", "can_address": "33",
                "phases": '"L1L2L3"', "voltage_v": "230", "link": '"sim"'},
    "frequency": {"mode": '"curve"', "curve": "[[49, 1000], [51, -1000]]", "nominal_hz": "50"},
    "can": {"backend": '"sim"', "frames_per_cycle": "64"},
    "i2c.amb": {"backend": '"sim"', "address": "0x48", "sensor": '"tmp117"', "source": '"node/tx/ambient_c"',
                "period_ms": "1000", "bus": "1"},
    "sim": {"seed": "1", "step_s": "1.0", "base_load_w": "[0, 1000]", "setpoint_schedule": '[[0, "free"]]',
            "frequency_events": "[[9, -0.3, 60]]", "heatsink_faults": '[["e1", 13, 1800]]'},
}
SLOTS = [(s, o) for s, opts in SECTIONS.items() for o in opts]


def render(sections) -> str:
    return "".join(f"\n[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items())
                   for name, opts in sections.items())


def test_the_fuzz_base_is_valid():
    site = config.parse(render(SECTIONS), "fuzz.toml")
    assert len(site.ports) == 2 and site.sections["i2c"][0].source == "node/tx/ambient_c"


scalars = st.one_of(
    st.integers(), st.integers(min_value=2**62, max_value=2**70), st.integers(min_value=-2**70, max_value=-2**62),
    st.sampled_from(["0", "-1", "9223372036854775807", "9223372036854775808", "1" + "0" * 400, "-" + "9" * 4000, "1" * 5000,
                     "nan", "+inf", "-inf", "-0.0", "1e308", "1e-300", '"nan"', '"inf"', '"-inf"', '"unlimited"',
                     "true", '""', '"\\u0000"', "1979-05-27T07:32:00Z", "07:32:00", "1979-05-27", "0x7fffffffffffffff",
                     "[]", "{}", "[[]]", "[{}]", "{a = {b = 1}}", '["e1", 1e400]', '[1, "x"]', "[nan, inf]",
                     "[" * 200 + "]" * 200, "[" * 3000 + "]" * 3000, "{a=" * 3000 + "1" + "}" * 3000]),
    st.floats().map(repr),
    st.text(max_size=20).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'),
).map(str)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.dictionaries(st.sampled_from(["a", "kind", "rated_w", "x"]), inner, max_size=3).map(
        lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}")), max_leaves=8)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_only_config_errors(text: str) -> None:
    t0 = time.monotonic()
    try:
        config.parse(text, "fuzz.toml")
    except ConfigError as e:
        assert e.problems and all(p.code.startswith("ERR_CONFIG_") for p in e.problems)
        assert all(len(p.message) < 2000 for p in e.problems)
    assert time.monotonic() - t0 < 2.0


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(SLOTS), values), min_size=1, max_size=6))
def test_hostile_option_values_only_raise_config_error(edits):
    sections = {name: dict(opts) for name, opts in SECTIONS.items()}
    for (section, option), value in edits:
        sections[section][option] = value
    parse_only_config_errors(render(sections))


@FUZZ
@given(st.sampled_from(list(SECTIONS)), st.sampled_from(["extra", "kind", "thermal", "x.y"]), values)
def test_unexpected_keys_and_tables_only_raise_config_error(section, key, value):
    sections = {name: dict(opts) for name, opts in SECTIONS.items()}
    sections[section] = {**sections[section], key: value}
    parse_only_config_errors(render(sections))


@FUZZ
@given(st.sampled_from(list(SECTIONS)), values)
def test_a_section_replaced_by_a_value_only_raises_config_error(section, value):
    top = section.split(".")[0]
    rest = {name: opts for name, opts in SECTIONS.items() if name.split(".")[0] != top}
    parse_only_config_errors(f"{top} = {value}\n" + render(rest))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_config_error(text):
    parse_only_config_errors(text)
