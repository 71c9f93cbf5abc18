"""The native I/O thread's schedule with 8 I2C sensors and 8 SPI ADC channels, and the SPI
conversion's cost.

    python bench/io_schedule.py [--seconds 3] [--period-ms 10] [--json bench/results/io-schedule.json]

1. The real-time I/O thread (normal priority) runs 8 I2C and 8 SPI jobs, each every
   --period-ms. No bus is here (no guest has an SPI controller, and i2c-stub lives in the
   kernel-test guest): each job's fd is /dev/null, so each transfer is its real ioctl
   (I2C_RDWR, SPI_IOC_MESSAGE) refused at once with ENOTTY. What is measured is the schedule
   itself: a pass's time, a job's cost (the syscall and the bookkeeping: a lower bound on a
   transfer, to which a real bus adds its wire time, e.g. ~0.3 ms for a 3-byte register read
   at 100 kHz, ~1.1 ms for a 40-sample CP burst), and the periods achieved against the ones asked.
2. The same 16 channels as sim backends served on the Python side (the packaged site's way),
   each read through its far side: the cost of one read.
3. The native conversion of an SPI read (spi_convert), per kind.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

from v2g_rt import _core, config
from v2g_rt.bench import write_results
from v2g_rt.controller import Controller
from v2g_rt.devices.i2c import SENSORS, I2cConfig, ServedBus, ServedSensor, lsb
from v2g_rt.devices.spi import ServedAdcs, ServedChannel, SpiChannelConfig
from v2g_rt.sim.peers.i2c import SimI2cBus
from v2g_rt.sim.peers.spi import SimAdcs

N = 8


def site(n_evses: int):
    text = ('[site]\nname = "io-bench"\nperiod_ms = 1.0\n[rt]\npriority = 0\nlock_memory = false\n'
            'cpu_dma_latency_us = -1\n[node.grid]\nkind = "grid"\nimport_limit_w = 1e6\nexport_limit_w = 1e6\n')
    text += "".join(f'[node.e{k}]\nkind = "evse"\nparent = "grid"\nport_max_charge_w = 11000\n'
                    f'heatsink_derate_c = [70, 90]\nheatsink_max_age_s = 60\n' for k in range(n_evses))
    return config.parse(text, "io-bench.toml")


def i2c_config(k: int, period_s: float) -> I2cConfig:
    return I2cConfig(f"t{k}", "sim", 1, 0x48 + k, "tmp117", "temperature", f"node/e{k}/heatsink_c", period_s)


def spi_config(k: int, period_s: float) -> SpiChannelConfig:
    return SpiChannelConfig("adc", f"c{k}", k, "4-20mA", f"node/e{N + k}/heatsink_c", 250.0, -40.0, 160.0, 1.0, 0.0,
                            4, period_s)


def native(seconds: float, period_s: float) -> dict:
    ctrl = Controller(site(2 * N))
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        for k in range(N):
            reg = SENSORS["tmp117"]["temperature"]
            ctrl.add_i2c_sensor(fd, 0x48 + k, 0, reg.reg, reg.nbytes, reg.decode, f"node/e{k}/heatsink_c",
                                reg.scale, period_s)
            ctrl.add_spi_channel(fd, spi_config(k, period_s), 1_000_000)
        ctrl.start()
        time.sleep(seconds)
        ctrl.stop()
        sched = ctrl.io_schedule_stats()
    finally:
        os.close(fd)
    out = {"passes": sched["passes"], "pass_mean_us": sched["pass_mean_s"] * 1e6, "pass_max_us": sched["pass_max_s"] * 1e6}
    for kind in ("i2c", "spi"):
        jobs = [j for j in sched["jobs"] if j["kind"] == kind]
        out[kind] = {"jobs": len(jobs), "runs": sum(j["runs"] for j in jobs),
                     "cost_mean_us": statistics.fmean(j["cost_mean_s"] for j in jobs) * 1e6,
                     "cost_max_us": max(j["cost_max_s"] for j in jobs) * 1e6,
                     "period_asked_ms": period_s * 1e3,
                     "period_mean_ms": statistics.fmean(j["period_mean_s"] for j in jobs) * 1e3,
                     "period_max_ms": max(j["period_max_s"] for j in jobs) * 1e3,
                     "skipped": sum(j["skipped"] for j in jobs)}
    return out


def served(reads: int) -> dict:
    """The Python side's cost per read of a sim sensor, through its far side."""
    i2c_bus, adcs = ServedBus(), ServedAdcs()
    i2c_cfgs = [i2c_config(k, 0.01) for k in range(N)]
    spi_cfgs = [spi_config(k, 0.01) for k in range(N)]
    far_i2c, far_spi = SimI2cBus(i2c_cfgs), SimAdcs(spi_cfgs)
    i2c_bus.plug(far_i2c.transfer)
    adcs.plug(far_spi.transfer)
    sink = []
    write = lambda value, t_ns: sink.append(value) or 0     # noqa: E731 - the gate's place
    i2c_bus.sensors = [ServedSensor(c, SENSORS["tmp117"]["temperature"], lsb(c), write) for c in i2c_cfgs]
    adcs.sensors = [ServedChannel(c, write, None) for c in spi_cfgs]
    out = {}
    for name, served_ in (("i2c", i2c_bus), ("spi", adcs)):
        t0 = time.perf_counter_ns()
        for k in range(reads):
            s = served_.sensors[k % N]
            s.read(served_.transfer, k)
        out[name] = {"read_us": (time.perf_counter_ns() - t0) / reads / 1e3, "reads": reads}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--period-ms", type=float, default=10.0)
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    results = {"native_io_thread": native(args.seconds, args.period_ms / 1e3),
               "served_python_side": served(args.reads),
               "spi_convert_ns": {f"{kind} x{n}": _core.spi_convert_cost_ns(kind, n, 200_000)
                                  for kind, n in (("4-20mA", 1), ("4-20mA", 4), ("0-10V", 4), ("cp", 40))}}
    nat = results["native_io_thread"]
    print(f"native I/O thread, {N} I2C + {N} SPI jobs every {args.period_ms:g} ms for {args.seconds:g} s: "
          f"{nat['passes']} passes, mean {nat['pass_mean_us']:.1f} us, max {nat['pass_max_us']:.1f} us")
    for kind in ("i2c", "spi"):
        j = nat[kind]
        print(f"  {kind}: {j['runs']} runs, cost mean {j['cost_mean_us']:.2f} us max {j['cost_max_us']:.1f} us; "
              f"period asked {j['period_asked_ms']:g} ms, achieved mean {j['period_mean_ms']:.3f} max "
              f"{j['period_max_ms']:.3f} ms, skipped {j['skipped']}")
    for kind, r in results["served_python_side"].items():
        print(f"served on the Python side (sim backend), {kind}: {r['read_us']:.1f} us per read")
    for what, ns in results["spi_convert_ns"].items():
        print(f"spi_convert {what}: {ns:.1f} ns")
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
