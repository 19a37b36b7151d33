"""Argument matchers of policy rules: RFC 6901 JSON pointers, the ``when`` operators, strict JSON.

Pure functions over JSON values, with no knowledge of principals, tools or config; policy
(:mod:`toolcrib.gateway.trust.policy`) composes them, and config validates rules with
:func:`validate_when` at load time.

Regular expressions use RE2 (``google-re2``): matching takes time linear in the input, so no
pattern can stall the gateway (no backtracking, hence no ReDoS), and patterns that need
backtracking (backreferences, lookaround) are refused at config load. A ``regex`` condition holds
when the pattern matches the **whole** value (``fullmatch``) with ``.`` matching newlines too
(``(?s)``, RE2's ``dot_nl``), so ``"/etc/.*"`` catches ``"/etc/passwd\\n"``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import orjson
import re2

OPERATORS = frozenset(
    {"equals", "not_equals", "one_of", "not_one_of", "regex", "not_regex", "min", "max", "contains", "exists"}
)
MAX_REGEX_INPUT = 65536
"""Strings longer than this many characters are not matched against a regex (undecidable instead).

RE2 is linear in the input, but its constant grows with the pattern: a pathological pattern such as
``.*a.{200}`` costs about 1-2 microseconds per character (measured: 64 KiB in ~0.14 s, 1 MiB in
~1 s), ordinary patterns a few nanoseconds. 64 KiB bounds the worst case per condition to a fraction
of a second on the event loop while covering typical path, command and query arguments; a longer
value makes ``deny``/``approve`` rules match and ``allow`` rules not, so it never slips past."""

RE2_SYNTAX = "https://github.com/google/re2/wiki/Syntax"
MISSING = object()


class PolicyRuleError(ValueError):
    """A rule's ``when`` table is invalid (unknown operator, bad pointer, regex outside RE2 syntax)."""


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
            elif op in ("min", "max") and not _is_finite_number(expected):
                raise PolicyRuleError(f"{op} on {pointer!r} must be a finite number")
            elif op == "exists" and not isinstance(expected, bool):
                raise PolicyRuleError(f"exists on {pointer!r} must be true or false")


def _options() -> Any:
    options = re2.Options()
    options.dot_nl = True  # (?s): '.' matches '\n' as well
    options.log_errors = False
    options.never_capture = True
    return options


_OPTIONS = _options()


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> Any:
    """Compile an RE2 pattern once (cached) with ``.`` matching newlines; returns an ``re2`` regexp.

    Raises :class:`PolicyRuleError` (one line) when the pattern is not valid RE2 syntax, e.g. a
    backreference ``\\1``, lookaround ``(?=``, possessive ``a++``, Python's ``\\Z`` (RE2: ``\\z``),
    or a pattern too large for RE2's memory budget.
    """
    try:
        return re2.compile(pattern, _OPTIONS)
    except (re2.error, UnicodeEncodeError) as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise PolicyRuleError(
            f"regex {pattern!r} is not valid RE2 syntax ({str(detail)!r}); policy regexes must use RE2 syntax "
            f"(no backreferences or lookaround, \\z not \\Z): see {RE2_SYNTAX}"
        ) from None


def regex_fullmatch(pattern: str, value: str) -> bool | None:
    """Whether ``pattern`` (RE2, DOTALL) matches all of ``value``; None when undecidable.

    Undecidable: ``value`` is longer than :data:`MAX_REGEX_INPUT` characters, or holds a lone
    surrogate (possible in JSON via ``"\\ud800"``) that has no UTF-8 encoding.
    """
    if len(value) > MAX_REGEX_INPUT:
        return None
    try:
        return compile_regex(pattern).fullmatch(value) is not None
    except UnicodeEncodeError:
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"JSON number {name} is not allowed (RFC 8259 has no NaN or Infinity); send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"JSON number {text[:40]} overflows a 64-bit float; send a finite number")
    return value


_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")  # linear: one fixed-width class, no backtracking
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")


def _long_digits(data: bytes | str) -> bool:
    """Whether a document holds 19 digits in a row: an integer orjson might not keep exact (below
    -2**63 or above 2**64 - 1; it reads those as floats), or a long fraction."""
    pattern = _LONG_DIGITS_TEXT if isinstance(data, str) else _LONG_DIGITS_BYTES
    return pattern.search(data) is not None  # type: ignore[arg-type]


def loads_json(data: bytes | str) -> Any:
    """Parse JSON like :func:`json.loads`, but refuse what RFC 8259 does not allow as a number.

    ``NaN``, ``Infinity``, ``-Infinity`` (which :mod:`json` accepts) and number literals that
    overflow to infinity (``1e400``) raise :class:`ValueError` with a one-line message, as do a
    string holding a lone surrogate (``"\\ud800"``: valid JSON syntax but not Unicode text; refused
    as orjson and pydantic, the SDK's parser, refuse it, so no later layer meets a string that has no
    UTF-8 form) and nesting too deep for the parser (instead of :class:`RecursionError`). Everything
    else, including errors (:class:`json.JSONDecodeError`, :class:`UnicodeDecodeError`), is as
    :func:`json.loads`.
    """
    if not _long_digits(data):  # orjson reads an integer beyond 64 bits as a float: json keeps it exact
        try:
            return orjson.loads(data)  # the fast path: strict RFC 8259 already (no NaN, Infinity, 1e400)
        except orjson.JSONDecodeError:
            pass  # json decides, with its own acceptance (UTF-16 bytes) and messages
    try:
        value = json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON nested too deeply; flatten the document") from None
    if _holds_lone_surrogate(value):
        raise ValueError(
            "JSON string holds a lone surrogate (a \\ud800-\\udfff escape without its pair), which is not "
            "Unicode text (RFC 8259 section 8.2, RFC 7493 section 2.1); send valid UTF-8"
        )
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _holds_lone_surrogate(value: Any) -> bool:
    """Whether any string of a parsed document (keys included) holds a lone surrogate; iterative, so
    a deeply nested document costs no recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            for key, inner in item.items():
                if _SURROGATE.search(key):
                    return True
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _split_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PolicyRuleError(f"condition key {pointer!r} must be a JSON pointer starting with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def resolve_pointer(document: Any, pointer: str) -> Any:
    """Resolve an RFC 6901 pointer (``~1`` is ``/``, ``~0`` is ``~``; array indexes are decimal
    without leading zeros); return the private sentinel :data:`MISSING` when any step is missing."""
    current = document
    for part in _split_pointer(pointer):
        if isinstance(current, Mapping):
            if part not in current:
                return MISSING
            current = current[part]
        elif isinstance(current, list):
            if not _is_index(part) or int(part) >= len(current):
                return MISSING
            current = current[int(part)]
        else:
            return MISSING
    return current


def _is_index(part: str) -> bool:
    return part.isascii() and part.isdigit() and (part == "0" or not part.startswith("0"))


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


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def evaluate(op: str, value: Any, expected: Any) -> bool | None:
    """True, False, or None when the value makes the condition undecidable.

    ``value`` is a resolved JSON value or :data:`MISSING`. Undecidable: ``min``/``max`` on anything
    but a finite number (``true``, a string, NaN, an infinity), ``regex``/``not_regex`` on a
    non-string or a string :func:`regex_fullmatch` cannot decide, ``contains`` on a non-string
    non-array. Equality follows JSON typing (``true`` never equals ``1``; ``1`` equals ``1.0``).
    """
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
        if not _is_finite_number(value):
            return None
        return bool(value >= expected) if op == "min" else bool(value <= expected)
    if op in ("regex", "not_regex"):
        if not isinstance(value, str):
            return None
        hit = regex_fullmatch(expected, value)
        if hit is None:
            return None
        return hit if op == "regex" else not hit
    if op == "contains":
        if isinstance(value, str):
            return isinstance(expected, str) and expected in value
        if isinstance(value, list):
            return any(_json_equal(item, expected) for item in value)
        return None
    return None
