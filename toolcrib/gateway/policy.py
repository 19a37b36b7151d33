"""Who may call which tool with which arguments: a pure function of principal, call and rules.

Evaluation is **first match wins**: rules are tried in the order they appear in the TOML file and
the first rule that matches the call decides. Put narrow rules (a specific argument, a specific
principal) before broad ones. When no rule matches, the configured default decides and the
decision names the rule ``"default"``.

A rule matches a call when all of these hold:

* ``tools``: one of its globs (``fnmatch`` syntax, case-sensitive) matches the namespaced tool name
  (``git__git_push``); the default ``["*"]`` matches every tool.
* ``principals`` / ``groups``: a rule naming neither applies to everyone; otherwise the caller must
  be listed in ``principals`` *or* belong to one of ``groups``. A ``principals`` entry is either a
  bare name (``"ci"``, any kind) or a qualified ``"KIND:NAME"`` (``"key:ci"``, ``"oauth:alice"``);
  prefer the qualified form when API keys and OAuth subjects share a namespace.
* ``when``: every condition holds. Keys are JSON pointers (RFC 6901) into the arguments, values
  are tables of operators, all of which must hold: ``equals``, ``not_equals``, ``one_of``,
  ``not_one_of``, ``regex`` (``re.fullmatch`` on a string), ``not_regex``, ``min``, ``max``
  (numbers, inclusive), ``contains`` (substring of a string or element of an array), ``exists``.

Conditions are evaluated in three values. A pointer that does not resolve makes a condition false
(``exists = false`` true). A value of the wrong type (``min`` on a string, ``regex`` on a number, a
string longer than :data:`MAX_REGEX_INPUT`) is *undecidable*: it counts as a match for ``deny``
and ``approve`` rules and as no match for ``allow`` rules, so an odd argument never slips past a
restriction. Comparisons follow JSON typing: ``true`` never equals ``1``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from toolcrib.config import GatewayConfig, PolicyConfig, PolicyRule

Action = Literal["allow", "deny", "approve"]
OPERATORS = frozenset(
    {"equals", "not_equals", "one_of", "not_one_of", "regex", "not_regex", "min", "max", "contains", "exists"}
)
MAX_REGEX_INPUT = 4096
"""Strings longer than this are not matched against a regex condition (undecidable instead)."""

_MISSING = object()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``groups`` drive policy; ``scopes`` come from an OAuth token."""

    name: str
    kind: Literal["operator", "key", "oauth", "anonymous"]
    groups: frozenset[str] = field(default_factory=frozenset)
    scopes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`; ``rule`` is the id of the rule that made it, or ``"default"``."""

    action: Action
    rule: str
    reason: str


class PolicyRuleError(ValueError):
    """A rule's ``when`` table is invalid (unknown operator, bad pointer, unsafe regex)."""


def decide(
    principal: Principal,
    tool: str,
    arguments: Mapping[str, Any],
    rules: Sequence[PolicyRule],
    default: str,
) -> Decision:
    """Decide a call: the first matching rule wins, else ``default`` (rule ``"default"``)."""
    for rule in rules:
        if not _applies(rule, principal, tool):
            continue
        matched, why = _conditions_hold(rule, arguments)
        if matched:
            reason = f"rule {rule.id!r} matched {tool}" + (f" ({why})" if why else "")
            return Decision(rule.action, rule.id, reason)
    action = _as_action(default)
    return Decision(action, "default", f"no rule matched {tool}; default is {action}")


def allowed(principal: Principal, tool: str, rules: Sequence[PolicyRule], default: str) -> bool:
    """Whether ``tool`` may be shown to ``principal`` (search results, ``tools/list``).

    A tool is listable unless every possible call to it is denied. Walking the rules in order, a
    rule with ``when`` conditions only catches some argument sets: a conditional ``allow`` or
    ``approve`` makes the tool listable (assuming its conditions are satisfiable), a conditional
    ``deny`` lets the remaining argument sets fall through. The first unconditional rule, or the
    default, settles the rest: listable unless it denies.
    """
    for rule in rules:
        if not _applies(rule, principal, tool):
            continue
        if rule.when:
            if rule.action != "deny":
                return True
            continue
        return rule.action != "deny"
    return _as_action(default) != "deny"


def effective_default(policy: PolicyConfig, gateway: GatewayConfig) -> Action:
    """``[policy] default``, or when unset: allow on a loopback bind with ``auth = "none"``, else deny."""
    if policy.default is not None:
        return policy.default
    return "allow" if gateway.auth == "none" and is_loopback(gateway.host) else "deny"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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


def _as_action(value: str) -> Action:
    if value == "allow":
        return "allow"
    if value == "approve":
        return "approve"
    return "deny"


def _applies(rule: PolicyRule, principal: Principal, tool: str) -> bool:
    if not any(fnmatchcase(tool, pattern) for pattern in rule.tools):
        return False
    if not rule.principals and not rule.groups:
        return True
    qualified = f"{principal.kind}:{principal.name}"
    if any(entry in (principal.name, qualified) for entry in rule.principals):
        return True
    return bool(principal.groups.intersection(rule.groups))


def _conditions_hold(rule: PolicyRule, arguments: Mapping[str, Any]) -> tuple[bool, str]:
    restrictive = rule.action != "allow"
    reasons = []
    for pointer, ops in rule.when.items():
        value = resolve_pointer(arguments, pointer)
        for op, expected in ops.items():
            result = _evaluate(op, value, expected)
            if result is None:
                if not restrictive:
                    return False, ""
                reasons.append(f"{pointer or '/'} {op}: undecidable, treated as a match")
            elif not result:
                return False, ""
            else:
                reasons.append(f"{pointer or '/'} {op} {expected!r}")
    return True, "; ".join(reasons)


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
                return _MISSING
            current = current[part]
        elif isinstance(current, list):
            if not part.isdigit() or (part != "0" and part.startswith("0")) or int(part) >= len(current):
                return _MISSING
            current = current[int(part)]
        else:
            return _MISSING
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


def _evaluate(op: str, value: Any, expected: Any) -> bool | None:
    """True, False, or None when the value's type makes the condition undecidable."""
    if op == "exists":
        return (value is not _MISSING) == bool(expected)
    if value is _MISSING:
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
