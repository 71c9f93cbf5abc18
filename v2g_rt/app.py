"""A controller assembled from a site: the loop, its devices, the services around it, and the
simulated plant when the site's EVSEs are simulated. `v2g-rt run` builds one, polls it once a
second and stops it."""
from __future__ import annotations

import logging

from .controller import Controller
from .devices import attach
from .faults import FaultWatch, audit_path, journal_path, schedule_path
from .services import Supervisor
from .services.control import AuditLog, ControlServer
from .services.journal import JournalService
from .services.modbus import ModbusService
from .services.schedule import ScheduleService
from .services.mqtt import MqttService
from .services.ocpp import OcppService
from .services.planner import Planner
from .services.status import StatusServer, control_socket, default_socket
from .services.watchdog import HardwareWatchdog, Watchdog, notify, watchdog_interval_s
from .sim.peers import PEERS
from .site import Site

log = logging.getLogger("v2g_rt")


def simulated(site: Site) -> bool:
    """Some EVSE's far side is the simulated plant: link = "sim", "can" on the sim bus, or "pwm"
    with a simulated pwmchip (the plant's vehicles plug into its pilot)."""
    can = site.sections.get("can")
    pilots = any(cfg.backend == "sim" for cfg in site.sections.get("pwm") or ())
    return any(n.link == "sim" or (n.link == "can" and can and can.backend == "sim") or (n.link == "pwm" and pilots)
               for n in site.nodes)


class App:
    """Built before the loop runs (devices opened, latched faults restored); start() runs it,
    poll() watches it, stop() stops it with the outputs safe and the journal written last."""

    def __init__(self, site: Site):
        from .sim.drive import RealtimePlant

        self.site = site
        self.ctrl = Controller(site)
        self.devices = attach(self.ctrl, site, peers=PEERS)             # DeviceError: nothing else was opened
        self.supervisor = Supervisor()
        self.journal = self.supervisor.add(JournalService(self.ctrl, journal_path(site)))   # restores now
        self.schedule = self.supervisor.add(ScheduleService(self.ctrl, schedule_path(site)))  # submits again now
        self.faults = FaultWatch(self.ctrl)
        self.plant = RealtimePlant(site, self.ctrl, self.devices) if simulated(site) else None
        self.watchdog: Watchdog | None = None
        self.ocpp_depot = None                 # simulated OCPP stations ([sim] ocpp_stations)

    def start(self, logfile) -> dict:
        """Start the loop, then the services and the plant; the loop's RT report."""
        site, ctrl = self.site, self.ctrl
        rt = ctrl.start()
        self.supervisor.start()
        log.info("site %s (%s): %d ports, period %g ms, %s priority %d%s, log %s", site.name, site.source,
                 len(site.ports), site.period_s * 1e3, rt["policy"], rt["priority"],
                 ", PREEMPT_RT" if rt["preempt_rt"] else "", logfile)
        try:
            self.supervisor.add(StatusServer(ctrl, default_socket(site), self.supervisor.health))
        except OSError as e:
            log.warning("ERR_STATUS_UNAVAILABLE: status socket not served: %s", e)
        try:
            self.supervisor.add(ControlServer(ctrl, self.journal, control_socket(site), AuditLog(audit_path(site))))
        except OSError as e:
            log.warning("ERR_CONTROL_UNAVAILABLE: control socket not served (no operator resets): %s", e)
        if site.sections.get("modbus"):
            self.supervisor.add(ModbusService(ctrl, site.sections["modbus"]))
        if site.sections.get("mqtt"):
            self.supervisor.add(MqttService(ctrl, site.sections["mqtt"]))
        if site.sections.get("planner") and site.sections["planner"].enabled:
            self.supervisor.add(Planner(ctrl, site.sections["planner"]))
        ocpp = self.supervisor.add(OcppService(ctrl, site.sections["ocpp"])) if site.sections.get("ocpp") else None
        self.supervisor.start()
        if self.plant:
            self.plant.start()
        sim = site.sections.get("sim")
        if ocpp is not None and sim is not None and sim.ocpp_stations:
            from .sim.peers.ocpp import SimDepot
            self.ocpp_depot = SimDepot(site, ocpp.port)
        interval = watchdog_interval_s()
        if interval or site.rt.watchdog_device:
            hardware = None
            if site.rt.watchdog_device:
                try:
                    hardware = HardwareWatchdog(site.rt.watchdog_device, site.rt.watchdog_timeout_s)
                except OSError as e:
                    log.error("ERR_WATCHDOG: cannot open %s: %s", site.rt.watchdog_device, e.strerror)
            period = interval or site.rt.watchdog_timeout_s / 4
            self.watchdog = self.supervisor.add(Watchdog(ctrl, min(period, site.rt.watchdog_timeout_s / 4), hardware,
                                                         site.control.overrun_streak_safe))
            self.supervisor.start()
        notify(f"READY=1\nSTATUS=running {len(site.ports)} ports, {rt['policy']}")
        return rt

    def poll(self) -> None:
        """About once a second: the plant's failure (raised), faults, the wall clock, the services."""
        if self.plant and self.plant.error:
            raise self.plant.error
        self.faults.poll()
        self.ctrl.check_wall_clock()
        self.supervisor.check()

    def stop(self, hard: bool = False) -> None:
        """Watchdog first (a clean stop disarms it), then the loop (0 W, each contactor opened as
        its current falls, reported by the plant while it still runs; hard: at once), the plant,
        the journal's last write, the devices, the sockets."""
        notify("STOPPING=1")
        if self.watchdog:
            self.supervisor.stop(self.watchdog)
        self.ctrl.stop(hard)
        if self.plant:
            self.plant.stop()
        self.supervisor.stop(self.journal)     # the last write, after the loop's last latch
        self.supervisor.stop(self.schedule)
        self.devices.close()
        self.supervisor.stop()
        if self.ocpp_depot:                    # simulated stations outlive us, as real ones do
            self.ocpp_depot.stop()
