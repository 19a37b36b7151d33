"""Policy matchers (``toolcrib.gateway.trust.matchers``): JSON pointers, ``when`` operators, strict JSON.

Properties: ``validate_when`` accepts a table or raises :class:`PolicyRuleError`, nothing else; on a
validated table ``resolve_pointer`` + ``evaluate`` return True / False / None for any JSON document,
never raise; ``not_equals`` is the negation of ``equals`` on present values; ``min``/``max`` agree with
``>=``/``<=`` on finite numbers; an escaped string's regex matches the string (RE2, whole value);
every node of a document is reached by its RFC 6901 pointer; ``loads_json`` returns finite JSON or
raises ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import re2
from hypothesis import strategies as st

from tests.fuzz.engine import Target
from tests.fuzz.strategies import dumps, json_values, tricky_json, wrong
from toolcrib.gateway.trust.matchers import (
    MAX_REGEX_INPUT,
    MISSING,
    OPERATORS,
    PolicyRuleError,
    evaluate,
    loads_json,
    resolve_pointer,
    validate_when,
)


def escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def walk(doc: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, doc
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from walk(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from walk(value, (*path, str(i)))


parts = st.sampled_from(["0", "1", "01", "-", "~", "/", "~0", "~1", "~2", "a", "", " "]) | st.text(max_size=6)
pointers = st.one_of(
    st.lists(parts, max_size=4).map(lambda ps: "".join("/" + escape(p) for p in ps)),
    st.lists(parts, max_size=4).map(lambda ps: "".join("/" + p for p in ps)),
    st.text(max_size=12),
)
regexes = st.one_of(
    st.text(st.sampled_from(list("ab.*+?()[]{}|^$\\-0123dswDSWzZAbB=!<:P~/\n")), max_size=16),
    st.text(max_size=10),
    st.sampled_from(
        [
            "(a+)+$",
            "(?=a)",
            "(?<=a)b",
            "\\1",
            "a++",
            "\\Z",
            "\\z",
            "(?s).*",
            "[",
            "(?P<n>a)",
            "\\pL",
            "\\C",
            "a{1000}{1000}",
            "((a{100}){100}){100}",
            "(a|b)*c",
            "\ud800",
            "/etc/.*",
            "(?i)ABC",
            "\\x{110000}",
        ]
    ),
)
numbers = st.integers() | st.floats(allow_nan=False, allow_infinity=False)


def expected_for(op: str) -> st.SearchStrategy[Any]:
    good: st.SearchStrategy[Any] = {
        "regex": regexes,
        "not_regex": regexes,
        "one_of": st.lists(wrong, max_size=4),
        "not_one_of": st.lists(wrong, max_size=4),
        "min": numbers,
        "max": numbers,
        "exists": st.booleans(),
    }.get(op, json_values)
    return good | wrong | st.sampled_from([math.nan, math.inf, -math.inf])


ops = st.sampled_from(sorted(OPERATORS)) | st.text(max_size=8)
op_tables = st.lists(ops.flatmap(lambda op: st.tuples(st.just(op), expected_for(op))), max_size=4).map(dict)
whens = st.dictionaries(pointers, op_tables | wrong, max_size=3)
documents = json_values
raw_json = st.one_of(
    json_values.map(dumps),
    tricky_json,
    st.binary(max_size=40),
    st.from_regex(r"-?[0-9]{1,400}(\.[0-9]+)?([eE][+-]?[0-9]{1,4})?", fullmatch=True).map(str.encode),
)
strings = st.text(max_size=40) | st.text(max_size=40).map(lambda s: s + "\n") | st.just("x" * (MAX_REGEX_INPUT + 1))


def check(case: tuple[dict[str, Any], Any, bytes, str, tuple[Any, Any]]) -> None:
    when, doc, raw, text, (a, b) = case
    try:
        validate_when(when)
        valid = True
    except PolicyRuleError:
        valid = False
    for pointer, table in when.items():
        try:
            value = resolve_pointer(doc, pointer)
        except PolicyRuleError:
            assert not valid, f"validate_when accepted {pointer!r} but resolve_pointer refused it"
            continue
        if not valid:
            continue
        for op, expected in table.items():
            result = evaluate(op, value, expected)
            assert result in (True, False, None), result
            if op == "equals" and value is not MISSING:
                assert evaluate("not_equals", value, expected) is (not result)
    for path, node in walk(doc):
        assert resolve_pointer(doc, "".join("/" + escape(p) for p in path)) is node
    expect = len(text) <= MAX_REGEX_INPUT or None  # st.text() draws no lone surrogates
    assert evaluate("regex", text, re2.escape(text)) is expect
    assert evaluate("min", a, b) is (a >= b) and evaluate("max", a, b) is (a <= b)
    try:
        parsed = loads_json(raw)
    except ValueError:
        return
    for _, node in walk(parsed):
        assert not (isinstance(node, float) and not math.isfinite(node)), raw[:100]


TARGET = Target("policy", st.tuples(whens, documents, raw_json, strings, st.tuples(numbers, numbers)), check)
