"""OpenAI's attribute filters for vector store search, and the attributes they test.

A filter is OpenAI's JSON: a comparison ``{"type": "eq"|"ne"|"gt"|"gte"|"lt"|"lte"|"in"|"nin",
"key": ..., "value": ...}`` or a compound ``{"type": "and"|"or", "filters": [...]}``, nested to any
depth up to ``MAX_DEPTH``. ``compile_filter(obj)`` validates it once (``FilterError`` with the path
of the offending field in ``.param``) and returns a ``Filter`` whose ``matches(attributes)`` is
evaluated per file before ranking.

Semantics: ``eq``/``ne`` compare values of the same type (a boolean is never a number);
``gt``/``gte``/``lt``/``lte`` order numbers with numbers and strings with strings (ISO dates order
as strings), other pairs do not match; ``in``/``nin`` take a list of values. An attribute the file
does not have fails every comparison except ``ne`` and ``nin``, which it passes.

``validate_attributes`` checks a file's attributes as OpenAI does: at most 16 keys of at most 64
characters, values strings (at most 512 characters), numbers or booleans.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
COMPOUNDS = ("and", "or")
MAX_DEPTH = 16
MAX_NODES = 512
MAX_ATTRIBUTES = 16
MAX_KEY_CHARS = 64
MAX_STRING_CHARS = 512

Scalar = str | int | float | bool


class FilterError(ValueError):
    """A filter or attributes that do not validate; ``param`` locates the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "str"
    return None


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


@dataclass(frozen=True, slots=True)
class Comparison:
    type: str
    key: str
    value: Scalar | tuple[Scalar, ...]

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        if self.key not in attributes:
            return self.type in ("ne", "nin")
        have = attributes[self.key]
        kind = _kind(have)
        if self.type in ("in", "nin"):
            assert isinstance(self.value, tuple)
            found = any(_kind(v) == kind and v == have for v in self.value)
            return found if self.type == "in" else not found
        same = _kind(self.value) == kind
        if self.type == "eq":
            return same and have == self.value
        if self.type == "ne":
            return not (same and have == self.value)
        if not same or kind == "bool":
            return False
        return _ORDER[self.type](have, self.value)


@dataclass(frozen=True, slots=True)
class Compound:
    type: str  # and, or
    filters: tuple[Filter, ...]

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        if self.type == "and":
            return all(f.matches(attributes) for f in self.filters)
        return any(f.matches(attributes) for f in self.filters)


Filter = Comparison | Compound


def _scalar(value: Any, param: str) -> Scalar:
    kind = _kind(value)
    if kind is None:
        raise FilterError(
            f"Invalid type for '{param}': expected a string, number or boolean, "
            f"but got {type(value).__name__}.",
            param,
        )
    if kind == "number" and not math.isfinite(value):
        raise FilterError(f"Invalid value for '{param}': numbers must be finite.", param)
    return value  # type: ignore[no-any-return]


def compile_filter(obj: Any, param: str = "filters") -> Filter:
    """Validate an OpenAI filter object into a ``Filter``; ``FilterError`` says what is wrong where."""
    count = [0]
    return _compile(obj, param, 1, count)


def _compile(obj: Any, param: str, depth: int, count: list[int]) -> Filter:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise FilterError(f"Invalid '{param}': a filter may have at most {MAX_NODES} conditions.", param)
    if depth > MAX_DEPTH:
        raise FilterError(f"Invalid '{param}': filters may nest at most {MAX_DEPTH} levels deep.", param)
    if not isinstance(obj, dict):
        raise FilterError(f"Invalid type for '{param}': expected an object.", param)
    kind = obj.get("type")
    if kind in COMPOUNDS:
        for key in obj:
            if key not in ("type", "filters"):
                raise FilterError(f"Unknown parameter: '{param}.{key}'.", f"{param}.{key}")
        subs = obj.get("filters")
        if not isinstance(subs, list) or not subs:
            raise FilterError(
                f"Invalid '{param}.filters': a compound filter needs a non-empty list of filters.",
                f"{param}.filters",
            )
        return Compound(
            kind, tuple(_compile(s, f"{param}.filters[{i}]", depth + 1, count) for i, s in enumerate(subs))
        )
    if kind not in COMPARISONS:
        raise FilterError(
            f"Invalid value for '{param}.type': expected one of {', '.join(COMPARISONS + COMPOUNDS)}, "
            f"but got {kind!r}.",
            f"{param}.type",
        )
    for key in obj:
        if key not in ("type", "key", "value"):
            raise FilterError(f"Unknown parameter: '{param}.{key}'.", f"{param}.{key}")
    key = obj.get("key")
    if not isinstance(key, str) or not key:
        raise FilterError(f"Invalid '{param}.key': expected a non-empty string.", f"{param}.key")
    if "value" not in obj:
        raise FilterError(f"Missing required parameter: '{param}.value'.", f"{param}.value")
    value = obj["value"]
    vp = f"{param}.value"
    if kind in ("in", "nin"):
        if not isinstance(value, list) or not value:
            raise FilterError(f"Invalid '{vp}': '{kind}' needs a non-empty list of values.", vp)
        return Comparison(kind, key, tuple(_scalar(v, f"{vp}[{i}]") for i, v in enumerate(value)))
    if isinstance(value, list):
        raise FilterError(f"Invalid '{vp}': a list of values needs 'in' or 'nin', not '{kind}'.", vp)
    scalar = _scalar(value, vp)
    if kind in _ORDER and _kind(scalar) == "bool":
        raise FilterError(f"Invalid '{vp}': '{kind}' compares numbers or strings, not booleans.", vp)
    return Comparison(kind, key, scalar)


def validate_attributes(attributes: Any, param: str = "attributes") -> dict[str, Scalar]:
    """A file's attributes as OpenAI accepts them (``None`` is none)."""
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise FilterError(f"Invalid type for '{param}': expected an object.", param)
    if len(attributes) > MAX_ATTRIBUTES:
        raise FilterError(f"Invalid '{param}': at most {MAX_ATTRIBUTES} attributes are allowed.", param)
    out: dict[str, Scalar] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            raise FilterError(
                f"Invalid '{param}': keys must be strings of 1 to {MAX_KEY_CHARS} characters.", param
            )
        kp = f"{param}.{key}"
        scalar = _scalar(value, kp)
        if isinstance(scalar, str) and len(scalar) > MAX_STRING_CHARS:
            raise FilterError(f"Invalid '{kp}': strings may have at most {MAX_STRING_CHARS} characters.", kp)
        out[key] = scalar
    return out
