"""The loop's J1939 reader under random frames (hypothesis; atheris cannot see into the compiled loop).

Frames of any identifier (EFF/RTR/ERR flags included), DLC 0..15 and payload, and
messages of the wrong size, go through the sim backend's SOCK_SEQPACKET socketpair
in virtual time. Properties: the loop never crashes; every frame lands in exactly
one counter and each counter matches an independent classification; a DLC above 8
is malformed, never decoded; the heat-sink input holds the last decoded value,
always inside the signal's minimum..maximum.
"""
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import CAN_SITE
from v2g_rt import Controller, config
from v2g_rt.devices.can import FRAME          # struct can_frame, as the kernel lays it out
from v2g_rt.sim.peers import attach

S = 1_000_000_000
CAN_EFF_FLAG, CAN_RTR_FLAG, CAN_ERR_FLAG, CAN_ERR_BUSOFF = 0x80000000, 0x40000000, 0x20000000, 0x40
SITE = CAN_SITE.format(backend="sim", budget=64)


def heatsink(data: bytes):           # 16 bits LE at 0, 0.03125 degC/bit, -273 offset, DBC range -40..250
    raw = data[0] | data[1] << 8
    return raw, raw > 0xFAFF, raw * 0.03125 - 273, (-40.0, 250.0)


def coolant(data: bytes):            # SPN 110: 8 bits at 0, 1 degC/bit, -40 offset, DBC range -40..210
    raw = data[0]
    return raw, raw > 0xFA, raw - 40.0, (-40.0, 210.0)


# (PGN, source address) -> node, the DLC the signal needs, its decoder
SIGNALS = {(0xFF10, 0x21): ("e1", 2, heatsink), (0xFEEE, 0x22): ("e2", 1, coolant),
           (0xEF00, 0x23): ("e3", 2, heatsink)}
RANGES = {node: dec(bytes(8))[3] for node, _, dec in SIGNALS.values()}


@st.composite
def frames(draw):
    """(message bytes, can_id, dlc): mostly aimed at the signals, some anything at all."""
    how = draw(st.integers(0, 5))
    if how == 0:
        can_id = draw(st.integers(0, 2**32 - 1))
    else:
        pgn, sa = draw(st.sampled_from(sorted(SIGNALS)))
        if pgn >> 8 < 240:                                  # PDU1: PS is the destination address
            pgn |= draw(st.integers(0, 255))
        if how == 1:
            sa = draw(st.integers(0, 255))
        can_id = CAN_EFF_FLAG | draw(st.integers(0, 7)) << 26 | pgn << 8 | sa
        if how == 2:
            can_id ^= draw(st.sampled_from([CAN_EFF_FLAG, CAN_RTR_FLAG, CAN_ERR_FLAG, CAN_ERR_FLAG | CAN_ERR_BUSOFF,
                                            1 << 24, 1 << 25]))          # flags, data page, extended data page
    dlc = draw(st.integers(0, 15))
    data = draw(st.binary(min_size=8, max_size=8))
    msg = FRAME.pack(can_id, dlc, data)
    if draw(st.integers(0, 15)) == 0:                       # not a struct can_frame
        msg = draw(st.binary(min_size=0, max_size=24).filter(lambda b: len(b) != FRAME.size))
    return msg, can_id, dlc


def classify(msg: bytes, can_id: int, dlc: int, expect: dict, last: dict) -> None:
    """The reader's documented classification of one frame, done independently."""
    if len(msg) != FRAME.size:
        expect["short_frames"] += 1
    elif dlc > 8:
        expect["bad_dlc"] += 1                              # malformed whatever its kind: never decoded
    elif can_id & CAN_ERR_FLAG:
        expect["error_frames"] += 1
        expect["bus_off"] += bool(can_id & CAN_ERR_BUSOFF)
    elif not can_id & CAN_EFF_FLAG or can_id & CAN_RTR_FLAG:
        expect["non_j1939"] += 1
    else:
        id29 = can_id & 0x1FFFFFFF
        pf = id29 >> 16 & 0xFF
        pgn = id29 >> 8 & (0x3FF00 if pf < 240 else 0x3FFFF)
        hit = SIGNALS.get((pgn, id29 & 0xFF))
        if hit is None:
            expect["unknown_pgn"] += 1
            return
        node, min_dlc, decode = hit
        data = msg[8:8 + dlc]
        if dlc < min_dlc:
            expect["short_frames"] += 1
            return
        _, not_available, value, (lo, hi) = decode(data + bytes(8 - dlc))
        if not_available:
            expect["not_available"] += 1
        elif not lo <= value <= hi:
            expect["out_of_range"] += 1
        else:
            expect["decoded"] += 1
            last[node] = value


COUNTERS = ("decoded", "unknown_pgn", "error_frames", "bus_off", "short_frames", "not_available", "out_of_range",
            "non_j1939")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(frames(), min_size=1, max_size=40), min_size=1, max_size=3))
def test_random_frames_are_classified_counted_and_decoded_within_range(batches):
    site = config.parse(SITE, "j1939-fuzz.toml")
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    far = devices.can_peer.sock
    far.setblocking(True)
    ctrl.step(S)
    expect = dict.fromkeys(COUNTERS + ("bad_dlc",), 0)
    last = {}
    sent = 0
    try:
        for batch in batches:
            for msg, can_id, dlc in batch:
                far.send(msg)
                classify(msg, can_id, dlc, expect, last)
            sent += len(batch)
            ctrl.run_steps(2)
            can = ctrl.device_stats()["can"]
            rejected = sum(can[c] for c in COUNTERS if c not in ("decoded", "bus_off")) + can["bad_dlc"]
            assert can["frames"] == sent == can["decoded"] + rejected, can
            assert can["read_errors"] == 0, can
            assert can["decoded"] == expect["decoded"], (can, expect)       # DLC > 8 is never decoded
            for c in ("unknown_pgn", "error_frames", "bus_off", "non_j1939", "not_available", "out_of_range"):
                assert can[c] == expect[c], (c, can, expect)
            assert can["short_frames"] + can["bad_dlc"] == expect["short_frames"] + expect["bad_dlc"], \
                (can, expect)
            snap = ctrl.snapshot()
            for node, (lo, hi) in RANGES.items():
                shown = float(snap.node(node)["temperature_c"])
                if node in last:
                    assert shown == last[node], (node, shown, last)
                    assert lo <= shown <= hi, (node, shown)
                else:
                    assert math.isnan(shown), (node, shown)
    finally:
        devices.close()


def test_a_frame_with_dlc_above_8_is_malformed_not_decoded():
    """A valid heat-sink reading in a frame that claims 9..15 data bytes (CAN FD lengths on a classic
    CAN socket) is rejected and counted, and the input keeps its last good value."""
    site = config.parse(SITE, "j1939-fuzz.toml")
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    ctrl.step(S)
    try:
        good = round((50.0 + 273) / 0.03125).to_bytes(2, "little") + bytes(6)
        devices.can_peer.sock.send(FRAME.pack(0x18FF1021 | CAN_EFF_FLAG, 8, good))
        ctrl.run_steps(1)
        bad = round((60.0 + 273) / 0.03125).to_bytes(2, "little") + bytes(6)
        for dlc in range(9, 16):
            devices.can_peer.sock.send(FRAME.pack(0x18FF1021 | CAN_EFF_FLAG, dlc, bad))
        ctrl.run_steps(1)
        can = ctrl.device_stats()["can"]
        assert ctrl.snapshot().node("e1")["temperature_c"] == 50.0
        assert can["frames"] == 8 and can["decoded"] == 1, can
        assert can["short_frames"] + can["bad_dlc"] == 7, can
    finally:
        devices.close()
