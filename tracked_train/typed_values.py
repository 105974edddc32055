"""Typed values from YAML, environment variables and ``--set`` text: each checked against a field's type
(bool, int, float, str, Literal, Optional, tuple) and range, or a one-line :class:`ConfigError` naming the key,
the value, where it came from and what is allowed. The run config and a task's ``Settings`` share these rules.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from .errors import BadValue, ConfigError


def describe_type(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return describe_type(inner[0]) + " or empty"
    if origin is tuple:
        return "a list of numbers" if args and args[0] in (int, float) else "a list of strings"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[tp]


def number(text: str) -> Any:
    """``"16"`` -> 16, ``"1e-3"`` -> 0.001; anything else stays text (and fails the number check)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(key: str, value: Any, tp: Any, meta: Mapping[str, Any], source: str) -> Any:
    """Check ``value`` against the field's type and range; return the typed value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    given = value

    def bad(why: str) -> ConfigError:
        return BadValue(f"{source}: {key}={given!r} is invalid: {why}")

    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None or value == "":
            return None
        inner = next(a for a in args if a is not type(None))
        return coerce(key, value, inner, meta, source)
    if value is None:
        raise bad(f"expected {describe_type(tp)}, and this key cannot be empty")
    if origin is Literal:
        if value not in args:
            raise bad(f"expected {describe_type(tp)}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")] if value.strip() else []
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise bad("expected a list of strings, e.g. [a.txt, b.txt] or a.txt,b.txt")
        if not all(isinstance(i, (str, int, float)) and not isinstance(i, bool) for i in items):
            raise bad("expected a list of strings")
        item = args[0] if args and args[0] is not Ellipsis else str
        if item in (int, float):  # a task's tuple[int, ...] setting: each item checked like a number key
            return tuple(coerce(f"{key}[{n}]", i if not isinstance(i, str) else number(i), item, {}, source)
                         for n, i in enumerate(items))
        return tuple(str(i) for i in items)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value
    if tp is str:
        if isinstance(value, (dict, list)):
            raise bad("expected a string")
        return str(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise bad("expected an integer")
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                raise bad("expected a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("expected a number")
        value = float(value)
        if not math.isfinite(value):
            raise bad("expected a finite number")
    lo, hi, lo_open = meta.get("lo"), meta.get("hi"), meta.get("lo_open", False)
    if lo is not None and (value < lo or (lo_open and value == lo)) or hi is not None and value > hi:
        left = "(" if lo_open else "["
        lo_s, hi_s = (str(b) if isinstance(b, int) and abs(b) > 10**6 else f"{b:g}" if b is not None else ""
                      for b in (lo, hi))  # 2^63 - 1 in full, not 9.22337e+18
        if hi is None:
            raise bad(f"must be {'over' if lo_open else 'at least'} {lo_s}")
        if lo is None:
            raise bad(f"must be at most {hi_s}")
        raise bad(f"allowed range is {left}{lo_s}, {hi_s}]")
    return value


def coerce_fields(settings: type, values: Mapping[str, Any], prefix: str, owner: str,
                  sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Check ``values`` against the fields of the dataclass ``settings`` (a task's or a tracker's own settings),
    each named ``prefix + name`` in messages; ``owner`` ("task X", "tracker mlflow") says whose they are."""
    import dataclasses
    import difflib

    hints = typing.get_type_hints(settings)
    fields = {f.name: f for f in dataclasses.fields(settings)}
    out = {}
    for name, value in values.items():
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
            hint = (f" (did you mean '{prefix}{close[0]}'?)" if close else
                    f"; its settings are {', '.join(fields) or 'none'}")
            what = owner.split(" ", 1)[0]
            raise ConfigError(f"unknown {what} setting '{prefix}{name}' for {owner}{hint}")
        out[name] = coerce(f"{prefix}{name}", value, hints[name], fields[name].metadata,
                           (sources or {}).get(name, "config"))
    return out


def defaults_of(settings: type) -> dict[str, Any]:
    """Every field of the dataclass ``settings`` with its default, tuples as lists (as configs show them)."""
    import dataclasses

    made = settings()
    return {f.name: (list(v) if isinstance(v := getattr(made, f.name), tuple) else v)
            for f in dataclasses.fields(settings)}
