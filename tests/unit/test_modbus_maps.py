"""Register maps: decoding (types, word order, sign, scale factors, not-implemented marks) and the
read plan (blocks per table and priority, a value with its scale factor in one request)."""
import math

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
