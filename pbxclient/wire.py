"""Python objects to and from the API's JSON: snake_case attributes, camelCase keys on the wire.

A dataclass field `play_id` is the key `playId`; a class with `WIRE_CASE = "snake"` keeps its keys as they
are (RustPBX's `SipOption`); field metadata `wire` names a key outright (`from`, a Python keyword);
attributes a class lists in `LOCAL_FIELDS` are not on the wire at all. Values that are `None` are left
out, as the servers treat a missing field and `null` alike; metadata `keep_none` sends a `None` as `null`
(`custom.data`, where `null` is a value). Dicts given by the caller (`extra`, `headers`, `data`) go out
with their keys untouched.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import msgspec


def camel(name: str) -> str:
    """`sdp_m_line_index` -> `sdpMLineIndex`."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@functools.cache
def _keys(cls: Any) -> tuple[tuple[str, str, bool], ...]:
    """(attribute, wire key, keep_none) for each field of a dataclass."""
    snake = getattr(cls, "WIRE_CASE", "camel") == "snake"
    local = getattr(cls, "LOCAL_FIELDS", ())
    return tuple(
        (
            f.name,
            f.metadata.get("wire") or (f.name if snake else camel(f.name)),
            bool(f.metadata.get("keep_none")),
        )
        for f in dataclasses.fields(cls)
        if f.name not in local
    )


def to_wire(value: Any) -> Any:
    """A JSON-ready copy of `value`: dataclasses become camelCase objects without their `None` fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for attr, key, keep_none in _keys(type(value)):
            item = getattr(value, attr)
            if item is not None or keep_none:
                out[key] = to_wire(item)
        return out
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    return value


def from_wire(cls: Any, data: dict[str, Any], **extra: Any) -> Any:
    """An instance of the dataclass `cls` from a wire object: known keys by their wire names, unknown keys
    ignored, values checked against the field types (lax: `"5"` is read as 5 for an int). Raises
    msgspec.ValidationError when a value cannot be read as its field's type."""
    args = {attr: data[key] for attr, key, _ in _keys(cls) if key in data}
    args.update(extra)
    return msgspec.convert(args, cls, strict=False)
