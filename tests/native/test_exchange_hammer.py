"""Threads hammer the exchange while the loop runs: commands apply exactly once,
snapshots are never torn."""
import threading
import time

import numpy as np

from helpers import make_site, plug_all
from v2g_rt import Controller
from v2g_rt.controller import _id_hash, _id_key
from v2g_rt.site import port_source

PRODUCERS = 4
PER_PRODUCER = 1500
READERS = 2


def test_commands_exactly_once_and_snapshots_consistent_under_load():
    c = Controller(make_site(256, period_s=5e-4))
    plug_all(c, None)
    c.start()
    accepted: list[list] = [[] for _ in range(PRODUCERS)]
    replays_rejected = [0] * PRODUCERS
    torn: list[str] = []
    snapshots = [0] * READERS
    done = threading.Event()

    def producer(k):
        for j in range(PER_PRODUCER):
            cid = f"p{k}-{j}"
            cmd = {"kind": "setpoint", "id": cid, "value_w": float((j % 7 - 3) * 20_000), "expires_in_s": 30}
            while True:
                v = c.submit(cmd)
                if v or v.code != "ERR_CMD_QUEUE_FULL":
                    break
                time.sleep(0.0005)          # the ring is full: the loop drains it next cycle
            assert v, v
            accepted[k].append(cid)
            if j % 10 == 0:                 # a replay of an applied id is a no-op
                r = c.submit(cmd)
                assert r.code == "ERR_CMD_REPLAYED", r
                replays_rejected[k] += 1
            c.measure(port_source(c.port_ids[j % 256], "soc"), 0.4 + (j % 50) / 100)

    def reader(k):
        last = 0
        while not done.is_set():
            s = c.snapshot()
            snapshots[k] += 1
            cyc = s.site["cycle"]
            if cyc < last:
                torn.append(f"cycle went back {last} -> {cyc}")
            last = cyc
            if not (np.all(s.ports["cycle"] == cyc) and np.all(s.nodes["cycle"] == cyc)):
                torn.append(f"rows from several cycles in snapshot {cyc}")
            if abs(s.ports["setpoint_w"].sum() - s.site["fleet_w"]) > 1e-6 * (1 + abs(s.site["fleet_w"])):
                torn.append(f"ports do not add up to the site in snapshot {cyc}")
            if abs(s.nodes["fleet_w"][0] - s.site["fleet_target_w"]) > 1e-6 * (1 + abs(s.site["fleet_target_w"])):
                torn.append(f"root node disagrees with the site in snapshot {cyc}")
            time.sleep(0)       # let producers at the GIL between reads

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(PRODUCERS)]
    threads += [threading.Thread(target=reader, args=(k,)) for k in range(READERS)]
    for t in threads:
        t.start()
    for t in threads[:PRODUCERS]:
        t.join()
    total = sum(len(a) for a in accepted)
    deadline = time.monotonic() + 5
    while c.snapshot().site["commands_applied"] < total and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    done.set()
    for t in threads[PRODUCERS:]:
        t.join()
    site = c.snapshot().site
    c.stop()

    assert not torn, torn[:5]
    assert min(snapshots) > 100
    assert total == PRODUCERS * PER_PRODUCER
    assert site["commands_applied"] == total                 # none lost, none applied twice
    digest = sum(_id_hash(("local", _id_key(cid))) for a in accepted for cid in a) % 2**64
    assert site["command_digest"] == digest                  # and exactly these ones
    stats = c.stats()
    assert stats["commands"]["accepted"] == total
    assert stats["commands"]["ERR_CMD_REPLAYED"] == sum(replays_rejected)
