"""OpenAI's attribute filters: every operator, types, missing keys, compounds, validation errors."""

from __future__ import annotations

from typing import Any

import pytest

from m2a.data.filters import MAX_DEPTH, FilterError, compile_filter, validate_attributes

DOC = {"region": "eu", "year": 2024, "price": 9.5, "public": True, "date": "2024-03-01", "team": "hr"}


def m(obj: dict[str, Any], attrs: dict[str, Any] = DOC) -> bool:
    return compile_filter(obj).matches(attrs)


def c(op: str, key: str, value: Any) -> dict[str, Any]:
    return {"type": op, "key": key, "value": value}


@pytest.mark.parametrize(
    ("op", "key", "value", "expected"),
    [
        ("eq", "region", "eu", True), ("eq", "region", "us", False), ("eq", "year", 2024, True),
        ("eq", "year", 2024.0, True), ("eq", "public", True, True), ("eq", "public", 1, False),
        ("eq", "year", "2024", False),
        ("ne", "region", "us", True), ("ne", "region", "eu", False), ("ne", "year", "2024", True),
        ("gt", "year", 2023, True), ("gt", "year", 2024, False), ("gte", "year", 2024, True),
        ("gte", "price", 9.6, False), ("lt", "price", 10, True), ("lt", "price", 9.5, False),
        ("lte", "price", 9.5, True), ("lte", "year", 2023, False),
        ("gt", "date", "2024-01-31", True), ("lt", "date", "2024-01-31", False),  # ISO dates as strings
        ("gt", "year", "2000", False), ("lt", "region", 5, False),  # mixed types never order
        ("in", "region", ["us", "eu"], True), ("in", "region", ["us", "apac"], False),
        ("in", "year", [2023, 2024], True), ("in", "public", [1], False),
        ("nin", "region", ["us", "apac"], True), ("nin", "region", ["eu"], False),
    ],
)  # fmt: skip
def test_comparisons(op: str, key: str, value: Any, expected: bool) -> None:
    assert m(c(op, key, value)) is expected


@pytest.mark.parametrize(("op", "expected"), [("eq", False), ("ne", True), ("gt", False), ("lte", False),
                                              ("in", False), ("nin", True)])  # fmt: skip
def test_missing_attribute(op: str, expected: bool) -> None:
    value: Any = ["x"] if op in ("in", "nin") else "x"
    assert m(c(op, "absent", value)) is expected


def test_compound_and_or_nested() -> None:
    eu_recent = {"type": "and", "filters": [c("eq", "region", "eu"), c("gte", "year", 2024)]}
    assert m(eu_recent)
    assert not m({"type": "and", "filters": [c("eq", "region", "eu"), c("gte", "year", 2025)]})
    assert m({"type": "or", "filters": [c("eq", "region", "us"), c("eq", "team", "hr")]})
    assert not m({"type": "or", "filters": [c("eq", "region", "us"), c("eq", "team", "it")]})
    nested = {
        "type": "and",
        "filters": [
            {"type": "or", "filters": [c("eq", "team", "it"), eu_recent]},
            {"type": "or", "filters": [c("eq", "public", True), c("lt", "price", 1)]},
        ],
    }
    assert m(nested)
    assert not m(nested, {**DOC, "public": False})
    assert not m(nested, {**DOC, "region": "us"})


def test_deep_nesting_up_to_the_limit() -> None:
    f: dict[str, Any] = c("eq", "region", "eu")
    for _ in range(MAX_DEPTH - 1):
        f = {"type": "and", "filters": [f]}
    assert m(f)
    with pytest.raises(FilterError, match=f"at most {MAX_DEPTH} levels"):
        compile_filter({"type": "or", "filters": [f]})


@pytest.mark.parametrize(
    ("obj", "param", "message"),
    [
        ("region = eu", "filters", "expected an object"),
        ({"type": "equals", "key": "a", "value": 1}, "filters.type", "expected one of eq, ne"),
        ({"key": "a", "value": 1}, "filters.type", "but got None"),
        ({"type": "eq", "value": 1}, "filters.key", "non-empty string"),
        ({"type": "eq", "key": "", "value": 1}, "filters.key", "non-empty string"),
        ({"type": "eq", "key": "a"}, "filters.value", "Missing required parameter"),
        ({"type": "eq", "key": "a", "value": ["x"]}, "filters.value", "needs 'in' or 'nin'"),
        ({"type": "in", "key": "a", "value": "x"}, "filters.value", "non-empty list"),
        ({"type": "nin", "key": "a", "value": []}, "filters.value", "non-empty list"),
        (
            {"type": "in", "key": "a", "value": ["x", {"y": 1}]},
            "filters.value[1]",
            "string, number or boolean",
        ),
        ({"type": "eq", "key": "a", "value": None}, "filters.value", "string, number or boolean"),
        ({"type": "eq", "key": "a", "value": float("nan")}, "filters.value", "finite"),
        ({"type": "gt", "key": "a", "value": True}, "filters.value", "not booleans"),
        ({"type": "eq", "key": "a", "value": 1, "extra": 2}, "filters.extra", "Unknown parameter"),
        ({"type": "and", "filters": []}, "filters.filters", "non-empty list"),
        ({"type": "or"}, "filters.filters", "non-empty list"),
        (
            {"type": "and", "filters": [c("eq", "a", 1), {"type": "bad"}]},
            "filters.filters[1].type",
            "expected one",
        ),
        ({"type": "and", "filters": [c("eq", "a", 1)], "key": "a"}, "filters.key", "Unknown parameter"),
    ],
)
def test_bad_filters(obj: Any, param: str, message: str) -> None:
    with pytest.raises(FilterError, match=message.replace("[", r"\[")) as err:
        compile_filter(obj)
    assert err.value.param == param


def test_too_many_conditions() -> None:
    with pytest.raises(FilterError, match="at most 512 conditions"):
        compile_filter({"type": "or", "filters": [c("eq", "a", i) for i in range(600)]})


def test_validate_attributes() -> None:
    assert validate_attributes(None) == {}
    assert validate_attributes({"a": "x", "n": 1.5, "b": False}) == {"a": "x", "n": 1.5, "b": False}
    with pytest.raises(FilterError, match="at most 16 attributes"):
        validate_attributes({f"k{i}": i for i in range(17)})
    with pytest.raises(FilterError, match="1 to 64 characters"):
        validate_attributes({"k" * 65: 1})
    with pytest.raises(FilterError, match="at most 512 characters") as err:
        validate_attributes({"note": "x" * 513})
    assert err.value.param == "attributes.note"
    with pytest.raises(FilterError, match="string, number or boolean"):
        validate_attributes({"tags": ["a", "b"]})
    with pytest.raises(FilterError, match="expected an object"):
        validate_attributes(["a"])
