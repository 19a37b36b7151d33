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

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Literal

from toolcrib.gateway.trust.identity import Principal
from toolcrib.gateway.trust.matchers import PolicyRuleError, evaluate, resolve_pointer, validate_when

if TYPE_CHECKING:
    from toolcrib.config import GatewayConfig, PolicyConfig, PolicyRule

__all__ = [
    "Action",
    "Decision",
    "PolicyRuleError",
    "allowed",
    "decide",
    "effective_default",
    "is_loopback",
    "validate_when",
]

Action = Literal["allow", "deny", "approve"]


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`; ``rule`` is the id of the rule that made it, or ``"default"``."""

    action: Action
    rule: str
    reason: str


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
    if any(entry in (principal.subject, principal.id) for entry in rule.principals):
        return True
    return bool(principal.groups.intersection(rule.groups))


def _conditions_hold(rule: PolicyRule, arguments: Mapping[str, Any]) -> tuple[bool, str]:
    restrictive = rule.action != "allow"
    reasons = []
    for pointer, ops in rule.when.items():
        value = resolve_pointer(arguments, pointer)
        for op, expected in ops.items():
            result = evaluate(op, value, expected)
            if result is None:
                if not restrictive:
                    return False, ""
                reasons.append(f"{pointer or '/'} {op}: undecidable, treated as a match")
            elif not result:
                return False, ""
            else:
                reasons.append(f"{pointer or '/'} {op} {expected!r}")
    return True, "; ".join(reasons)
