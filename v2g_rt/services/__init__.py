"""The Python service threads around the loop (status and control sockets, fault journal,
watchdog feeder): one module each, one interface, run by a Supervisor.

A service's health says what its own thread knows (alive, its counters); it proves nothing
about a far party, so it never feeds an upstream heartbeat.
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import select
import threading
import time
import weakref

log = logging.getLogger("v2g_rt")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


class Service(abc.ABC):
    """A thread that runs run() from start() until stop(); an exception ends the thread and is
    kept in `failure` for the Supervisor, which restarts the service with start()."""

    name = "service"

    def __init__(self):
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.failure: Exception | None = None

    def start(self) -> None:
        self.stopping.clear()
        self.failure = None
        self.thread = threading.Thread(target=self._main, name=f"v2g-{self.name}", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            self.run()
        except Exception as e:        # reported and restarted by the Supervisor
            self.failure = e

    @abc.abstractmethod
    def run(self) -> None:
        """The service's work, until self.stopping is set."""

    def stop(self) -> None:
        self.stopping.set()
        self._join()

    def _join(self) -> None:
        if self.alive and self.thread is not threading.current_thread():
            self.thread.join()

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stats(self) -> dict:
        """The service's counters."""
        return {}

    def health(self) -> dict:
        """Alive, and what the service knows about its own work."""
        return {"alive": self.alive, **self.stats()}


class AsyncService(Service):
    """A service whose thread runs one asyncio loop: serve() sets self._ready once it serves (start()
    waits for that, at most 5 s) and returns soon after self._done is set (by stop())."""

    def __init__(self):
        super().__init__()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        self._ready.clear()
        super().start()
        self._ready.wait(5.0)

    def run(self) -> None:
        asyncio.run(self._serve_until_done())

    async def _serve_until_done(self) -> None:
        self._loop, self._done = asyncio.get_running_loop(), asyncio.Event()
        if self.stopping.is_set():
            self._done.set()
        try:
            await self.serve()
        finally:
            self._ready.set()

    @abc.abstractmethod
    async def serve(self) -> None:
        """The service's work on the loop."""

    def stop(self) -> None:
        self.stopping.set()
        if self._loop is not None and self._done is not None:
            try:
                self._loop.call_soon_threadsafe(self._done.set)
            except RuntimeError:                     # the loop already closed
                pass
        self._join()


class SocketService(Service):
    """A service that answers on a LocalServer (`self.server`) until stopped."""

    server = None

    def run(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop serving and remove the socket."""
        self.stopping.set()
        if self.alive:
            self.server.shutdown()
        self._join()
        self.server.close()


class Supervisor:
    """Starts services in order, stops them in reverse, and restarts one whose thread died with an
    exception: the first retry after BACKOFF_FIRST_S, each next one twice as late, at most
    BACKOFF_MAX_S; a service that ran BACKOFF_MAX_S without failing starts again from the first delay.
    check() does the watching; call it about once a second."""

    def __init__(self, clock=time.monotonic, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S):
        self.clock, self.first_s, self.max_s = clock, first_s, max_s
        self.services: dict[str, Service] = {}
        self.restarts: dict[str, int] = {}
        self.delay: dict[str, float] = {}        # the next backoff per service
        self.retry_at: dict[str, float] = {}     # failed services and when they start again
        self.started_at: dict[str, float] = {}
        self.last_failure: dict[str, str] = {}

    def add(self, service: Service) -> Service:
        self.services[service.name] = service
        self.restarts[service.name] = 0
        self.delay[service.name] = self.first_s
        return service

    def start(self) -> None:
        """Start, in the order added, every service not started yet."""
        for svc in self.services.values():
            if svc.name not in self.started_at:
                self._start(svc)

    def _start(self, svc: Service) -> None:
        self.started_at[svc.name] = self.clock()
        svc.start()

    def stop(self, *services: Service) -> None:
        """Stop the given services (default: all still running), in reverse start order."""
        chosen = set(map(id, services)) if services else None
        for svc in reversed(self.services.values()):
            if svc.name in self.started_at and (chosen is None or id(svc) in chosen):
                del self.started_at[svc.name]
                self.retry_at.pop(svc.name, None)
                svc.stop()

    def check(self) -> None:
        now = self.clock()
        for name, svc in self.services.items():
            if name not in self.started_at:
                continue
            if name in self.retry_at:
                if now >= self.retry_at[name]:
                    del self.retry_at[name]
                    self.restarts[name] += 1
                    log.info("service %s: restarted (%d restarts)", name, self.restarts[name])
                    self._start(svc)
            elif svc.failure is not None and not svc.alive:
                delay = self.delay[name]
                self.last_failure[name] = f"{type(svc.failure).__name__}: {svc.failure}"
                log.error("ERR_SERVICE_FAILED: service %s died (%s); restarting it in %g s", name,
                          self.last_failure[name], delay, exc_info=svc.failure)
                self.retry_at[name] = now + delay
                self.delay[name] = min(delay * 2, self.max_s)
            elif now - self.started_at[name] >= self.max_s:
                self.delay[name] = self.first_s

    def health(self) -> dict:
        """Each service's health, with the supervisor's view: restarts, last failure, next retry."""
        now = self.clock()
        out = {}
        for name, svc in self.services.items():
            h = {**svc.health(), "restarts": self.restarts[name]}
            if name in self.last_failure:
                h["last_failure"] = self.last_failure[name]
            if name in self.retry_at:
                h["retry_in_s"] = round(max(0.0, self.retry_at[name] - now), 1)
            out[name] = h
        return out


class OutputEvents:
    """The loop's output eventfd has one reader, this relay thread; each Python link subscribes
    and gets an eventfd of its own, made readable whenever the loop hands outputs over. Links
    reading the loop's eventfd themselves would steal each other's wakeups (one read re-arms it)."""

    def __init__(self, source_fd: int):
        self.source = source_fd
        self.control = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)    # wakes the relay to re-read fds
        self.fds: list[int] = []
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def subscribe(self) -> int:
        """A nonblocking eventfd of the caller's own; read it to re-arm it, unsubscribe() to close it."""
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        with self.lock:
            self.fds.append(fd)
            if self.thread is None:
                self.thread = threading.Thread(target=self._relay, name="v2g-outputs", daemon=True)
                self.thread.start()
        return fd

    def unsubscribe(self, fd: int) -> None:
        with self.lock:
            self.fds.remove(fd)
        os.close(fd)
        os.eventfd_write(self.control, 1)

    def _relay(self) -> None:
        poller = select.poll()
        poller.register(self.source, select.POLLIN)
        poller.register(self.control, select.POLLIN)
        while True:
            handed_over = False
            for fd, events in poller.poll():
                try:
                    if events & (select.POLLERR | select.POLLNVAL):
                        raise OSError(f"poll events 0x{events:x}")
                    os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                except OSError as e:       # the controller closed its eventfd (and the number may be reused)
                    self._failed(e)
                    return
                handed_over |= fd == self.source
            with self.lock:
                if not self.fds:
                    self.thread = None
                    return
                if handed_over:
                    for fd in self.fds:
                        os.eventfd_write(fd, 1)

    def _failed(self, e: OSError) -> None:
        with self.lock:
            self.thread = None
            listening = bool(self.fds)
        if listening:
            log.error("ERR_INTERNAL: the loop's output eventfd failed (%s); Python links are no longer woken by "
                      "output changes", e)


_output_events: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_output_events_lock = threading.Lock()


@contextlib.contextmanager
def outputs_watched(ctrl, loop: asyncio.AbstractEventLoop, callback):
    """Within the block, callback() runs in loop each time the controller hands outputs over
    (a Python link's way to wait on the output mailbox)."""
    events = output_events(ctrl)
    fd = events.subscribe()

    def ready():
        try:
            os.read(fd, 8)                  # re-arm
        except BlockingIOError:
            pass
        callback()

    loop.add_reader(fd, ready)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        events.unsubscribe(fd)


def output_events(ctrl) -> OutputEvents:
    """The relay of a controller's output eventfd, one per controller."""
    with _output_events_lock:
        if ctrl not in _output_events:
            _output_events[ctrl] = OutputEvents(ctrl.output_fd())
        return _output_events[ctrl]

