"""Validate untrusted JSON into frozen dataclasses, once, at the edge.

A dataclass field `foo_bar` is read from the wire key `fooBar` (camelCase), or from `foo_bar` when the class
sets `WIRE_CASE = "snake"` (RustPBX's `SipOption`). Field metadata may add `aliases` (legacy spellings) and
`wire` (an explicit wire name). Errors name the offending field by its wire path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, TypeVar, Union

from common.errors import BadCommand

T = TypeVar("T")

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "an object",
    list: "an array",
}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@functools.cache
def _plan(cls: Any) -> list[tuple[str, tuple[str, ...], Any, bool]]:
    """(attribute, wire names, type, required) for each field of a dataclass, computed once per class."""
    hints = typing.get_type_hints(cls)
    snake = getattr(cls, "WIRE_CASE", "camel") == "snake"
    plan = []
    for f in dataclasses.fields(cls):
        wire = f.metadata.get("wire") or (f.name if snake else camel(f.name))
        names = (wire, *f.metadata.get("aliases", ()))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        plan.append((f.name, names, hints[f.name], required))
    return plan


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(value, args[0], path)
        for arg in args:
            try:
                return _coerce(value, arg, path)
            except BadCommand:
                continue
        expected = " or ".join(_describe(a) for a in args)
        raise BadCommand(f"{path}: expected {expected}, got {_json_type(value)}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise BadCommand(f"{path}: expected an object, got {_json_type(value)}")
        return parse_object(typing.cast(type, tp), value, path)
    if origin is list:
        if not isinstance(value, list):
            raise BadCommand(f"{path}: expected an array, got {_json_type(value)}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise BadCommand(f"{path}: expected an object, got {_json_type(value)}")
        targs = typing.get_args(tp)
        if targs and targs[1] is str:
            for k, v in value.items():
                if not isinstance(v, str):
                    raise BadCommand(f"{path}.{k}: expected a string, got {_json_type(v)}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise BadCommand(f"{path}: expected a boolean, got {_json_type(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise BadCommand(f"{path}: expected an integer, got {_json_type(value)}")
        if not _INT_MIN <= value <= _INT_MAX:
            # 64 bits, as RustPBX's i64/u64 fields; msgpack could not carry more to the media process.
            raise BadCommand(f"{path}: integer out of range")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadCommand(f"{path}: expected a number, got {_json_type(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise BadCommand(f"{path}: number out of range")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise BadCommand(f"{path}: expected a string, got {_json_type(value)}")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


def _describe(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "an object"
    return _TYPE_NAMES.get(typing.get_origin(tp) or tp, str(tp))


def parse_object(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build `cls` from a JSON object, raising BadCommand that names the field on any mismatch."""
    kwargs: dict[str, Any] = {}
    for attr, names, tp, required in _plan(typing.cast(Any, cls)):
        key = next((n for n in names if n in data), None)
        where = f"{path}.{names[0]}" if path else names[0]
        if key is None or (data[key] is None and not required):
            if required:
                raise BadCommand(f"{where}: required field is missing")
            continue
        kwargs[attr] = _coerce(data[key], tp, where)
    return cls(**kwargs)


def to_wire(obj: Any) -> Any:
    """The JSON form of a schema dataclass: wire names, None fields omitted unless required."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for attr, names, _tp, required in _plan(type(obj)):
            value = getattr(obj, attr)
            if value is not None or required:  # a required JSON value may be null (`custom.data`)
                out[names[0]] = to_wire(value)
        return out
    if isinstance(obj, tuple | list):
        return [to_wire(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    return obj
