"""The far side of `v2g-rt calibrate` on a simulated site: the plant with a test box at every port.

The site's own sim far sides play the devices (the CAN bus, the I2C chips); the plant follows
the controller's outputs as ever, with a commissioning day's scenario: every port has a test
load that draws what it is given (single-phase, on the port's L1), the building's base load is
steady, no DMS command arrives. The grid meter is a SunSpec meter on loopback
(v2g_rt.sim.peers.modbus.MeterPeer) with per-phase power, read by calibrate through Modbus TCP
as it reads a site's real meter, and it feeds the controller's meter source as the site's does.

inject miswires the plant, as an installer might:
  reversed-ct     the meter's CTs point the wrong way: every reading has the wrong sign
  swapped-phases  at two ports (the first ports of the first two EVSEs) L1 and L2 are swapped
  dead-channel    a simulated analog channel: an SPI ADC input's wire cut (a 4-20 mA one first; else an I2C
                  sensor stuck): it reads the same, or nothing, whatever its reference says
  welded-contactor  the first GPIO-wired contactor's contacts weld: it closes, and never opens again

The far sides faster than a plant step (GPIO contactors, PLC modems, pwmchips and the pilots'
test boxes on the SPI ADC) act every PEER_POLL_S, with the I/O jobs: a pilot's CP voltage is
read every few ms and goes stale within pilot_max_age_s.
"""
from __future__ import annotations

from dataclasses import replace

from ..controller import Controller
from ..services.modbus import ModbusConfig
from ..modbus_maps import SUNSPEC
from ..site import PHASES, Site
from .drive import SIMULATE_PERIOD_S, plant_config
from .peers import attach
from .peers.modbus import MeterPeer
from .plant import FREE, Plant

S = 1_000_000_000
INJECTS = ("reversed-ct", "swapped-phases", "dead-channel", "welded-contactor")


def first_phase(phases: str) -> int:
    """The site phase (0 = L1) a port's L1 lands on when wired as configured."""
    return min(k for k in range(3) if PHASES[phases] >> k & 1)


class CommissioningPlant(Plant):
    """The plant whose meter is the SunSpec meter peer: per phase, the base load in thirds and each
    port's test load on the phase its L1 is wired to. No vehicle at a pilot: the test box is."""

    pilot_vehicles = False

    def __init__(self, site: Site, ctrl: Controller, t0_ns: int, devices, wiring: list[int], ct_sign: float,
                 meter: MeterPeer):
        base = plant_config(site)
        lo = base.base_load_w[0]
        cfg = replace(base, occupancy=1.0, arrivals_per_port_h=0.0, dwell_h=(48.0, 48.0), start_hour=0.0,
                      arrival_soc=(0.3, 0.5), base_load_w=(lo, lo), setpoint_schedule=((0.0, FREE),),
                      frequency_events=(), heatsink_faults=(), contactor_welds=(), plc_noise=(), dms_outages=(),
                      ocpp_stations=False)
        super().__init__(site, ctrl, cfg, t0_ns, devices)
        self.meter_source, self.meter = self.meter, None      # published below, through the CTs
        self.wiring, self.ct_sign, self.meter_peer = wiring, ct_sign, meter

    def publish(self, t_ns: int) -> None:
        super().publish(t_ns)
        phases = [self.base_w / 3] * 3
        for j, w in enumerate(self.power):
            phases[self.wiring[j]] += float(w)
        seen = [self.ct_sign * w for w in phases]
        self.meter_peer.set_power(sum(seen), tuple(seen))
        if self.meter_source:
            self.ctrl.measure(self.meter_source, sum(seen), t_ns)


class SimSite:
    """A simulated site in virtual time for calibrate: advance(seconds) lets the plant and the
    controller run; meter_config() says where its meter answers."""

    def __init__(self, site: Site, inject: str | None = None):
        if inject is not None and inject not in INJECTS:
            raise ValueError(f"inject {inject!r}: one of {', '.join(INJECTS)}")
        site = replace(site, period_s=max(site.period_s, SIMULATE_PERIOD_S))
        self.site = site
        self.ctrl = Controller(site, clock="virtual")
        self.devices = attach(self.ctrl, site)
        self.meter_peer = MeterPeer("sunspec", model=203, power_sf=1)
        try:
            self._miswire(inject)
            self.t = S
            self.ctrl.step(self.t)
            self.meter_peer.start()
            self.plant = CommissioningPlant(site, self.ctrl, self.t, self.devices, self.wiring,
                                            -1.0 if inject == "reversed-ct" else 1.0, self.meter_peer)
            self.plant.publish(self.t)
        except BaseException:
            self.close()
            raise
        cfg = self.plant.cfg
        self.cycles = max(1, round(cfg.step_s * S) // site.period_ns)
        self.plant.by_hand()

    def _miswire(self, inject: str | None) -> None:
        site = self.site
        self.wiring = [first_phase(site.node(p.evse).phases) for p in site.ports]
        if inject == "swapped-phases":
            firsts = {}
            for j, p in enumerate(site.ports):
                firsts.setdefault(p.evse, j)
            for j in list(firsts.values())[:2]:
                self.wiring[j] = {0: 1, 1: 0}.get(self.wiring[j], self.wiring[j])
        if inject == "dead-channel":
            adcs, sensors = self.devices.spi_peer, self.devices.i2c_peer
            analog = sorted((ch.kind != "4-20mA", src) for src, ch in (adcs.by_source.items() if adcs else ())
                            if ch.kind != "cp")            # a current loop first: its cut wire is NAMUR's wire break
            analog = [src for _, src in analog]
            if analog:
                adcs.cut(analog[0])
            elif sensors is not None and sensors.by_source:
                sensors.dead.add(next(iter(sensors.by_source)))
            else:
                raise ValueError("dead-channel: this site has no simulated analog channel (a sim [spi.NAME] or "
                                 "[i2c.NAME])")
        if inject == "welded-contactor":
            contactors = self.devices.gpio_peer.contactors if self.devices.gpio_peer else {}
            if not contactors:
                raise ValueError("welded-contactor: this site has no simulated GPIO contactor (sim [gpio.NAME] lines)")
            contactors[next(p.id for p in site.ports if p.id in contactors)].weld()

    def now_ns(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        """At least `seconds` of virtual time, in plant steps."""
        end = self.t + round(seconds * S)
        while self.t < end:
            self.t = self.plant.step_virtual(self.t, self.cycles)

    def meter_config(self) -> ModbusConfig:
        root = next(n.id for n in self.site.nodes if n.parent is None)
        return ModbusConfig("sim-meter", "meter", "127.0.0.1", self.meter_peer.port, 1, SUNSPEC, SUNSPEC, 0.1, root)

    def close(self) -> None:
        self.meter_peer.stop()
        self.devices.close()

