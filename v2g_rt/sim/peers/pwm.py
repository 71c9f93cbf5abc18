"""The far side of the PWM sim backend: pwmchips laid out as /sys/class/pwm under a temporary
directory, which the native I/O thread writes through the same file interface.

Each pwmchipN has npwm, export and unexport; writing M to export makes pwmM with period,
duty_cycle, enable and polarity, as the kernel does. A thread watches the writes (every
millisecond) and plays the chip: it reports the duty it runs (duty()), and for bad-input
tests it can refuse an attribute's writes (the file becomes a directory: EISDIR), lose one
(ENOENT), or run a duty of its own whatever is written (a readback that disagrees).
"""
from __future__ import annotations

import os
import shutil
import threading

NPWM = 8
ATTRS = {"period": "0\n", "duty_cycle": "0\n", "enable": "0\n", "polarity": "normal\n"}


class SimPwmChips:
    def __init__(self, root: str, configs=()):
        self.root = root
        self.configs = {cfg.port: cfg for cfg in configs}
        self.held: dict[str, int] = {}                  # port -> the duty the chip runs regardless
        self.stopping = threading.Event()
        for cfg in configs:
            chip = self.chip(cfg)
            os.makedirs(chip, exist_ok=True)
            for name, text in (("npwm", f"{NPWM}\n"), ("export", ""), ("unexport", "")):
                path = os.path.join(chip, name)
                if not os.path.exists(path):
                    with open(path, "w") as f:
                        f.write(text)
        self.thread = threading.Thread(target=self._run, name="v2g-sim-pwm", daemon=True)
        self.thread.start()

    def chip(self, cfg) -> str:
        return os.path.join(self.root, f"pwmchip{cfg.chip}")

    def path(self, port: str, attr: str = "") -> str:
        cfg = self.configs[port]
        return os.path.join(self.chip(cfg), f"pwm{cfg.channel}", attr)

    def by_hand(self) -> None:
        """No watcher thread from now on: the caller serves (virtual time, where the chip must
        answer between two I/O passes, deterministically)."""
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stopping.wait(0.001):
            self.serve()

    def serve(self) -> None:
        """Take the exports written since the last look; hold the duty of chips told to."""
        for chip in {self.chip(cfg) for cfg in self.configs.values()}:
            export = os.path.join(chip, "export")
            try:
                with open(export, "r+") as f:
                    text = f.read().strip()
                    f.seek(0)
                    f.truncate()
            except OSError:
                continue
            pwm = os.path.join(chip, f"pwm{text}")
            if text.isdigit() and int(text) < NPWM and not os.path.isdir(pwm):   # exported already: EBUSY
                os.makedirs(pwm, exist_ok=True)
                for name, value in ATTRS.items():
                    with open(os.path.join(pwm, name), "w") as f:
                        f.write(value)
        for port, duty_ns in list(self.held.items()):
            self._put(self.path(port, "duty_cycle"), duty_ns)

    def _put(self, path: str, value: int) -> None:
        try:
            if self._read(path) != value:
                with open(path, "w") as f:
                    f.write(f"{value}\n")
        except OSError:
            pass

    @staticmethod
    def _read(path: str) -> int | None:
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def exported(self, port: str) -> bool:
        return os.path.isdir(self.path(port))

    def duty(self, port: str) -> float | None:
        """The duty (%) the chip drives on port's pilot, as a logic analyzer would show it: None
        while the output is disabled or unconfigured."""
        period = self._read(self.path(port, "period"))
        duty = self._read(self.path(port, "duty_cycle"))
        if self._read(self.path(port, "enable")) != 1 or not period or duty is None:
            return None
        return 100.0 * duty / period

    def refuse(self, port: str, attr: str = "duty_cycle") -> None:
        """Writes to attr fail (EISDIR), as a driver that refuses every value."""
        path = self.path(port, attr)
        if os.path.isfile(path):
            os.remove(path)
        os.makedirs(path, exist_ok=True)

    def lose(self, port: str, attr: str = "duty_cycle") -> None:
        """attr is missing (ENOENT)."""
        path = self.path(port, attr)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)

    def restore(self, port: str, attr: str = "duty_cycle") -> None:
        self.lose(port, attr)
        with open(self.path(port, attr), "w") as f:
            f.write(ATTRS[attr])

    def hold(self, port: str, duty_ns: int | None) -> None:
        """The chip runs duty_ns whatever is written (None: it obeys again)."""
        if duty_ns is None:
            self.held.pop(port, None)
        else:
            self.held[port] = duty_ns

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
