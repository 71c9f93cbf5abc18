"""Microbenchmarks (pytest-benchmark): the cycle at 50 and 256 ports, a snapshot read.

    pytest bench --benchmark-enable --benchmark-json=bench/micro.json

Timing one call of run_steps(CYCLES) amortises the Python call; extra_info has
the cost per cycle. In the test suite these run once each, as smoke tests.
"""
import pytest

from helpers import S, ev, make_site
from v2g_rt import Control, Controller

CYCLES = 1000


def loaded(ports: int) -> Controller:
    """A site with every port occupied, limits that bind and a discharge setpoint."""
    c = Controller(make_site(ports, control=Control(port_ramp_w_per_s=50_000.0, session_max_age_s=1e6)),
                   clock="virtual")
    c.step(S)
    for i, pid in enumerate(c.port_ids):
        ev(soc=0.3 + 0.6 * (i % 10) / 10, departure_in_s=3600 * (2 + i % 9), v2g=i % 3 != 0).publish(c, pid, S)
    c.submit({"kind": "setpoint", "id": "bench", "value_w": -2_000.0 * ports, "expires_in_s": 6 * 86400})
    c.run_steps(100)
    return c


@pytest.mark.parametrize("ports", [50, 256])
def test_cycle(benchmark, ports):
    c = loaded(ports)
    benchmark.extra_info["cycles_per_call"] = CYCLES
    benchmark.pedantic(c.run_steps, args=(CYCLES,), rounds=20, warmup_rounds=2)
    if benchmark.stats:
        per_cycle_us = benchmark.stats.stats.median / CYCLES * 1e6
        benchmark.extra_info["median_us_per_cycle"] = round(per_cycle_us, 3)
        print(f"\ncycle, {ports} ports: {per_cycle_us:.2f} us median")
    assert c.snapshot().site["fleet_w"] < 0


def test_snapshot_read(benchmark):
    c = loaded(256)
    snap = benchmark(c.snapshot)
    assert len(snap.ports) == 256 and (snap.ports["cycle"] == snap.cycle).all()


@pytest.mark.parametrize("ports", [50, 256])
def test_arbitrate_call(benchmark, ports):
    """One v2g_rt.arbitrate() call: validation, the scratch image, interlock and arbitration."""
    import numpy as np
    import v2g_rt

    p = v2g_rt.new_ports(ports)
    i = np.arange(ports)
    p["connected"] = i % 5 != 0
    p["soc"] = 0.2 + 0.7 * (i % 10) / 10
    p["capacity_wh"] = 60_000
    p["energy_request_wh"] = 10_000 + 1_000 * (i % 13)
    p["departure_s"] = 3600 * (1 + i % 9)
    p["max_charge_w"] = 11_000
    p["max_discharge_w"] = 11_000
    p["v2g"] = i % 3 != 0
    w = benchmark(v2g_rt.arbitrate, p, 0.0, import_limit_w=3_000.0 * ports, export_limit_w=2_000.0 * ports,
                  setpoint_w=2_500.0 * ports)
    assert w.sum() == pytest.approx(2_500.0 * ports)


@pytest.mark.parametrize("frames", [0, 50])
def test_cycle_draining_can_frames(benchmark, frames):
    """One cycle of the 50-port site that drains and decodes `frames` J1939 frames (sim CAN backend):
    the difference between the two is the cost of 50 frames."""
    from dataclasses import replace

    from v2g_rt import config
    from v2g_rt.sim.peers import attach
    from v2g_rt.devices.can import CAN_EFF_FLAG

    site = config.load()
    site = replace(site, rt=replace(site.rt, priority=0, lock_memory=False),
                   control=replace(site.control, session_max_age_s=1e6))
    c = Controller(site, clock="virtual")
    devices = attach(c, site)
    c.step(S)
    for i, pid in enumerate(c.port_ids):
        ev(soc=0.3 + 0.6 * (i % 10) / 10, departure_in_s=3600 * (2 + i % 9)).publish(c, pid, S)
    evses = [n for n in site.nodes if n.can_address is not None]
    frame = bytes([0x00, 0x27, 100, 101, 65, 0, 0, 0])

    def send():
        for k in range(frames):
            devices.can_peer.send_raw((0x18FF1000 | evses[k % len(evses)].can_address) | CAN_EFF_FLAG, frame)

    benchmark.pedantic(c.run_steps, args=(1,), setup=send, rounds=300, warmup_rounds=5)
    can = c.device_stats()["can"]
    assert can["decoded"] == can["frames"] and can["budget_full"] == 0
    devices.close()
