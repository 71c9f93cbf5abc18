"""The ERR_* catalogue: every error the controller reports, with meaning, likely cause and remedy.

`v2g-rt explain ERR_...` prints an entry; log lines and rejections carry the code.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: str
    meaning: str
    cause: str
    remedy: str


_ENTRIES = [
    # configuration
    ("ERR_CONFIG_SYNTAX", "The site config file is not valid TOML.",
     "A typo: missing quote, bracket or '='.", "Fix the line the message names; `v2g-rt check FILE`."),
    ("ERR_CONFIG_UNREADABLE", "The site config file cannot be read.",
     "Wrong path, missing file or no read permission.", "Check the path and the file's permissions."),
    ("ERR_CONFIG_FILE", "The site config path is not a regular file of at most 1 MiB; it was not read.",
     "A FIFO, device (/dev/zero), directory or another wrong path given as the config, or a file far "
     "larger than any site needs.",
     "Pass the site's TOML file itself; `v2g-rt check FILE` accepts it when it is a regular file under 1 MiB."),
    ("ERR_CONFIG_VALUE", "An option has the wrong type or is outside its range.",
     "A unit mistake (kW for W, ms for s) or a typo.",
     "Set the option to a value inside the range the message gives."),
    ("ERR_CONFIG_UNKNOWN_OPTION", "An option or section is not known.",
     "A misspelt name, an option of another section, or a name this version renamed.", "Use one of the names the message suggests."),
    ("ERR_CONFIG_TOPOLOGY", "The node hierarchy is not a tree rooted at one grid connection.",
     "A missing or misspelt parent, a cycle, a duplicate id or a port on a non-EVSE node.",
     "Give every node an existing parent so that all paths end at the single grid node."),
    ("ERR_CONFIG_CAPACITY", "The site exceeds a compiled capacity (ports, nodes, sources, depth).",
     "A site larger than the build supports.",
     "Split the site over several controllers, or rebuild with larger capacities in native/image.pxd."),
    ("ERR_CONFIG_DEVICE", "A device (CAN signal, I2C sensor, SPI channel, PWM pilot) is wired to a source it cannot feed, or two "
     "EVSEs share one J1939 source address.",
     "A source that does not exist on the site or is of another kind (a temperature sensor on a power "
     "source), an upstream heartbeat, a source another device feeds too, or a copied can_address.",
     "Point the device at a source of its kind listed in the message; give each source one device and "
     "each EVSE its own can_address."),
    # commands
    ("ERR_CMD_UNKNOWN_KIND", "A command of a kind the controller does not know was rejected.",
     "A client speaking another protocol version, or a typo.",
     "Send one of: setpoint, export_limit, import_limit, load_shed, cancel, reset_fault."),
    ("ERR_CMD_BAD_FIELD", "A command field is missing, of the wrong type, not finite or out of range.",
     "A client bug or a unit mistake.", "Fix the field the message names."),
    ("ERR_CMD_BAD_PORT", "A command names a port that does not exist.",
     "Port ids differ between the DMS/CSMS and this site's config.",
     "Use a port id from `v2g-rt status`."),
    ("ERR_CMD_EXPIRED", "A command arrived after its expiry and was not applied.",
     "Clock skew between sender and controller, or a delayed network path.",
     "Check NTP on both ends; send commands with a longer expiry."),
    ("ERR_CMD_REPLAYED", "A command id was seen before; the repeat was ignored (commands are idempotent).",
     "A retransmission; harmless.", "None needed; give new commands new ids."),
    ("ERR_CMD_QUEUE_FULL", "The command queue to the real-time loop is full; the command was not applied.",
     "A sender flooding commands faster than the loop drains them (256 per cycle).",
     "Throttle the sender; only the latest setpoint matters."),
    ("ERR_CMD_SCHEDULE_FULL", "The loop already holds its maximum of future commands of this kind (192 per "
     "kind); the scheduled command was not accepted.",
     "A sender announcing more windows ahead than the queue holds, or a cancel not yet taken by the loop.",
     "Send fewer windows ahead (the next ones when earlier ones have started), or cancel queued ones "
     "(`v2g-rt status` lists them)."),
    ("ERR_SCHEDULE_JOURNAL", "The file of scheduled grid commands cannot be read or written.",
     "A full or read-only state directory, or a file that is not one this version wrote.",
     "Check the state directory (free space, permissions); the file's commands are not applied until it "
     "is readable; resend the schedule."),
    ("ERR_CMD_TOO_MANY_IDS", "Too many unexpired command ids are remembered to check new ones for replay.",
     "A sender using very long expiries at a high rate.", "Use shorter expiries or fewer commands."),
    # measurements
    ("ERR_MEAS_UNKNOWN_SOURCE", "A measurement names a source the site does not have.",
     "A service configured for another site, or a typo.", "Use a source listed by Controller.sources."),
    ("ERR_MEAS_BAD_VALUE", "A measurement value is not finite or is outside the physical range of its kind.",
     "A sensor fault, a unit mistake or a decoding bug.", "Check the device and the scaling of the value."),
    ("ERR_MEAS_FUTURE", "A measurement is stamped later than the controller's clock and was rejected.",
     "Wall-clock time used where CLOCK_MONOTONIC is required, or a clock bug in the producer.",
     "Stamp measurements with time.monotonic_ns() (or the virtual time of the simulation)."),
    ("ERR_MEAS_OUT_OF_ORDER", "A measurement is older than the value the source already holds and was ignored.",
     "Two producers for one source, or reordered delivery.", "Give each source one producer."),
    ("ERR_MEAS_TOO_OLD", "A measurement is older than its source's max age: it could never be used, and was rejected.",
     "A producer replaying old data, a clock far behind, or a timestamp such as NaT (-2^63).",
     "Stamp measurements with time.monotonic_ns() when they are taken, and send them at once."),
    ("ERR_MEAS_BAD_TIME", "A measurement's timestamp is not an integer of ns in the int64 range.",
     "A float, a string or a missing-value marker passed as t_ns.",
     "Pass t_ns as an int on the controller clock (time.monotonic_ns()), or leave it out for now."),
    ("ERR_CLOCK_UNSYNCED", "A command with a wall-clock expiry (expires_at) arrived before the system clock was synchronised.",
     "A board without an RTC that has not reached its NTP server yet (the clock may be years off).",
     "Check `timedatectl` / `chronyc tracking` and the NTP server's reachability; meanwhile send expires_in_s."),
    ("ERR_CLOCK_STEPPED", "The system clock stepped; commands with wall-clock expiries were re-anchored to it.",
     "NTP's first synchronisation, a manual `date -s`, or a leap correction.",
     "Nothing if the step was expected; otherwise find who sets the clock (chrony makestep, timesyncd)."),
    ("ERR_MEAS_DEVICE_OWNED", "A measurement was sent for a source the native core reads from a device itself.",
     "A service and a CAN/I2C device configured for the same source.", "Feed each source from one place."),
    ("ERR_DEVICE_MISSING", "A device (CAN interface, /dev/i2c-N, /dev/spidevB.C, a pwmchip, a sensor) cannot be opened or does not answer.",
     "Kernel module not loaded, device tree, udev permissions, wiring or address.",
     "Follow the remedy in the message (modprobe, udev rule in hw/udev, group membership, i2cdetect)."),
    ("ERR_GPIO_LINE", "A GPIO contactor line cannot be requested, or its line request failed while running.",
     "No such chip or line (label, offset or name), the line is held by another consumer (gpioinfo shows "
     "which), no permission on /dev/gpiochipN, a feedback line without an interrupt, or the chip went away.",
     "Check [gpio.NAME] chip and line against `gpioinfo`; release the line (a sysfs export, another "
     "service); add the service user to group gpio (hw/udev/90-v2g-rt.rules); wire feedback to an "
     "interrupt-capable line. A feedback line that fails goes stale and a closed contactor is latched off."),
    ("ERR_GPIO_BOUNCE", "A contactor feedback edge was undone within debounce_ms: counted as a bounce, never data.",
     "Auxiliary contact bounce longer than debounce_ms, a loose wire, or interference on the feedback line.",
     "Raise [gpio.NAME] debounce_ms a little above the contact's bounce time (datasheet, 1-10 ms typical); "
     "a count that keeps rising with a steady contactor means wiring to check."),
    ("ERR_SPI_TRANSFER", "An SPI ADC transfer failed (SPI_IOC_MESSAGE errno); the channel's value goes stale.",
     "A stuck SPI controller (ETIMEDOUT), a chip that does not answer, or the device node gone.",
     "Check the ADC's supply, chip select and wiring; `dmesg` for the SPI controller's errors."),
    ("ERR_SPI_WIRE_BREAK", "A 4-20 mA input reads at or below 3.6 mA (NAMUR NE 43): the value stays stale.",
     "A broken loop wire, a dead transmitter or its lost supply.",
     "Check the loop: wiring, the transmitter's supply, the shunt ([spi.NAME.channel.N] shunt_ohms)."),
    ("ERR_SPI_OVER_RANGE", "An analog input reads over its range (4-20 mA at or above 21.0 mA, NAMUR NE 43; "
     "0-10 V above 11 V): the value stays stale.",
     "A transmitter signalling its own fault, a short, or a wrong shunt, divider or range setting.",
     "Check the transmitter's diagnostics and the channel's shunt_ohms / divider / range."),
    ("ERR_CP_BETWEEN_STATES", "A control pilot voltage lies between two IEC 61851 states; it was not taken as either.",
     "A bad CP contact, a cable or EV outside the standard's tolerances, or a wrong divider or calibration.",
     "Measure the CP high level (A 12, B 9, C 6, D 3 V, +-1 V); check the divider and `v2g-rt calibrate`."),
    ("ERR_PILOT_STATE", "A direct-wired port's control pilot is in state E or F, or its voltage is stale: "
     "the port is stopped (no PWM, contactor open).",
     "CP shorted to PE or no pilot supply (E), the EVSE signalling unavailable (F), or the ADC channel "
     "that samples the CP failing.", "Check the pilot circuit and cable; see the SPI channel's own errors."),
    ("ERR_CP_NO_DIODE", "The pilot's PWM never reaches -12 V: the vehicle's diode is missing or shorted; "
     "the port is stopped until the vehicle leaves (state A).",
     "A faulty EV inlet or cable, a test box without its diode, or a CP shorted to a positive level.",
     "Unplug; check the vehicle or test box; IEC 61851-1 requires the diode before any current is offered."),
    ("ERR_PWM_WRITE", "A PWM sysfs write was refused or its file is missing; the pilot keeps its previous duty "
     "and the write is retried.",
     "Channel not exported or unexported by someone else, permissions (udev), a duty above the period, "
     "or the pwmchip's driver refusing the value.",
     "Check /sys/class/pwm/pwmchipN/pwmM (exported, writable by the service user: hw/udev) and [pwm.NAME]."),
    ("ERR_PWM_READBACK", "The duty the PWM chip reports differs from the duty written (by more than 0.1 % of the "
     "period); period, duty and enable are written again.",
     "Another process writing the channel, a driver that rounds more coarsely than 0.1 %, or a chip reset.",
     "Make sure nothing else drives the channel; compare with a logic analyzer (`v2g-rt calibrate`)."),
    ("ERR_CAN_BUS_OFF", "The CAN controller went bus-off; J1939 temperatures are stale and the interlock derates.",
     "Wiring, termination or bitrate mismatch.", "Check termination (120 ohm at both ends) and the bitrate."),
    ("ERR_PLC_ATTENUATION", "A port's PLC signal attenuation (the average of the groups of the SLAC stack's last "
     "CM_ATTEN_CHAR.IND) is above [plc.NAME] attenuation_limit_db. A warning: the port keeps charging; if the link "
     "degrades further its packet loss stops the port (ERR_ISO_TIMEOUT).",
     "A long or unshielded charging cable run, a poor coupling of the modem to CP/PE, or noise on the site's mains.",
     "Shield the CP line and the modem's coupling, shorten the run, or add a PLC repeater; `v2g-rt status` shows each "
     "port's attenuation."),
    ("ERR_PLC_BAD_MME", "A PLC modem's interface carried a management message of the wrong MMV, type or length, or "
     "from a station other than the modem; it was counted and ignored.",
     "Another HomePlug tool on the interface, a modem firmware with another message layout, or a corrupted frame.",
     "`v2g-rt status` counts them per kind and port; check [plc.NAME] mac and what else runs on the interface "
     "(tcpdump -i IF ether proto 0x88e1)."),
    # commissioning (v2g-rt calibrate)
    ("ERR_CALIBRATION_ANSWER", "An answer to a calibration question was refused (out of range, wrong type, "
     "missing, or for a step this site does not have); nothing was written.",
     "A typo or unit mistake in the --answers file, or an answers file written for another site.",
     "Give the value in the range and unit the message names, keyed by the step id `v2g-rt calibrate` shows."),
    ("ERR_CALIBRATION_CAN_SILENT", "A configured J1939 address was not heard on the CAN bus during calibration, "
     "or the controller could not hold its own address.",
     "The EVSE's power module is off, its address differs from can_address, or the bus wiring/bitrate is wrong.",
     "Check the module's address and power, termination and bitrate (`candump can0`)."),
    ("ERR_CALIBRATION_IDENTITY", "A chip does not identify as the configured sensor (identity register).",
     "Wrong address (another chip answers there) or the wrong part fitted.",
     "Check the address (`i2cdetect`) and the part; fix [i2c.NAME] address or sensor."),
    ("ERR_CALIBRATION_DEAD_CHANNEL", "An analog channel does not follow its reference signal: its reading stays "
     "put (or never arrives) between the zero and the span reference.",
     "Open or shorted sensor wiring, a failed sensor or front end, or the reference applied to another channel.",
     "Check the sensor's wiring and supply, then calibrate again."),
    ("ERR_CALIBRATION_SPAN", "An analog channel's zero offset or gain against the references is outside tolerance.",
     "The wrong sensor range or divider configured, a damaged sensor, or a reference read wrongly.",
     "Check the channel's configured range/scale and the reference; replace the sensor if it persists."),
    ("ERR_CALIBRATION_DUTY", "The pilot's PWM duty read back from sysfs, or measured by the engineer's logic "
     "analyser, differs from the map's duty for the commanded current by more than one pilot quantum (or none was "
     "read back).",
     "A wrong PWM channel or period, a driver that does not take the duty, or an output stage that distorts the pilot.",
     "Check the PWM chip/channel and period in the config and the pilot circuit."),
    ("ERR_CALIBRATION_PILOT", "A direct-wired port's control pilot was not in the state a calibration step needs: "
     "state C from a test box the engineer confirms (the PWM duty and contactor steps), never a vehicle.",
     "No test box plugged in or not set to C, a vehicle connected, a latched port fault, or the CP's SPI channel "
     "miswired (channel, divider).",
     "Plug the test box (EV simulator) in, set it to state C and confirm it; clear the port fault the message names; "
     "check the pilot circuit and its [spi.NAME] cp channel."),
    ("ERR_CALIBRATION_CONTACTOR", "A contactor's feedback did not follow its command during calibration, or "
     "the precondition (no vehicle: on a pilot's port a test box in state C the engineer confirms) was not met.",
     "Feedback wiring, a welded or stuck contactor, or a vehicle connected.",
     "Unplug the vehicle (or connect the test box), check the auxiliary contact wiring, calibrate again."),
    ("ERR_CALIBRATION_CT_REVERSED", "The grid meter reads an import as an export: its current transformer(s) "
     "are mounted the wrong way round (or its sign convention is export-positive).",
     "CT arrow towards the grid instead of the load, or CT leads swapped.",
     "Turn the CT(s) round (arrow towards the load) or swap the leads; calibration never corrects this in software."),
    ("ERR_CALIBRATION_METER", "The grid meter did not see a port's test charge, or the port did not take it.",
     "The port is not downstream of the meter, no test load or vehicle at the port, or the meter is not read.",
     "Connect the test box to the port, check the meter's wiring and its [modbus.NAME] section."),
    ("ERR_CALIBRATION_PHASE", "A port's test charge appears on another site phase than the config says.",
     "Phases swapped at the EVSE's terminals or its supply; or the config's phases is wrong.",
     "Rewire the port to the configured phase, or correct [node.ID] phases, then calibrate again."),
    ("ERR_CALIBRATION_FILE", "The calibration file is not a calibration of this site (syntax, shape, or stale).",
     "Hand-edited or damaged file, or the site config changed since `v2g-rt calibrate` wrote it.",
     "Run `v2g-rt calibrate` again for this site config, or fix the file/section/option the message names."),
    ("ERR_CALIBRATION_INTERRUPTED", "Calibration stopped before the end (Ctrl-C, SIGTERM, or a step that could "
     "not run); the previous calibration file is left as it was.",
     "The engineer stopped it, the service manager stopped it, or a device failed mid-step.",
     "Run `v2g-rt calibrate` again once the cause is fixed."),
    # real time
    ("ERR_RT_PRIORITY", "The loop could not get SCHED_FIFO; it runs at normal priority with worse jitter.",
     "Missing CAP_SYS_NICE and RLIMIT_RTPRIO below the requested priority.",
     "Run under the provided systemd unit (LimitRTPRIO=, CPUSchedulingPolicy=fifo) or as root."),
    ("ERR_RT_MEMLOCK", "mlockall failed; page faults can stall the loop.",
     "RLIMIT_MEMLOCK too small and no CAP_IPC_LOCK.", "Set LimitMEMLOCK=infinity in the systemd unit."),
    ("ERR_RT_AFFINITY", "The loop could not be pinned to the requested CPU.",
     "The CPU does not exist or is outside the process's allowed set (cgroup cpuset, taskset).",
     "Choose a CPU from /sys/fs/cgroup/cpuset.cpus.effective or `nproc --all`."),
    ("ERR_RT_PM_QOS", "The CPU wake-up latency request (/dev/cpu_dma_latency) could not be made; "
     "deep C-states may add latency.", "No write permission on /dev/cpu_dma_latency (root only by default).",
     "Run as root or grant access with a udev rule (hw/udev); or set [rt] cpu_dma_latency_us = -1 to skip it."),
    ("ERR_LOOP_UNHEALTHY", "The loop stalled or overran repeatedly; the watchdogs are no longer fed.",
     "CPU starvation, a kernel problem, or a bug that blocks the loop.",
     "Check `v2g-rt status` and the log; systemd (WatchdogSec) or the hardware watchdog restarts the service."),
    ("ERR_WATCHDOG", "The hardware watchdog device could not be opened or configured.",
     "Wrong [rt] watchdog_device, no permission, or a driver without WDIOC_SETTIMEOUT.",
     "Check the device node and the udev rule in hw/udev; the kernel module (e.g. imx2_wdt, softdog)."),
    ("ERR_PLANNER_FAILED", "The horizon planner's solve overran its time budget and its worker process was "
     "killed, or the worker died; the loop arbitrates without guidance once the last guidance expires.",
     "A horizon too long or too finely stepped for the machine, a starved CPU, or the worker killed (OOM).",
     "Raise [planner] time_budget_s or step_s, or shorten horizon_s; `v2g-rt status` shows the planner's "
     "last solve time. Control stays correct without the planner."),
    ("ERR_PLANNER_NO_PLAN", "The horizon planner's LP ended without an optimal plan (time limit, infeasible "
     "or numerical trouble); no guidance is handed over this time.",
     "The time budget is too short for the fleet's size, or inconsistent EV data (SoC, capacity, request).",
     "Raise [planner] time_budget_s; check the EVs' reported data in `v2g-rt status`."),
    ("ERR_SERVICE_FAILED", "A Python service thread (status or control socket, fault journal, watchdog feeder) "
     "died with an exception; the supervisor restarts it after a backoff (0.5 s doubling to 30 s).",
     "A bug in the service, or what it depends on failing in a way it did not expect (a full disk, a "
     "removed socket directory).",
     "Read the exception in the log line; `v2g-rt status` shows each service's health and restarts. The "
     "loop keeps running meanwhile; a service that keeps failing needs the cause fixed and a restart."),
    ("ERR_CYCLE_OVERRUN", "A cycle ended after the next planned wake; whole periods were skipped.",
     "A period too short for the machine, CPU contention, or no RT priority.",
     "Run `v2g-rt bench`; lengthen the period or isolate a CPU for the loop."),
    # protocols and devices (reported by the services that own them)
    ("ERR_ISO_TIMEOUT", "An ISO 15118 session timed out or PLC packet loss exceeded its limit; the port was stopped.",
     "A bad PLC coupling, EMI on the control pilot, or the EV stopped answering.",
     "Check the CP/PE wiring and the PLC modem ([plc.NAME]: `v2g-rt status` shows each port's link, loss and "
     "attenuation); the port resumes when the EV starts a new session."),
    ("ERR_MODBUS_EXCEPTION_01", "A Modbus device ([modbus.NAME]) answered exception 01 (illegal function); "
     "that block gave no data.",
     "The device does not support the function code of its map's table (3 holding, 4 input).",
     "Check the map's addressing: Modicon 3xxxx means input registers, 4xxxx holding; `v2g-rt modbus read NAME`."),
    ("ERR_MODBUS_EXCEPTION_02", "A Modbus device answered exception 02 (illegal data address); that block gave no data.",
     "A register map for another meter model or firmware, an off-by-one address convention, or a wrong unit id.",
     "Select the map and unit id for the device; compare `v2g-rt modbus read NAME` with the vendor's register list."),
    ("ERR_MODBUS_EXCEPTION_03", "A Modbus device answered exception 03 (illegal data value); that block gave no data.",
     "A read of more registers than the device allows in one request, or across a gap in its map.",
     "Split the map's values so neighbours are further apart, or check the register list for gaps."),
    ("ERR_MODBUS_EXCEPTION_04", "A Modbus device answered exception 04 (server device failure).",
     "The device itself has a fault.", "Check the device; a meter's value goes stale and the interlock assumes "
     "worst-case headroom meanwhile."),
    ("ERR_MODBUS_EXCEPTION_05", "A Modbus device answered 05 (acknowledge): it accepted the request and will take "
     "long; not a failure, the block is read again at the next poll.",
     "A device busy with a long operation.", "None needed unless it keeps answering so; counted per device in `status`."),
    ("ERR_MODBUS_EXCEPTION_06", "A Modbus device answered 06 (server device busy); not a failure, the block is read "
     "again at the next poll.", "A device busy with another client or a long operation.",
     "None needed unless it persists; a second Modbus master polling it fast can cause it."),
    ("ERR_MODBUS_EXCEPTION_08", "A Modbus device answered exception 08 (memory parity error).",
     "The device found its own memory inconsistent.", "Service or replace the device."),
    ("ERR_MODBUS_EXCEPTION_0A", "A Modbus gateway answered exception 0A (gateway path unavailable).",
     "The gateway has no route to the unit id asked for (misconfigured or overloaded gateway).",
     "Check the gateway's routing table and the unit id in [modbus.NAME] unit."),
    ("ERR_MODBUS_EXCEPTION_0B", "A Modbus gateway answered exception 0B (gateway target device failed to respond).",
     "The serial device behind the gateway is off, miswired or has another unit id.",
     "Check the RS-485 wiring and the device's unit id behind the gateway."),
    ("ERR_MODBUS_TIMEOUT", "A Modbus device did not answer in time (3 periods, at least 1 s); the connection is "
     "closed and retried after a backoff (0.5 s doubling to 30 s).",
     "The device hangs, the network drops packets, or it accepts connections and never answers (a wrong unit id "
     "behind some gateways).", "Check the device and its network; a meter's value goes stale meanwhile."),
    ("ERR_MODBUS_CONNECT", "A Modbus device cannot be connected to, or closed the connection; retried after a backoff.",
     "Wrong host or port, the device is off, or it allows fewer connections than are open.",
     "Check [modbus.NAME] host and port (502) and the device's network settings."),
    ("ERR_MODBUS_BAD_RESPONSE", "A Modbus answer was malformed: another unit id, a wrong register count or an "
     "undecodable frame; none of it was used, and the connection is opened afresh.",
     "A gateway mixing up unit ids, a second master on the same connection, or a faulty device.",
     "Check the unit id and that the controller is the device's only client on this connection."),
    ("ERR_MODBUS_NOT_IMPLEMENTED", "A Modbus value read as its type's \"not implemented\" mark (0x8000, 0xFFFF, "
     "0x80000000, NaN, a not-implemented scale factor) and was not used.",
     "The device does not measure that value, or the map points at the wrong register or type.",
     "Check the map with `v2g-rt modbus read NAME`; a value the controller needs (power_w) must be implemented."),
    ("ERR_MODBUS_SCALE_FACTOR", "A SunSpec scale factor was outside -10..10; the values it scales were not used.",
     "A device fault or a map whose scale-factor register is wrong.", "Check the device and the map."),
    ("ERR_MODBUS_DISCOVERY", "map = \"sunspec\": no SunSpec marker at 0, 40000 or 50000, or no meter model "
     "(201-204, 211-214) before the end marker.",
     "The device is not SunSpec, or its meter sits under another unit id.",
     "Use a JSON map (hw/modbus/) for a device without SunSpec, or the meter's unit id."),
    ("ERR_MODBUS_SETPOINT_RANGE", "A port's setpoint does not fit its charger's setpoint register (its type and "
     "scale in the EVSE map); the value written was clamped to what the register holds.",
     "The map's setpoint type or scale is wrong for this charger, or the port's ratings exceed what it takes.",
     "Check the map's control.setpoint (type, scale) against the vendor's register list, and the port's ratings."),
    ("ERR_CONFIG_MODBUS_MAP", "A Modbus register map ([modbus.NAME] map) cannot be used.",
     "A missing file, invalid JSON, an unknown type or key, overlapping registers, or a register outside the "
     "address convention the map states.", "Fix the map at the file and register the message names."),
    ("ERR_MQTT_CONN_REFUSED", "The MQTT broker refused the connection (its CONNACK carries the reason code), "
     "or refused a message it acknowledged.",
     "The broker's ACL does not allow this client id or certificate identity, or the client id is taken.",
     "Check the broker's ACL for [mqtt] client_id and the certificate's identity; reports queue in the outbox "
     "meanwhile."),
    ("ERR_MQTT_TLS", "The TLS handshake with the MQTT broker failed: no CONNACK exists then.",
     "[mqtt] ca did not sign the broker's certificate, the broker does not accept [mqtt] cert (another CA, "
     "expired, none), or a middlebox intercepts port 8883.",
     "Check [mqtt] ca, cert and key against the broker's cafile; `openssl s_client -connect HOST:8883 -CAfile CA "
     "-cert CERT -key KEY` shows the refusal; reports queue in the outbox meanwhile."),
    ("ERR_MQTT_CERT_EXPIRING", "An MQTT certificate ([mqtt] ca or cert) expires within 30 days.",
     "The certificate was not renewed yet.", "Renew it and restart the controller before it expires."),
    ("ERR_MQTT_DISCONNECTED", "The MQTT broker cannot be reached, never answered, or the connection was lost; "
     "reports queue in the persistent outbox.",
     "Broker down, network loss, or port 8883 dropped by a firewall.",
     "Check the broker and the firewalls between; the outbox replays in order on reconnect."),
    ("ERR_MQTT_OUTBOX_FULL", "The MQTT outbox reached [mqtt] outbox_max_mb; new reports are dropped (counted "
     "in status, seen as a gap in seq).",
     "A broker outage long enough to fill it.", "Restore the broker; raise outbox_max_mb if outages this long "
     "are expected."),
    ("ERR_MQTT_BAD_MESSAGE", "An MQTT command was not a JSON object of at most 4 KiB; rejected on cmd/reply.",
     "A sender bug or the wrong topic.", "Send commands as one JSON object per message."),
    ("ERR_MQTT_RETAINED_CMD", "A retained MQTT command was rejected: it may be any age.",
     "The sender published the command with the retain flag.",
     "Publish commands without retain, and clear the retained one (an empty retained message on the cmd topic)."),
    ("ERR_MQTT_RATE_LIMITED", "More MQTT commands and heartbeats arrived than the controller takes (50 a second, "
     "bursts of 200); the excess was dropped unanswered.",
     "A flooding or looping sender.", "Find the sender; commands should come at most a few a second."),
    ("ERR_PKI_EXISTS", "`v2g-rt pki init` found one of the files it would write; it wrote nothing.",
     "The PKI was initialised before in that directory.",
     "Keep the existing PKI, or choose another directory; delete old files only once nothing uses them."),
    ("ERR_PKI_STATION_ID", "A station id given to `v2g-rt pki init` cannot be an OCPP identity.",
     "Empty, longer than 48 characters, or with characters that do not fit one URL path segment.",
     "Use the EVSE node's id from the site config: letters, digits, '.', '_' or '-'."),
    ("ERR_OCPP_CONFIG", "The [ocpp] section's certificates, key or listen address cannot be used.",
     "A missing or unreadable file, a key that does not match the certificate, or a malformed address.",
     "Fix the option the message names; `v2g-rt pki init` creates a matching set."),
    ("ERR_OCPP_LISTEN", "The OCPP server cannot listen on [ocpp] listen.",
     "Another program holds the port, or the address is not one of this host's.",
     "Free the port or change [ocpp] listen; the service retries with a backoff."),
    ("ERR_OCPP_TLS_REFUSED", "A connection to the OCPP server was refused in the TLS handshake.",
     "No client certificate, one not issued by the site CA, plain ws:// or HTTP on the TLS port, or a "
     "TLS version below 1.2.",
     "Install the station's certificate from `v2g-rt pki init` (stations/ID.pem, ID.key) and the site CA, and "
     "use wss:// with Security Profile 3."),
    ("ERR_OCPP_UNKNOWN_STATION", "A station connected with an id that is no EVSE with link = \"ocpp\" of this site.",
     "The station's URL ends in another id, or the site config lacks the EVSE.",
     "Set the station's CSMS URL to wss://HOST:PORT/ocpp/ID with ID an EVSE node id, or add the node."),
    ("ERR_OCPP_IDENTITY_MISMATCH", "A station's client certificate names another station than its URL.",
     "The certificate of one station installed in another, or a mistyped URL.",
     "Install stations/ID.pem and ID.key of the station's own id; the certificate's CN must equal the id."),
    ("ERR_OCPP_SUBPROTOCOL", "A station offered no OCPP version this controller speaks (ocpp2.0.1, ocpp2.1).",
     "An OCPP 1.6 station, or one configured for another version.", "Configure the station for OCPP 2.0.1 or 2.1."),
    ("ERR_OCPP_CERT_EXPIRING", "A certificate of the OCPP link expires within 30 days (or did).",
     "Certificates from `v2g-rt pki init` last 825 days (the CA 10 years).",
     "Issue new certificates from the site CA and install them before the date the message gives."),
    ("ERR_OCPP_BAD_MESSAGE", "A station sent what the controller could not accept: malformed JSON, an unknown "
     "action, a payload against the schema; it was answered with a CALLERROR and the connection kept.",
     "A station firmware bug, or an OCPP feature this controller does not implement.",
     "Check the logged message against the station's OCPP version; `v2g-rt status` counts them per station."),
    ("ERR_OCPP_REJECTED", "A station answered Rejected (or another refusal) to a request of the controller.",
     "The station does not support the profile (its purpose, rate unit or stack level), or holds a "
     "limit set by another party.", "Check the station's smart-charging settings; `v2g-rt status` counts them."),
    ("ERR_OCPP_TIMEOUT", "A station did not answer a request of the controller in time.",
     "A busy or hung station, or a network that drops messages.",
     "Check the station; its port keeps the profile it had, which expires by its own validity."),
    ("ERR_OCPP_CALLERROR", "A station answered a request with a CALLERROR.",
     "A station that does not implement the request or finds it malformed.",
     "Check the station's OCPP version and its smart-charging support; the error's code is in the log."),
    ("ERR_MQTT_CONN_REFUSED", "The MQTT broker refused the connection.",
     "Wrong credentials or client certificate, or the client id is not authorised.",
     "Check the broker's ACL and the client certificate; reports queue in the outbox meanwhile."),
    ("ERR_MQTT_DISCONNECTED", "The MQTT broker connection was lost; reports queue in the persistent outbox.",
     "Broker down or network loss.", "None needed; the outbox replays on reconnect."),
    ("ERR_UPSTREAM_LOST", "An upstream (DMS, aggregator, CSMS) stopped sending heartbeats: Safe State.",
     "Network loss or the upstream system is down.",
     "Restore the connection to the upstream; Safe State ends after it has been healthy for the hysteresis period."),
    ("ERR_INTERNAL", "An unexpected condition inside the controller (a bug).",
     "A case the code did not foresee.", "Report it with the log lines around it; the controller keeps its safe outputs."),
    ("ERR_STATUS_UNAVAILABLE", "No controller answers on the status socket.",
     "The controller is not running, or runs with another config's socket path.",
     "Start it with `v2g-rt run`, or pass --socket/--config matching the running controller."),
    ("ERR_LINK_UNAVAILABLE", "An EVSE's setpoint link is not available in this build.",
     "The config names a link (ocpp, can, pwm, plc) whose service is not part of this version.",
     "Use link = \"sim\" or a link this version provides (`v2g-rt check` lists them)."),
    ("ERR_CONTACTOR_MISMATCH", "A port's contactor feedback disagrees with its command after the settle time; "
     "the port is stopped with its contactor open, latched until a reset.",
     "A welded or stuck contactor, a broken auxiliary contact or feedback wiring.",
     "Inspect the contactor and its feedback wiring, then send a reset_fault command for the port."),
    ("ERR_EVSE_OVERTEMP", "An EVSE's heat sink reached its trip temperature; its ports are at 0 W until it cools.",
     "A failed fan, blocked air filter or high ambient.", "Check the EVSE's cooling; it derates linearly from the derate start."),
    ("ERR_TEMP_STALE", "A temperature the interlock needs is stale; the EVSE stops, or the transformer "
     "model assumes a worst-case ambient.", "The sensor, its bus (CAN, I2C) or the service reading it is down.",
     "Check the sensor and `v2g-rt status`; the value's max age is in the site config."),
    ("ERR_SESSION_STALE", "A connected port's session data stopped arriving; the port is at 0 W.",
     "The EVSE or its link (OCPP, PLC) stopped reporting.", "Check the EVSE's link."),
    ("ERR_TRANSFORMER_HOTSPOT", "The transformer's modelled hot spot is above its derate start; the site is derated.",
     "Sustained high load in hot weather.", "None needed; the derate follows the hot spot down."),
    ("ERR_FAULT_JOURNAL", "The latched-fault journal cannot be read or written, or holds what this site cannot apply.",
     "The state directory is missing or not writable; the file was edited or corrupted (every port then starts "
     "latched off); it names ports or fault bits this site or version does not have (kept, not applied).",
     "Give the service a writable StateDirectory (systemd) or /var/lib/v2g-rt; inspect the ports, then "
     "`v2g-rt reset-fault --all`."),
    ("ERR_FAULT_RELATCHED", "A reset did not clear a port: a fault latched again after the latch the operator cleared.",
     "The cause is still there (a welded contactor stays welded), or it came back at once.",
     "Find and fix the cause (`v2g-rt status`, the log) before resetting again."),
    ("ERR_AUDIT_LOG", "An operator action could not be written to the audit log.",
     "The state directory is full or not writable.", "Free space or fix the permissions of the state directory."),
    ("ERR_OPERATOR_GROUP", "The operator group named by [site] operator_group does not exist or cannot own the sockets.",
     "The group was never created on this box.",
     "`groupadd v2g-operator` (or the configured name) and `usermod -aG v2g-operator USER`; restart the service."),
    ("ERR_SOCKET_PERMISSION", "The status or control socket refused this user.",
     "The user is not in the operator group (or logged in before being added).",
     "`usermod -aG v2g-operator USER` (or [site] operator_group), then log in again."),
    ("ERR_STATUS_BUSY", "The status socket's listen queue stayed full through every retry.",
     "Hundreds of clients connecting at once.", "Retry; poll less often (`status --watch 5`)."),
    ("ERR_CONTROL_UNAVAILABLE", "No controller answers on the control socket.",
     "The controller is not running, or runs with another socket path.",
     "Start it (`systemctl start v2g-rt`); pass --socket or --config of the running site."),
    ("ERR_CONTROL_BUSY", "The control socket's listen queue stayed full through every retry.",
     "Many clients at once.", "Retry."),
    ("ERR_CONTROL_BAD_REQUEST", "A request on the control socket is not one the controller understands.",
     "A client of another version, or a hand-written request.",
     "Use `v2g-rt reset-fault` / `v2g-rt port`; requests are one JSON object per line."),
    ("ERR_PORT_OUT_OF_SERVICE", "An operator took a port out of service; it gets no power until enabled again.",
     "`v2g-rt port disable PORT` (the audit log says who and when).", "`v2g-rt port enable PORT` when it is fit."),
    ("ERR_METER_STALE", "The grid meter value is older than its maximum age; worst-case headroom is assumed.",
     "Meter or its Modbus connection down.", "Check the meter and its connection."),
]

CATALOGUE: dict[str, ErrorCode] = {c: ErrorCode(c, m, k, r) for c, m, k, r in _ENTRIES}


def lookup(code: str) -> ErrorCode:
    """The catalogue entry for code; KeyError names close codes."""
    key = code.strip().upper()
    if key in CATALOGUE:
        return CATALOGUE[key]
    close = difflib.get_close_matches(key, CATALOGUE, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `v2g-rt explain --list` lists all codes"
    raise KeyError(f"unknown error code {code!r}{hint}")


class V2GError(Exception):
    """An error with a catalogue code; str() is the full, actionable message."""

    def __init__(self, code: str, message: str):
        assert code in CATALOGUE, code
        super().__init__(f"{code}: {message}")
        self.code = code
