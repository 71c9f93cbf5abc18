"""[mqtt] encoding = "protobuf": the JSON messages' bodies as the schema's messages (hw/mqtt/v2g_rt.proto,
compiled into v2g_rt_pb2.py beside this file) and back.

One walk over each message's descriptor serves every topic: a body key is the field of that name;
None (JSON null) is an absent field; ts is int64 ms since the epoch. decode() gives back the JSON
encoding's dict exactly (ts as its ISO string), which is what the tests compare."""
from __future__ import annotations

import json

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from . import reports
from . import v2g_rt_pb2 as pb

TOPICS = {"cmd": pb.Command, "cmd/reply": pb.CommandReply, "state": pb.State, "events": pb.Event,
          "availability": pb.Availability}


def message_type(topic: str):
    """The schema's message for a topic under the prefix."""
    return pb.Evse if topic.startswith("evse/") else TOPICS[topic]


def encode(topic: str, body: dict, seq: int, epoch_s: float, replaced: int = 0) -> bytes:
    """As reports.encode, in the topic's message."""
    body = reports.message(body, seq, reports.epoch_ms(epoch_s), replaced)
    return _fill(message_type(topic)(), body).SerializeToString(deterministic=True)


def decode(topic: str, payload: bytes) -> dict:
    """The JSON encoding's dict for a report (ValueError for bytes that are not its message)."""
    out = _parse(message_type(topic), payload)
    out["ts"] = reports.timestamp_ms(out["ts"])
    if not out.get("replaced"):
        out.pop("replaced", None)
    return out


def recode(topic: str, payload: bytes, to: str) -> bytes:
    """A queued report in the other encoding, `to` ("json" or "protobuf"): the same seq, ts and
    replaced. JSON's integer command ids become strings (the schema's)."""
    msg = json.loads(payload) if to == "protobuf" else decode(topic, payload)
    if not isinstance(msg, dict):
        raise ValueError(f"not a {topic} message")
    seq, epoch_s, replaced = msg.pop("seq"), reports.ms_of(msg.pop("ts")) / 1000, msg.pop("replaced", 0)
    if to == "json":
        return reports.encode(msg, seq, epoch_s, replaced)
    if isinstance(msg.get("id"), int) and topic == "cmd/reply":
        msg["id"] = str(msg["id"])
    return encode(topic, msg, seq, epoch_s, replaced)


def command(payload: bytes) -> dict:
    """A `cmd` payload as the JSON command's dict (absent fields are not keys, as in JSON), or
    ValueError with the reason: not a Command, or fields this schema does not know."""
    return {k: v for k, v in _parse(pb.Command, payload).items() if v is not None}


def _parse(cls, payload: bytes) -> dict:
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except DecodeError as e:
        raise ValueError(f"not a {cls.DESCRIPTOR.name} protobuf: {str(e)[:80]}") from None
    unknown = sorted({f.field_number for f in UnknownFieldSet(msg)})
    if unknown:
        raise ValueError(f"not a {cls.DESCRIPTOR.name} of this schema: unknown field number(s) "
                         f"{', '.join(map(str, unknown[:10]))}")
    return _dict(msg)


def _fill(msg, body: dict):
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in body.items():
        if value is None:
            continue
        field = fields[key]     # KeyError: a body key the schema lacks (the round-trip tests catch it)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(msg, key)
            for k, v in value.items():
                _fill(target[k], v)
        elif field.message_type is not None:
            _fill(getattr(msg, key), value)
            getattr(msg, key).SetInParent()          # an empty sub-message is still present
        elif field.is_repeated:
            getattr(msg, key).extend(map(_text, value) if field.type == field.TYPE_STRING else value)
        else:
            setattr(msg, key, _text(value) if field.type == field.TYPE_STRING else value)
    return msg


def _text(value: str) -> str:
    """A string protobuf can carry: a lone surrogate (a file name's undecodable byte in a logged
    message) is written as JSON escapes it, \\udcff, instead of failing the whole message."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _dict(msg) -> dict:
    out = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = {k: _dict(v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = list(value)
        elif field.has_presence and not msg.HasField(field.name):
            out[field.name] = None
        elif field.message_type is not None:
            out[field.name] = _dict(value)
        else:
            out[field.name] = value
    return out
