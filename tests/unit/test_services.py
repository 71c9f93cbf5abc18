"""The supervisor restarts a service that died, with growing backoff; `status` shows each service."""
import logging
import threading

from helpers import make_site
from v2g_rt import Controller
from v2g_rt.services import Service, Supervisor
from v2g_rt.services.status import render, report


class Flaky(Service):
    """Raises in run() for its first `failures` starts, then runs until stopped."""

    name = "flaky"

    def __init__(self, failures: int):
        super().__init__()
        self.failures, self.runs = failures, 0
        self.ran = threading.Event()

    def run(self) -> None:
        self.runs += 1
        self.ran.set()
        if self.runs <= self.failures:
            raise RuntimeError(f"boom {self.runs}")
        self.stopping.wait()

    def stats(self) -> dict:
        return {"runs": self.runs}


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def settle(svc: Flaky) -> None:
    """Wait until the service's thread finished its run() or is waiting to be stopped."""
    assert svc.ran.wait(5)
    svc.ran.clear()
    if svc.runs <= svc.failures:
        svc.thread.join(5)


def test_a_service_that_dies_is_logged_and_restarted_with_growing_backoff(caplog):
    clock = Clock()
    sup = Supervisor(clock=clock, first_s=0.5, max_s=2.0)
    svc = sup.add(Flaky(failures=4))
    sup.start()
    delays = []
    with caplog.at_level(logging.INFO, logger="v2g_rt"):
        for _ in range(4):
            settle(svc)
            sup.check()                                  # sees the failure, schedules the retry
            delays.append(sup.retry_at["flaky"] - clock.t)
            sup.check()                                  # too early: not restarted yet
            assert not svc.alive and svc.runs == len(delays)
            clock.t += delays[-1]
            sup.check()                                  # due: started again
        settle(svc)
        sup.check()
    assert delays == [0.5, 1.0, 2.0, 2.0]                # doubling, capped
    assert svc.alive and svc.runs == 5 and sup.restarts["flaky"] == 4
    failed = [r for r in caplog.records if "ERR_SERVICE_FAILED" in r.getMessage()]
    assert len(failed) == 4 and "service flaky died (RuntimeError: boom 1); restarting it in 0.5 s" in failed[0].getMessage()
    assert failed[0].exc_info[0] is RuntimeError                      # the traceback is in the log
    h = sup.health()["flaky"]
    assert h["alive"] and h["restarts"] == 4 and h["last_failure"] == "RuntimeError: boom 4" and h["runs"] == 5
    clock.t += 2.0                                       # a long healthy run: backoff starts over
    sup.check()
    assert sup.delay["flaky"] == 0.5
    sup.stop()
    assert not svc.alive and svc.failure is None


def test_services_start_in_order_and_stop_in_reverse():
    order = []

    class Tracked(Service):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def run(self):
            self.stopping.wait()

        def start(self):
            order.append(("start", self.name))
            super().start()

        def stop(self):
            order.append(("stop", self.name))
            super().stop()

    sup = Supervisor()
    for name in ("a", "b", "c"):
        sup.add(Tracked(name))
    sup.start()
    sup.stop()
    assert order == [("start", "a"), ("start", "b"), ("start", "c"), ("stop", "c"), ("stop", "b"), ("stop", "a")]


def test_status_shows_each_services_health():
    ctrl = Controller(make_site(2, meter=False), clock="virtual")
    ctrl.step(1_000_000)
    clock = Clock()
    sup = Supervisor(clock=clock)
    svc = sup.add(Flaky(failures=1))
    sup.start()
    settle(svc)
    sup.check()
    doc = report(ctrl, sup.health)
    assert doc["services"] == {"flaky": {"alive": False, "runs": 1, "restarts": 0,
                                         "last_failure": "RuntimeError: boom 1", "retry_in_s": 0.5}}
    text = render(doc)
    assert "services:\n  flaky        DOWN  runs 1  restarts 0  last failure RuntimeError: boom 1  retry in s 0.5" in text
    assert report(ctrl)["services"] == {}


def test_status_shows_per_port_outputs_its_link_did_not_take():
    ctrl = Controller(make_site(2, meter=False), clock="virtual")
    t = 1_000_000_000
    ctrl.step(t)
    for k in range(3):                   # keep-alives 2.5 s apart; only the first port's link takes them
        ctrl.outputs(take=ctrl.port_ids[:1])
        t += 2_500_000_000
        ctrl.step(t)
    doc = report(ctrl)
    first, second = doc["ports"]
    assert first["outputs_refused"] == 0 and second["outputs_refused"] >= 2 and second["link"] == "sim"
    assert f"{second['outputs_refused']} outputs refused by link sim" in render(doc)
