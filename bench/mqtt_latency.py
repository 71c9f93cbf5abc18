"""MQTT: command published -> in the loop's image, outbox replay after an outage, bytes per state.

A real Mosquitto on loopback (mutual TLS, tests/mosquitto.py); the controller's real-time loop runs
(1 ms period) with the MQTT service. (1) The aggregator publishes setpoint commands one at a time, 40 a second;
we note when the loop's snapshot shows the new setpoint in force, against the publish time (both
CLOCK_MONOTONIC), in ms and in cycles. (2) An outbox filled as a 10-minute outage would fill it
(events and evse messages, one coalesced state) is replayed after the connection: messages a second
until the broker has acknowledged them all. (3) The size of one `state` and one `evse/<id>` message
in each encoding, JSON and protobuf ([mqtt] encoding: for sites that count bytes), with both ports'
EVs plugged and with none.

    python -P bench/mqtt_latency.py [--commands 1000] [--backlog 20000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mosquitto import Broker  # noqa: E402

from v2g_rt import Controller, config  # noqa: E402
from v2g_rt.bench import machine, write_results  # noqa: E402
from v2g_rt.services.mqtt import MqttService, protobuf, reports  # noqa: E402
from v2g_rt.services.mqtt.outbox import Outbox  # noqa: E402
from v2g_rt.sim.session import Session  # noqa: E402

PREFIX = "v2g/mqtt-bench"
SITE = """
[site]
name = "mqtt-bench"
period_ms = 1
[rt]
priority = 0
lock_memory = false
cpu_dma_latency_us = -1
[node.grid]
kind = "grid"
import_limit_w = 1000000
export_limit_w = 1000000
[node.evse01]
kind = "evse"
parent = "grid"
ports = 2
port_max_charge_w = 11000
[mqtt]
host = "127.0.0.1"
port = {port}
ca = "{ca}"
cert = "{cert}"
key = "{key}"
prefix = "{prefix}"
"""


def wait(pred, what: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > end:
            raise RuntimeError(f"{what} did not happen within {timeout_s:g} s")
        time.sleep(0.0002)


def command_latency(ctrl, agg, n: int) -> dict:
    out = []
    for k in range(n):
        value = 1000.0 + k % 50 * 100
        payload = json.dumps({"id": f"bench-{k}", "kind": "setpoint", "value_w": value, "expires_in_s": 600})
        t0 = time.monotonic_ns()
        agg.publish(f"{PREFIX}/cmd", payload, qos=1)
        wait(lambda: ctrl.snapshot().site["setpoint_w"] == value, f"command {k}")
        out.append((ctrl.snapshot().t_ns - t0) / 1e6)
        time.sleep(1 / 40)                           # under the service's 50 messages a second
    a = np.array(out)
    period_ms = ctrl.site.period_s * 1e3
    return {"commands": n, "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "max_ms": round(float(a.max()), 3),
            "p99_cycles": round(float(np.percentile(a, 99)) / period_ms, 1)}


def backlog(path: Path, n: int) -> int:
    """An outage's worth of reports, queued as the service queues them."""
    box = Outbox(path, 64 << 20)
    evse = {"power_w": 7400.0, "ports": {"evse01.1": {"connected": True, "setpoint_w": 7400.0, "soc": 0.5,
                                                      "faults": []}}}
    now = time.time()
    with box.transaction():                          # one commit: filling is not what is measured
        for k in range(n):
            topic, body = ("events", {"code": "ERR_SESSION_STALE", "level": "error", "message": "port x"}) \
                if k % 4 == 0 else ("evse/evse01", evse)
            box.db.execute("INSERT INTO outbox (topic, payload, retain, replaced) VALUES (?, ?, 0, 0)",
                           (topic, reports.encode(body, k + 1, now)))
    box.close()
    return n


def message_bytes(ctrl) -> dict:
    """Bytes of the latest state and evse message in each encoding (seq 123456, the time now)."""
    snap, now = ctrl.snapshot(), time.time()
    bodies = {"state": ("state", reports.state(snap)),
              "evse": ("evse/evse01", reports.evses(snap, ctrl.site)["evse01"])}
    return {f"{name}_bytes": {"json": len(reports.encode(body, 123456, now)),
                              "protobuf": len(protobuf.encode(topic, body, 123456, now))}
            for name, (topic, body) in bodies.items()}


def run(commands: int, backlog_n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        cert, key = broker.ca.issue("controller")
        path = Path(tmp) / "site.toml"
        path.write_text(SITE.format(port=broker.port, ca=broker.ca.path, cert=cert, key=key, prefix=PREFIX))
        site = config.load(path)
        outbox = Path(tmp) / "outbox.sqlite"
        queued = backlog(outbox, backlog_n)
        ctrl = Controller(site)
        ctrl.start()
        service = MqttService(ctrl, site.sections["mqtt"], outbox)
        agg = broker.client()
        try:
            t0 = time.monotonic()
            service.start()
            wait(lambda: service.stats().get("queued", 1) == 0 and service.stats()["subscribed"], "the replay", 600)
            replay_s = time.monotonic() - t0
            latency = command_latency(ctrl, agg, commands)
            idle = message_bytes(ctrl)                # nothing plugged: no SoC, the nulls JSON spells out
            for k, port in enumerate(ctrl.port_ids):
                Session(soc=0.4 + 0.2 * k, capacity_wh=60_000, energy_request_wh=20_000, departure_in_s=3600,
                        max_charge_w=11_000, max_discharge_w=11_000, v2g=True).publish(ctrl, port)
            wait(lambda: ctrl.snapshot().ports["connected"].all(), "the EVs plugged")
            plugged = message_bytes(ctrl)
        finally:
            agg.loop_stop()
            agg.disconnect()
            service.stop()
            ctrl.stop()
    return {"command_to_image": latency,
            "replay": {"messages": queued, "seconds": round(replay_s, 2), "per_s": round(queued / replay_s)},
            **plugged, "idle": idle}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commands", type=int, default=1000)
    p.add_argument("--backlog", type=int, default=20000, help="reports queued during the outage")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    r = run(args.commands, args.backlog)
    r["machine"] = machine()
    c, b = r["command_to_image"], r["replay"]
    print(f"command -> image: p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms ({c['p99_cycles']} cycles), "
          f"max {c['max_ms']} ms over {c['commands']} commands")
    print(f"outbox replay: {b['messages']} messages in {b['seconds']} s, {b['per_s']} a second")
    for name in ("state", "evse"):
        size, idle = r[f"{name}_bytes"], r["idle"][f"{name}_bytes"]
        print(f"{name} message, EVs plugged: {size['json']} bytes of JSON, {size['protobuf']} bytes of protobuf "
              f"(nothing plugged: {idle['json']} and {idle['protobuf']})")
    write_results(args.json, r)
    return r


if __name__ == "__main__":
    main()
