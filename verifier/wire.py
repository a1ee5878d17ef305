"""JSON for the project's wire records: frozen dataclasses that build and parse with one definition.

A record is a frozen dataclass whose fields are str, int, float, bool, bytes (base64 in JSON),
another record, `X | None`, `tuple[X, ...]` or `dict[str, X]`, or a class with its own
`to_json()` / `from_json(obj, where)` (evidence, DSSE envelopes). Its JSON names are the fields'
names in camelCase unless a field's metadata says `{"json": "name"}`; a field whose metadata says
`{"optional": True}` is left out when None and may be absent. Parsing is strict: unknown keys,
missing keys, wrong types, booleans for numbers and non-finite floats are refused with the path of
the offending value, so that builder and checker can never disagree on a field.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import cache
from typing import Any, TypeVar

from verifier.errors import ParseError
from verifier.models import b64d, b64e

T = TypeVar("T")


def json_name(f: dataclasses.Field) -> str:
    if "json" in f.metadata:
        return f.metadata["json"]
    head, *rest = f.name.split("_")
    return head + "".join(p.title() for p in rest)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def to_json(record: Any) -> Any:
    """The JSON value of a record (or of any value a record field may hold)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {json_name(f): _value(getattr(record, f.name)) for f in dataclasses.fields(record)
                if not (f.metadata.get("optional") and getattr(record, f.name) is None)}
    return _value(record)


def _value(record: Any) -> Any:
    if "to_json" in vars(type(record)):
        return record.to_json()
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return to_json(record)
    if isinstance(record, bytes):
        return b64e(record)
    if isinstance(record, tuple):
        return [_value(v) for v in record]
    if isinstance(record, dict):
        return {k: _value(v) for k, v in record.items()}
    return record


def from_json(cls: type[T], obj: Any, where: str) -> T:
    """Parse `obj` into record class `cls`; ParseError names `where` and the path of any problem."""
    return _record(cls, obj, where)


def _record(tp: Any, obj: Any, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ParseError(f"{where}: expected an object")
    hints = _hints(tp)
    names = {json_name(f): f for f in dataclasses.fields(tp)}
    unknown = sorted(set(obj) - set(names))
    if unknown:
        raise ParseError(f"{where}: unknown field(s) {', '.join(map(repr, unknown[:10]))}")
    values = {}
    for name, f in names.items():
        if name not in obj and not f.metadata.get("optional"):
            raise ParseError(f"{where}.{name} is missing")
        values[f.name] = _parse(hints[f.name], obj.get(name), f"{where}.{name}")
    return tp(**values)


def _parse(tp: Any, obj: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if obj is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(inner, obj, where)
    if isinstance(tp, type) and "from_json" in vars(tp):
        return tp.from_json(obj, where)
    if dataclasses.is_dataclass(tp):
        return _record(tp, obj, where)
    if origin is tuple:
        if not isinstance(obj, list):
            raise ParseError(f"{where}: expected a list")
        (inner, _) = typing.get_args(tp)
        return tuple(_parse(inner, v, f"{where}[{i}]") for i, v in enumerate(obj))
    if origin is dict:
        if not isinstance(obj, dict):
            raise ParseError(f"{where}: expected an object")
        _, inner = typing.get_args(tp)
        return {k: _parse(inner, v, f"{where}.{k}") for k, v in obj.items()}
    if tp is bytes:
        return b64d(obj, where)
    if tp is float:
        if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj):
            raise ParseError(f"{where}: expected a finite number")
        return float(obj)
    if tp in (str, int, bool):
        if not isinstance(obj, tp) or (tp is int and isinstance(obj, bool)):
            raise ParseError(f"{where}: expected {tp.__name__}")
        return obj
    if tp is Any:
        return obj
    raise TypeError(f"wire records cannot hold {tp!r}")  # a programming error in a record definition
