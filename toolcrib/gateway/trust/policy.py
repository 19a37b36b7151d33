"""Who may reach which tool, prompt or resource, with which arguments: a pure function of principal, target and rules.

Evaluation is **first match wins**: rules are tried in the order they appear in the TOML file and
the first rule that matches the request decides. Put narrow rules (a specific argument, a specific
principal) before broad ones. When no rule matches, the configured default decides and the
decision names the rule ``"default"``.

A request has a *target*: a tool, a prompt or a resource, named as the client sees it (tools and
prompts ``server__name``, e.g. ``git__git_push``; resources by their namespaced URI
``server+scheme://...``, e.g. ``docs+file:///etc/hosts``). A completion request is decided as the
prompt or resource it references. A rule matches a request when all of these hold:

* ``tools`` / ``prompts`` / ``resources``: globs (``fnmatch`` syntax, case-sensitive; ``*`` also
  crosses ``/``). A rule naming none of the three applies to every target of every kind (what
  ``tools = ["*"]`` meant before prompts and resources were governed); a rule naming any of them
  applies only to the kinds it names, and then one of that kind's globs must match the target.
* ``principals`` / ``groups``: a rule naming neither applies to everyone; otherwise the caller must
  be listed in ``principals`` *or* belong to one of ``groups``. A ``principals`` entry is either a
  bare name (``"ci"``, any kind) or a qualified ``"KIND:NAME"`` (``"key:ci"``, ``"oauth:alice"``);
  prefer the qualified form when API keys and OAuth subjects share a namespace.
* ``when``: every condition holds. Keys are JSON pointers (RFC 6901) into the request's arguments
  (a tool's ``arguments``, a prompt's ``arguments``), values are tables of operators, all of which
  must hold: ``equals``, ``not_equals``, ``one_of``, ``not_one_of``, ``regex`` (RE2 syntax, matches
  the whole value, ``.`` matches newlines), ``not_regex``, ``min``, ``max`` (finite numbers,
  inclusive), ``contains`` (substring of a string or element of an array), ``exists``. Values are
  raw: no path normalisation, so ``/etc/../etc/passwd`` is not ``/etc/passwd``.

Conditions are evaluated in three values. A pointer that does not resolve makes a condition false
(``exists = false`` true). A value of the wrong type (``min`` on a string, ``regex`` on a number, a
non-finite number, a string longer than :data:`~toolcrib.gateway.trust.matchers.MAX_REGEX_INPUT`)
is *undecidable*: it counts as a match for ``deny`` and ``approve`` rules and as no match for
``allow`` rules, so an odd argument never slips past a restriction. Comparisons follow JSON typing:
``true`` never equals ``1``.
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
    "Kind",
    "PolicyRuleError",
    "allowed",
    "decide",
    "effective_default",
    "is_loopback",
    "validate_when",
]

Action = Literal["allow", "deny", "approve"]
Kind = Literal["tool", "prompt", "resource"]


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`; ``rule`` is the id of the rule that made it, or ``"default"``."""

    action: Action
    rule: str
    reason: str


def decide(
    principal: Principal,
    name: str,
    arguments: Mapping[str, Any],
    rules: Sequence[PolicyRule],
    default: str,
    *,
    kind: Kind = "tool",
) -> Decision:
    """Decide a request for target ``name`` of ``kind``: the first matching rule wins, else
    ``default`` (rule ``"default"``). ``arguments`` is the request's JSON object (``{}`` if none)."""
    for rule in rules:
        if not _applies(rule, principal, name, kind):
            continue
        matched, why = _conditions_hold(rule, arguments)
        if matched:
            reason = f"rule {rule.id!r} matched {kind} {name}" + (f" ({why})" if why else "")
            return Decision(rule.action, rule.id, reason)
    action = _as_action(default)
    return Decision(action, "default", f"no rule matched {kind} {name}; default is {action}")


def allowed(principal: Principal, name: str, rules: Sequence[PolicyRule], default: str, *, kind: Kind = "tool") -> bool:
    """Whether target ``name`` of ``kind`` may be shown to ``principal`` (search, ``*/list``).

    A target is listable unless every possible request for it is denied. Walking the rules in
    order, a rule with ``when`` conditions only catches some argument sets: a conditional ``allow``
    or ``approve`` makes the target listable (assuming its conditions are satisfiable), a
    conditional ``deny`` lets the remaining argument sets fall through. The first unconditional
    rule, or the default, settles the rest: listable unless it denies. So whenever :func:`decide`
    answers ``allow`` or ``approve`` for some arguments, :func:`allowed` is true.
    """
    for rule in rules:
        if not _applies(rule, principal, name, kind):
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


def _targets(rule: PolicyRule, kind: Kind) -> list[str] | None:
    if kind == "tool":
        return rule.tools
    return rule.prompts if kind == "prompt" else rule.resources


def _applies(rule: PolicyRule, principal: Principal, name: str, kind: Kind) -> bool:
    if rule.tools is not None or rule.prompts is not None or rule.resources is not None:
        globs = _targets(rule, kind)
        if globs is None or not any(fnmatchcase(name, pattern) for pattern in globs):
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
