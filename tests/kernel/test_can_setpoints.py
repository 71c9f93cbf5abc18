"""The write stage's J1939 setpoint frames: address claim, the cycle's values and sequence, the
rate limit, a lost address, refused frames, the safe frame at stop, the module's own timeout.

Sim backend everywhere (the far end of the socket pair listens); in the kernel-test guest also
SocketCAN on vcan0, where another raw socket on the bus receives what the loop sends. Frames
are decoded with cantools from hw/j1939/v2g-setpoint.dbc, not by the controller's encoder.
"""
import select
import socket

import pytest

from helpers import BACKENDS, CAN_SITE, MS, S, ev
from v2g_rt import Controller, config
from v2g_rt.devices.can import CAN_EFF_FLAG, FRAME
from v2g_rt.sim.peers import attach
from v2g_rt.sim.peers.can import PowerModule, j1939_fields, setpoint_message

ADDRESS, NAME, MODULE = 0x27, 0x123456, 0x31
# a slow ramp, so outputs move every cycle for seconds
SITE = CAN_SITE.replace("[control]\n", "[control]\nport_ramp_w_per_s = 5000\n").replace("frames_per_cycle = {budget}", f"frames_per_cycle = {{budget}}\naddress = {ADDRESS}\n"
                        f"name = {NAME}\nsetpoint_interval_ms = 20") + f"""
[node.m1]
kind = "evse"
parent = "g"
link = "can"
ports = 2
port_max_charge_w = 11000
port_max_discharge_w = 11000
can_address = {MODULE}
"""
SETPOINT = setpoint_message()


class Listener:
    """Another party on the bus: the sim peer's socket, or a raw socket on vcan0."""

    def __init__(self, backend, devices):
        if backend == "sim":
            self.sock = devices.can_peer.sock
        else:
            self.sock = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
            self.sock.bind(("vcan0",))
        self.backend = backend

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        """(PGN, destination, source, data) of everything sent since the last call."""
        out = []
        while select.select([self.sock], [], [], 0.05 if self.backend != "sim" else 0)[0]:
            can_id, dlc, data = FRAME.unpack(self.sock.recv(FRAME.size))
            if can_id & CAN_EFF_FLAG:
                out.append((*j1939_fields(can_id & 0x1FFFFFFF), data[:dlc]))
        return out

    def send(self, can_id: int, data: bytes) -> None:
        self.sock.send(FRAME.pack(can_id | CAN_EFF_FLAG, len(data), data.ljust(8, b"\0")))

    def close(self):
        if self.backend != "sim":
            self.sock.close()


@pytest.fixture(params=BACKENDS["can"])
def bus(request):
    site = config.parse(SITE.format(backend=request.param, budget=64), "can-setpoints.toml")
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    listener = Listener(request.param, devices)
    ctrl.step(S)
    for pid in ("m1.1", "m1.2"):
        ev().publish(ctrl, pid, S)
    assert ctrl.submit({"kind": "setpoint", "id": "c", "value_w": 15_000.0, "expires_in_s": 3600})
    yield ctrl, listener
    listener.close()
    devices.close()


def setpoints(frames):
    return [(da, SETPOINT.decode(data)) for pgn, da, sa, data in frames if pgn == 0xEF00 and sa == ADDRESS]


def claims(frames):
    return [(sa, int.from_bytes(data, "little")) for pgn, da, sa, data in frames if pgn == 0xEE00]


def test_the_controller_claims_its_address_then_sends_the_cycles_values_and_sequence(bus):
    ctrl, listener = bus
    early = listener.frames()
    assert claims(early) == [(ADDRESS, NAME)]
    ctrl.run_steps(200, MS)                           # J1939-81: nothing else for 250 ms after a claim
    assert setpoints(listener.frames()) == []
    ctrl.run_steps(60, MS)
    sent = setpoints(listener.frames())
    ctrl.run_steps(1, 20 * MS)                        # one interval on: the frame is this cycle's output
    sent += setpoints(listener.frames())
    out = ctrl.outputs()
    assert {da for da, _ in sent} == {MODULE} and {v["Port"] for _, v in sent} == {0, 1}
    last = {v["Port"]: v for _, v in sent}
    for k, pid in enumerate(("m1.1", "m1.2")):
        j = ctrl.port_ids.index(pid)
        assert last[k]["Function"] == 1 and last[k]["Timeout"] == ctrl.site.control.output_hold_s
        assert last[k]["PowerSetpoint"] == round(out["setpoint_w"][j]) > 0 and last[k]["ContactorClose"] == 1
        assert last[k]["Sequence"] == out["sequence"][j] & 0xFF
    stats = ctrl.device_stats()["can"]["setpoints"]
    assert stats["claim"] == "held" and stats["frames_sent"] == len(sent) and stats["frames_refused"] == 0


def test_a_port_gets_a_frame_at_most_every_interval_but_0_w_at_once(bus):
    ctrl, listener = bus
    ctrl.run_steps(300, MS)
    listener.frames()
    ctrl.run_steps(100, MS)                           # ramping: the output moves every cycle
    per_port = [v["Port"] for _, v in setpoints(listener.frames())]
    assert 4 <= per_port.count(0) <= 6                # 100 ms at one per 20 ms
    assert ctrl.submit({"kind": "setpoint", "id": "z", "value_w": 0.0, "expires_in_s": 3600})
    ctrl.run_steps(2, MS)
    zero = setpoints(listener.frames())
    assert zero and all(v["PowerSetpoint"] == 0 for _, v in zero[-2:])


def test_a_request_for_address_claim_is_answered(bus):
    ctrl, listener = bus
    ctrl.run_steps(300, MS)
    listener.frames()
    listener.send((6 << 26) | (0xEA00 | 0xFF) << 8 | 0x80, bytes([0x00, 0xEE, 0x00]))
    ctrl.run_steps(3, MS)
    assert claims(listener.frames()) == [(ADDRESS, NAME)]


def test_a_contending_claim_with_a_higher_name_is_answered_and_the_address_kept(bus):
    ctrl, listener = bus
    ctrl.run_steps(300, MS)
    listener.frames()
    listener.send((6 << 26) | (0xEEFF << 8) | ADDRESS, (NAME + 1).to_bytes(8, "little"))
    ctrl.run_steps(30, MS)
    frames = listener.frames()
    assert claims(frames) == [(ADDRESS, NAME)] and setpoints(frames)
    assert ctrl.device_stats()["can"]["setpoints"]["claim"] == "held"


def test_a_lower_name_takes_the_address_and_the_ports_are_held_at_0_w(bus):
    ctrl, listener = bus
    ctrl.run_steps(300, MS)
    listener.frames()
    listener.send((6 << 26) | (0xEEFF << 8) | ADDRESS, (NAME - 1).to_bytes(8, "little"))
    ctrl.run_steps(30, MS)
    frames = listener.frames()
    assert claims(frames) == [(254, NAME)]            # "cannot claim", once
    assert setpoints(frames) == []
    snap = ctrl.snapshot()
    assert all(snap.port(p)["faults"] & 8 for p in ("m1.1", "m1.2"))       # link_down
    assert (snap.ports["max_w"][[ctrl.port_ids.index("m1.1"), ctrl.port_ids.index("m1.2")]] == 0).all()
    assert ctrl.device_stats()["can"]["setpoints"]["claim"] == "lost"


def test_the_stop_sends_0_w_and_contactor_open(bus):
    ctrl, listener = bus
    ctrl.run_steps(300, MS)
    listener.frames()
    ctrl.stop()
    last = {v["Port"]: v for _, v in setpoints(listener.frames())}
    assert set(last) == {0, 1}
    assert all(v["PowerSetpoint"] == 0 and v["ContactorClose"] == 0 for v in last.values())


def test_the_module_falls_to_0_w_by_its_own_timeout_when_frames_stop(bus):
    ctrl, listener = bus
    module = PowerModule(MODULE, 2)
    ctrl.run_steps(300, MS)
    t = ctrl.now_ns()
    for pgn, da, sa, data in listener.frames():
        module.receive((3 << 26) | (pgn | da) << 8 | sa, data, t)
    power, closed = module.output(0, t)
    assert power > 0 and closed
    # the controller goes silent (no stop, no frame): the module applies the timeout it was sent
    hold = ctrl.site.control.output_hold_s
    assert module.output(0, t + int((hold - 0.1) * S)) == (power, True)
    assert module.output(0, t + int((hold + 0.1) * S)) == (0.0, False)


def test_frames_the_bus_refuses_are_counted_per_port_and_the_cycle_never_waits():
    """Sim only (vcan never refuses): nobody drains the far end, so the socket fills."""
    site = config.parse(SITE.format(backend="sim", budget=64), "t.toml")
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    devices.can.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)     # the kernel's minimum
    ctrl.step(S)
    for pid in ("m1.1", "m1.2"):
        ev().publish(ctrl, pid, S)
    assert ctrl.submit({"kind": "setpoint", "id": "c", "value_w": 15_000.0, "expires_in_s": 3600})
    ctrl.run_steps(3000, MS)
    w = ctrl.device_stats()["can"]["setpoints"]
    refused = {p: n for p, n in ctrl.stats()["outputs_refused"].items() if p.startswith("m1.")}
    assert w["frames_refused"] > 0 and set(refused) == {"m1.1", "m1.2"}
    assert sum(refused.values()) == w["frames_refused"]
    assert ctrl.snapshot().cycle == 3001
    devices.close()


def test_config_names_what_a_can_link_needs():
    base = SITE.format(backend="sim", budget=64)
    cases = {
        base.replace(f"address = {ADDRESS}\n", ""): ("can", "address", "required"),
        base.replace(f"address = {ADDRESS}\n", f"address = {MODULE}\n"): ("can", "address", "can_address too"),
        base.replace("[control]\n", "[control]\noutput_hold_s = 30\n"): ("can", None, "at most 25"),
        base.replace(f"can_address = {MODULE}\n", ""): ("can", None, "no can_address"),
    }
    for text, (section, option, words) in cases.items():
        with pytest.raises(config.ConfigError) as e:
            config.parse(text, "t.toml")
        assert any(p.section == section and p.option == option and words in p.message for p in e.value.problems), \
            e.value.problems
    no_bus = base[:base.index("[can]")] + base[base.index("[node.e1]"):].replace("can_address", "# ")
    with pytest.raises(config.ConfigError) as e:
        config.parse(no_bus.replace("can_signal", "# "), "t.toml")
    assert any(p.section == "node.m1" and p.option == "link" for p in e.value.problems), e.value.problems


def test_safe_outputs_on_the_sim_bus_say_there_is_nothing_to_send():
    from v2g_rt.devices.can import safe_outputs
    site = config.parse(SITE.format(backend="sim", budget=64), "t.toml")
    assert "no physical bus" in safe_outputs(site)


@pytest.mark.skipif("socketcan" not in BACKENDS["can"], reason="a real bus: the kernel-test guest runs this")
def test_safe_outputs_without_a_controller_claim_and_send_0_w_on_the_bus():
    from v2g_rt.devices.can import safe_outputs
    site = config.parse(SITE.format(backend="socketcan", budget=64), "t.toml")
    rx = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    rx.bind(("vcan0",))
    assert "0 W and contactor open" in safe_outputs(site)
    frames = []
    while select.select([rx], [], [], 0.2)[0]:
        can_id, dlc, data = FRAME.unpack(rx.recv(FRAME.size))
        frames.append((*j1939_fields(can_id & 0x1FFFFFFF), data[:dlc]))
    rx.close()
    assert claims(frames) == [(ADDRESS, NAME)]
    last = {v["Port"]: v for _, v in setpoints(frames)}
    assert set(last) == {0, 1} and all(v["PowerSetpoint"] == 0 and v["ContactorClose"] == 0 for v in last.values())
