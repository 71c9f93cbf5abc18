"""Logging: /var/log/v2g/controller.log when writable, else the per-user state dir; stderr in the foreground.

Every line at WARNING or above carries an ERR_* code from the catalogue.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

SYSTEM_LOG = Path("/var/log/v2g/controller.log")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def user_log() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "v2g-rt" / "controller.log"


class _RequireCode(logging.Filter):
    """A warning or error without a catalogue code is a bug of ours: make it visible as one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and "ERR_" not in record.getMessage():
            record.msg = f"ERR_INTERNAL: {record.msg}"
        return True


def _writable(path: Path) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            return True
    except OSError:
        return False


def setup(foreground: bool = True, level: int = logging.INFO, path: Path | None = None) -> Path | None:
    """Configure the 'v2g_rt' logger; returns the log file used (None if none was writable)."""
    logger = logging.getLogger("v2g_rt")
    logger.setLevel(level)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter(FORMAT)
    target = next((p for p in ([path] if path else [SYSTEM_LOG, user_log()]) if _writable(p)), None)
    if target:
        fh = logging.FileHandler(target)
        fh.setFormatter(fmt)
        fh.addFilter(_RequireCode())
        logger.addHandler(fh)
    if foreground:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        sh.addFilter(_RequireCode())
        logger.addHandler(sh)
    logger.propagate = False
    return target
