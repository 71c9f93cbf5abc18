"""The aggregator's grid commands over MQTT: each `cmd` message is checked for what only MQTT can
get wrong (retained, oversized, empty, not a JSON object or Command protobuf, replayed across a
restart), then handed to Controller.submit, which alone validates commands; every one gets a verdict for `cmd/reply`."""
from __future__ import annotations

import json
import time

MAX_COMMAND_BYTES = 4096              # a grid command is < 200 bytes
ID_RETENTION_S = 600.0                # as the controller: an id is remembered this long past its expiry
# refusals that say nothing about the command itself: the same id may be sent again and be judged anew
TRANSIENT = frozenset(("ERR_CMD_QUEUE_FULL", "ERR_CLOCK_UNSYNCED", "ERR_CMD_TOO_MANY_IDS", "ERR_CMD_SCHEDULE_FULL"))


def verdict(accepted: bool, code: str | None = None, reason: str | None = None) -> dict:
    return {"accepted": accepted, "code": code, "reason": reason}


def reply(cmd_id, answer: dict) -> dict:
    return {"id": cmd_id, **answer}


class RateLimit:
    """A token bucket: `rate` messages a second, bursts of `burst`."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.at = float(burst), clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def id_key(cmd_id) -> str | None:
    """The id as the answered-ids table keys it: ints and strings (others the controller refuses,
    and a refusal of a malformed id is not worth remembering)."""
    if isinstance(cmd_id, bool) or not isinstance(cmd_id, (int, str)):
        return None
    return f"{type(cmd_id).__name__}:{cmd_id}"


def keep_until(cmd: dict, now: float) -> float:
    """Wall-clock time until which the id must be remembered: its expiry plus the retention."""
    expiry = now
    for name, base in (("expires_at", 0.0), ("expires_in_s", now)):
        value = cmd.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                expiry = min(max(base + float(value), now), now + 7 * 86400)
            except (OverflowError, ValueError):
                pass
    return expiry + ID_RETENTION_S


def from_json(payload: bytes) -> dict:
    """A JSON `cmd` payload as the command's dict, or ValueError with the reason."""
    try:
        cmd = json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not JSON: {str(e)[:80]}") from None
    if not isinstance(cmd, dict):
        raise ValueError(f"a command is a JSON object, not {type(cmd).__name__}")
    return cmd


def parse(payload: bytes, retained: bool, decode=from_json) -> tuple[dict | None, dict | None]:
    """(command, None), or (what could be read of it, the rejection). decode: the encoding's
    payload -> dict (from_json, protobuf.command), ValueError with the reason."""
    if len(payload) > MAX_COMMAND_BYTES:
        return None, verdict(False, "ERR_MQTT_BAD_MESSAGE", f"{len(payload)} bytes; a command is at most "
                                                            f"{MAX_COMMAND_BYTES} bytes")
    if not payload:
        return None, verdict(False, "ERR_MQTT_BAD_MESSAGE", "an empty message (clearing a retained one?) is "
                                                            "not a command")
    try:
        cmd = decode(payload)
    except ValueError as e:
        return None, verdict(False, "ERR_MQTT_BAD_MESSAGE", str(e))
    if retained:
        return cmd, verdict(False, "ERR_MQTT_RETAINED_CMD", "a retained command is never executed: it may be "
                                                            "any age; publish commands without the retain flag")
    for name in ("expires_ns", "starts_ns"):
        if name in cmd:
            return cmd, verdict(False, "ERR_CMD_BAD_FIELD", f"{name} is the controller's own clock; over MQTT "
                                                            f"use {name[:-3]}_at or {name[:-3]}_in_s")
    return cmd, None


def shown_id(cmd: dict | None):
    """The id to echo in the reply: as sent when it is an int or a short string."""
    cmd_id = (cmd or {}).get("id")
    if isinstance(cmd_id, bool) or not isinstance(cmd_id, (int, str)) or len(str(cmd_id)) > 128:
        return None
    return cmd_id


class Commands:
    """Runs commands through the controller, once per id, across restarts (the outbox's table)."""

    def __init__(self, ctrl, outbox, source: str, wall=time.time, decode=from_json):
        self.ctrl, self.outbox, self.source, self.wall, self.decode = ctrl, outbox, source, wall, decode
        self.counts: dict[str, int] = {}

    def handle(self, payload: bytes, retained: bool) -> dict:
        """The reply to one `cmd` message."""
        cmd, refusal = parse(payload, retained, self.decode)
        answer = refusal or self._run(cmd)
        code = answer["code"] or "accepted"
        self.counts[code] = self.counts.get(code, 0) + 1
        return reply(shown_id(cmd), answer)

    def _run(self, cmd: dict) -> dict:
        key = id_key(cmd.get("id"))
        if key is None:
            return self._submit(cmd)
        earlier = self.outbox.answered(key)
        if earlier is not None:
            return earlier
        now = self.wall()
        self.outbox.begin(key, keep_until(cmd, now), now)
        answer = self._submit(cmd)
        self.outbox.finish(key, None if answer["code"] in TRANSIENT else answer)
        return answer

    def _submit(self, cmd: dict) -> dict:
        result = self.ctrl.submit(cmd, self.source)
        return verdict(result.accepted, result.code, result.reason)
