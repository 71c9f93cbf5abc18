"""Register maps: decoding (types, word order, sign, scale factors, not-implemented marks) and the
read plan (blocks per table and priority, a value with its scale factor in one request)."""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from v2g_rt import modbus_maps as maps


def point(**kw):
    base = dict(name="power_w", table="holding", address=10, type="int16", unit="W", register="40011")
    return maps.Point(**{**base, **kw})


def test_types_word_order_sign_and_scale():
    assert maps.decode(point(), {10: 0xFFFE}) == (-2.0, None)
    assert maps.decode(point(type="uint32"), {10: 0x0001, 11: 0x0002}) == (65538.0, None)
    assert maps.decode(point(type="uint32", word_order="little"), {10: 0x0002, 11: 0x0001}) == (65538.0, None)
    assert maps.decode(point(type="float32"), {10: 0x4049, 11: 0x0FDB})[0] == float(__import__("numpy").float32(math.pi))
    assert maps.decode(point(scale=10, sign=-1.0), {10: 5}) == (-50.0, None)
    assert maps.decode(point(sf_address=12), {10: 123, 12: 0xFFFE}) == (1.23, None)


def test_not_implemented_marks_and_scale_factors_are_never_values():
    ni = "ERR_MODBUS_NOT_IMPLEMENTED"
    assert maps.decode(point(), {10: 0x8000}) == (None, ni)
    assert maps.decode(point(type="uint16"), {10: 0xFFFF}) == (None, ni)
    assert maps.decode(point(type="acc32"), {10: 0, 11: 0}) == (None, ni)
    assert maps.decode(point(type="float32"), {10: 0x7FC0, 11: 0}) == (None, ni)
    assert maps.decode(point(sf_address=12), {10: 1, 12: 0x8000}) == (None, ni)
    assert maps.decode(point(sf_address=12), {10: 1, 12: 11}) == (None, "ERR_MODBUS_SCALE_FACTOR")


def test_plan_reads_a_value_with_its_scale_factor_and_splits_priorities():
    rmap = maps.sunspec_map(203, 40072, 105)
    (high,) = rmap.high
    assert high.address == 40072 + 14 and high.count == 7                 # Hz, Hz_SF, W .. W_SF
    assert all(b.count <= maps.MAX_REGISTERS for b in rmap.blocks)
    assert {p.name for b in rmap.low for p in b.points} >= {"current_a", "reactive_power_var"}


def test_packaged_maps_load():
    assert "simple-meter" in maps.packaged_maps()
    rmap = maps.load(maps.resolve("simple-meter"))
    assert rmap.point("power_w").address == 0 and rmap.point("reactive_power_var").address == 1


def test_the_packaged_evse_map_has_its_control_part():
    rmap = maps.load(maps.resolve("wallbox-quasar"))
    c = rmap.control
    assert (c.setpoint.address, c.setpoint.type) == (260, "int16") and c.timeout.address == 88
    assert [(r.address, v) for r, v in c.setup] == [(81, 1), (82, 0), (83, 1)]
    assert (c.enable[0].address, c.enable[1], c.enable[2]) == (257, 1, 2)
    assert maps.decode(rmap.point("soc"), {538: 0}) == (None, None)        # the Quasar's "no SoC now"
    assert maps.decode(rmap.point("soc"), {538: 57}) == (57.0, None)


@given(st.sampled_from(maps.WRITABLE), st.sampled_from([1.0, 0.1, 10.0]), st.sampled_from(["big", "little"]),
       st.floats(-3e9, 3e9, allow_nan=False))
def test_a_written_value_reads_back_as_itself_or_is_clamped_and_said_so(typ, scale, order, value):
    reg = maps.Register(0, typ, "0", scale, order)
    words, fits = reg.encode(value)
    lo, hi = reg.limits()
    back = maps.decode(maps.Point("v", "holding", 0, typ, "W", "0", scale=scale, word_order=order),
                       dict(enumerate(words)))[0]
    if fits:
        assert abs(back - value) <= scale / 2 + 1e-6 * abs(value)
    else:
        assert back in (lo, hi) and not lo <= round(value / scale) * scale <= hi


def _evse_doc(**control):
    doc = {"addressing": "pdu", "values": [{"name": "power_w", "register": 10, "type": "int16", "unit": "W"},
                                           {"name": "state", "register": 11, "type": "uint16", "unit": ""}],
           "control": {"setpoint": {"register": 20, "type": "int16", "unit": "W"}}}
    doc["control"].update(control)
    return doc


@pytest.mark.parametrize("control, words", [
    ({"setpoint": None}, "expected an object"),
    ({"setpoint": {"register": 70000, "type": "int16"}}, "a PDU address is 0-65535"),
    ({"setpoint": {"register": 20, "type": "float32"}}, "a written register is one of"),
    ({"setpoint": {"register": 20, "type": "int16", "unit": "A"}}, "unit: expected 'W'"),
    ({"timeout": {"register": 20, "unit": "s"}}, "written twice"),
    ({"setup": [{"register": 21, "value": 70000}]}, "value: expected an integer a uint16 holds"),
    ({"enable": {"register": 22, "on": 1}}, "off: expected an integer"),
    ({"connected_when": ["1"]}, "expected a list of integers"),
    ({"frobnicate": 1}, "unknown key 'frobnicate'"),
])
def test_evse_control_errors_name_the_map_and_the_register(control, words):
    with pytest.raises(maps.MapError) as e:
        maps.parse(_evse_doc(**control), "my-evse.json")
    assert str(e.value).startswith("my-evse.json: ") and words in str(e.value)


def test_modicon_input_registers_cannot_be_written():
    doc = _evse_doc(setpoint={"register": 30021, "type": "int16"})
    doc["addressing"] = "modicon"
    for v in doc["values"]:
        v["register"] += 40001
    with pytest.raises(maps.MapError, match="only holding registers can be written"):
        maps.parse(doc, "my-evse.json")


def test_connected_when_needs_a_state_value():
    doc = _evse_doc(connected_when=[1])
    doc["values"].pop()
    with pytest.raises(maps.MapError, match="needs a value named 'state'"):
        maps.parse(doc, "my-evse.json")
