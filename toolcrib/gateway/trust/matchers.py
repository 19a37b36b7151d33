"""Argument matchers of policy rules: RFC 6901 JSON pointers and the ``when`` operators.

Pure functions over JSON values, with no knowledge of principals, tools or config; policy
(:mod:`toolcrib.gateway.trust.policy`) composes them, and config validates rules with
:func:`validate_when` at load time.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

OPERATORS = frozenset(
    {"equals", "not_equals", "one_of", "not_one_of", "regex", "not_regex", "min", "max", "contains", "exists"}
)
MAX_REGEX_INPUT = 4096
"""Strings longer than this are not matched against a regex condition (undecidable instead)."""

MISSING = object()


class PolicyRuleError(ValueError):
    """A rule's ``when`` table is invalid (unknown operator, bad pointer, unsafe regex)."""


def validate_when(when: Mapping[str, Mapping[str, Any]]) -> None:
    """Check a rule's ``when`` table at config load; raise :class:`PolicyRuleError` on any problem."""
    for pointer, ops in when.items():
        _split_pointer(pointer)
        if not isinstance(ops, Mapping) or not ops:
            raise PolicyRuleError(f"condition on {pointer!r} must be a non-empty table of operators")
        for op, expected in ops.items():
            if op not in OPERATORS:
                raise PolicyRuleError(f"unknown operator {op!r} on {pointer!r}; use one of {sorted(OPERATORS)}")
            if op in ("regex", "not_regex"):
                if not isinstance(expected, str):
                    raise PolicyRuleError(f"{op} on {pointer!r} must be a string")
                compile_regex(expected)
            elif op in ("one_of", "not_one_of") and not isinstance(expected, list):
                raise PolicyRuleError(f"{op} on {pointer!r} must be an array")
            elif op in ("min", "max") and (isinstance(expected, bool) or not isinstance(expected, int | float)):
                raise PolicyRuleError(f"{op} on {pointer!r} must be a number")
            elif op == "exists" and not isinstance(expected, bool):
                raise PolicyRuleError(f"exists on {pointer!r} must be true or false")


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile once (cached); refuse nested unbounded repetition such as ``(a+)+`` (catastrophic)."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise PolicyRuleError(f"invalid regex {pattern!r}: {exc}") from None
    parsed = _parse(pattern)
    ignorecase = bool(parsed.state.flags & re.IGNORECASE)
    if _dangerous(parsed, ignorecase):
        raise PolicyRuleError(
            f"regex {pattern!r} nests unbounded repetition (like (a+)+) and can take exponential time; "
            "rewrite it so each repeated group starts with a character its inner repetition cannot match"
        )
    return compiled


def _parse(pattern: str) -> Any:
    from re import _parser  # type: ignore[attr-defined]

    return _parser.parse(pattern)


_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
_CATEGORIES = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
}


def _children(op: str, av: Any) -> list[Any]:
    if op in _REPEATS:
        return [av[2]]
    if op == "SUBPATTERN":
        return [av[-1]]
    if op == "BRANCH":
        return list(av[1])
    if op in ("ASSERT", "ASSERT_NOT"):
        return [av[1]]
    return []


def _unbounded_repeats(items: Any) -> list[Any]:
    found = []
    for op, av in items:
        if str(op) in _REPEATS and av[1] > 1:
            found.append(av[2])
        for child in _children(str(op), av):
            found.extend(_unbounded_repeats(child))
    return found


def _dangerous(items: Any, ignorecase: bool) -> bool:
    """Heuristic star-height check: a repeated body holding another unbounded repeat is dangerous
    unless the body starts with a literal that none of its inner repeats can match (``(-[a-z]+)*``)."""
    for op, av in items:
        name = str(op)
        if name in _REPEATS and av[1] > 1:
            body = av[2]
            if _unbounded_repeats(body) and (ignorecase or not _delimited(body)):
                return True
        if any(_dangerous(child, ignorecase) for child in _children(name, av)):
            return True
    return False


def _delimited(body: Any) -> bool:
    items = list(body)
    while len(items) == 1 and str(items[0][0]) == "SUBPATTERN":
        items = list(items[0][1][-1])
    if not items or str(items[0][0]) != "LITERAL":
        return False
    delimiter = chr(items[0][1])
    for inner in _unbounded_repeats(items[1:]):
        inner_items = list(inner)
        if len(inner_items) != 1 or _char_item_may_match(inner_items[0], delimiter):
            return False
    return True


def _char_item_may_match(item: Any, ch: str) -> bool:
    op, av = str(item[0]), item[1]
    if op == "LITERAL":
        return bool(av == ord(ch))
    if op == "NOT_LITERAL":
        return bool(av != ord(ch))
    if op != "IN":
        return True
    negate = False
    hit = False
    for sub_op, sub_av in av:
        kind = str(sub_op)
        if kind == "NEGATE":
            negate = True
        elif kind == "LITERAL":
            hit = hit or sub_av == ord(ch)
        elif kind == "RANGE":
            hit = hit or sub_av[0] <= ord(ch) <= sub_av[1]
        elif kind == "CATEGORY" and str(sub_av) in _CATEGORIES:
            hit = hit or re.fullmatch(_CATEGORIES[str(sub_av)], ch) is not None
        else:
            return True
    return hit != negate


def _split_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PolicyRuleError(f"condition key {pointer!r} must be a JSON pointer starting with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def resolve_pointer(document: Any, pointer: str) -> Any:
    """Resolve an RFC 6901 pointer; return a private sentinel when any step is missing."""
    current = document
    for part in _split_pointer(pointer):
        if isinstance(current, Mapping):
            if part not in current:
                return MISSING
            current = current[part]
        elif isinstance(current, list):
            if not part.isdigit() or (part != "0" and part.startswith("0")) or int(part) >= len(current):
                return MISSING
            current = current[int(part)]
        else:
            return MISSING
    return current


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    both_maps = isinstance(a, Mapping) and isinstance(b, Mapping)
    both_lists = isinstance(a, list | tuple) and isinstance(b, list | tuple)
    if type(a) is not type(b) and not both_maps and not both_lists:
        return False
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def evaluate(op: str, value: Any, expected: Any) -> bool | None:
    """True, False, or None when the value's type makes the condition undecidable."""
    if op == "exists":
        return (value is not MISSING) == bool(expected)
    if value is MISSING:
        return False
    if op == "equals":
        return _json_equal(value, expected)
    if op == "not_equals":
        return not _json_equal(value, expected)
    if op == "one_of":
        return any(_json_equal(value, item) for item in expected)
    if op == "not_one_of":
        return not any(_json_equal(value, item) for item in expected)
    if op in ("min", "max"):
        if not _is_number(value):
            return None
        return bool(value >= expected) if op == "min" else bool(value <= expected)
    if op in ("regex", "not_regex"):
        if not isinstance(value, str) or len(value) > MAX_REGEX_INPUT:
            return None
        hit = compile_regex(expected).fullmatch(value) is not None
        return hit if op == "regex" else not hit
    if op == "contains":
        if isinstance(value, str):
            return isinstance(expected, str) and expected in value
        if isinstance(value, list):
            return any(_json_equal(item, expected) for item in value)
        return None
    return None
