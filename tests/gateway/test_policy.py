"""Policy: first-match semantics, argument conditions, rule naming and search filtering."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from toolcrib.config import GatewayConfig, PolicyConfig, PolicyRule, parse_config
from toolcrib.errors import ConfigError
from toolcrib.gateway.trust.identity import Principal
from toolcrib.gateway.trust.matchers import PolicyRuleError, compile_regex, resolve_pointer
from toolcrib.gateway.trust.policy import allowed, decide, effective_default, is_loopback

ALICE = Principal("oauth", "alice", frozenset({"devs"}))
BOB = Principal("key", "bob", frozenset({"ops", "devs"}))
CI = Principal("key", "ci", frozenset())
ANON = Principal("anonymous", "anonymous", frozenset())

RULES = [
    PolicyRule(id="no-force-push", tools=["git__git_push"], when={"/force": {"equals": True}}, action="deny"),
    PolicyRule(
        id="push-main-approve",
        tools=["git__git_push"],
        when={"/branch": {"one_of": ["main", "master"]}},
        action="approve",
    ),
    PolicyRule(id="ops-push", tools=["git__git_push"], groups=["ops"], action="allow"),
    PolicyRule(id="ci-read", tools=["git__git_log", "git__git_status"], principals=["key:ci"], action="allow"),
    PolicyRule(id="devs-git", tools=["git__*"], groups=["devs"], action="allow"),
    PolicyRule(id="big-transfer", tools=["bank__transfer"], when={"/amount": {"min": 1000}}, action="approve"),
    PolicyRule(id="bank-ops", tools=["bank__*"], groups=["ops"], action="allow"),
    PolicyRule(id="no-etc", tools=["fs__*"], when={"/path": {"regex": "/etc(/.*)?"}}, action="deny"),
    PolicyRule(id="fs-all", tools=["fs__*"], action="allow"),
]

# (principal, tool, arguments) -> (action, rule)
MATRIX: list[tuple[Principal, str, dict[str, Any], str, str]] = [
    (BOB, "git__git_push", {"force": True, "branch": "dev"}, "deny", "no-force-push"),
    (BOB, "git__git_push", {"force": False, "branch": "main"}, "approve", "push-main-approve"),
    (BOB, "git__git_push", {"branch": "dev"}, "allow", "ops-push"),
    (BOB, "git__git_push", {"force": 1, "branch": "dev"}, "allow", "ops-push"),
    (ALICE, "git__git_push", {"force": True}, "deny", "no-force-push"),
    (ALICE, "git__git_push", {"branch": "main"}, "approve", "push-main-approve"),
    (ALICE, "git__git_push", {"branch": "dev"}, "allow", "devs-git"),
    (ALICE, "git__git_log", {}, "allow", "devs-git"),
    (CI, "git__git_log", {}, "allow", "ci-read"),
    (CI, "git__git_status", {}, "allow", "ci-read"),
    (CI, "git__git_commit", {}, "deny", "default"),
    (CI, "git__git_push", {"branch": "dev"}, "deny", "default"),
    (ANON, "git__git_log", {}, "deny", "default"),
    (BOB, "bank__transfer", {"amount": 5000}, "approve", "big-transfer"),
    (BOB, "bank__transfer", {"amount": 1000}, "approve", "big-transfer"),
    (BOB, "bank__transfer", {"amount": 999.5}, "allow", "bank-ops"),
    (BOB, "bank__transfer", {"amount": "5000"}, "approve", "big-transfer"),
    (BOB, "bank__transfer", {"amount": True}, "approve", "big-transfer"),
    (BOB, "bank__transfer", {}, "allow", "bank-ops"),
    (ALICE, "bank__transfer", {"amount": 1}, "deny", "default"),
    (ALICE, "bank__transfer", {"amount": 10_000}, "approve", "big-transfer"),
    (ANON, "fs__read", {"path": "/etc/passwd"}, "deny", "no-etc"),
    (ANON, "fs__read", {"path": "/etc"}, "deny", "no-etc"),
    (ANON, "fs__read", {"path": "/home/etc"}, "allow", "fs-all"),
    (ANON, "fs__read", {"path": ["/etc/passwd"]}, "deny", "no-etc"),
    (ANON, "fs__read", {"path": "/etc/" + "x" * 5000}, "deny", "no-etc"),
    (ANON, "fs__read", {}, "allow", "fs-all"),
]


@pytest.mark.parametrize(("principal", "tool", "arguments", "action", "rule"), MATRIX)
def test_matrix(principal: Principal, tool: str, arguments: dict[str, Any], action: str, rule: str) -> None:
    d = decide(principal, tool, arguments, RULES, "deny")
    assert (d.action, d.rule) == (action, rule), d.reason
    assert d.reason


def test_every_decision_names_its_rule() -> None:
    ids = {r.id for r in RULES} | {"default"}
    principals = [ALICE, BOB, CI, ANON]
    tools = ["git__git_push", "git__git_log", "bank__transfer", "fs__read", "other__x"]
    args: list[dict[str, Any]] = [{}, {"force": True}, {"branch": "main"}, {"amount": 5}, {"path": "/etc"}]
    for p, t, a, default in itertools.product(principals, tools, args, ["allow", "deny", "approve"]):
        d = decide(p, t, a, RULES, default)
        assert d.rule in ids
        if d.rule == "default":
            assert d.action == default


def test_first_match_wins_over_later_more_specific_rule() -> None:
    rules = [
        PolicyRule(id="broad", tools=["*"], action="allow"),
        PolicyRule(id="narrow", tools=["git__git_push"], action="deny"),
    ]
    assert decide(ALICE, "git__git_push", {}, rules, "deny").rule == "broad"
    assert decide(ALICE, "git__git_push", {}, list(reversed(rules)), "deny").rule == "narrow"


def test_bare_principal_name_matches_any_kind_and_qualified_only_its_kind() -> None:
    rules = [PolicyRule(id="r", principals=["ci"], action="allow")]
    assert decide(CI, "x", {}, rules, "deny").action == "allow"
    assert decide(Principal("oauth", "ci"), "x", {}, rules, "deny").action == "allow"
    qualified = [PolicyRule(id="r", principals=["key:ci"], action="allow")]
    assert decide(Principal("oauth", "ci"), "x", {}, qualified, "deny").action == "deny"


def test_undecidable_condition_does_not_satisfy_allow() -> None:
    rules = [PolicyRule(id="small", tools=["bank__*"], when={"/amount": {"max": 100}}, action="allow")]
    assert decide(BOB, "bank__transfer", {"amount": 50}, rules, "deny").action == "allow"
    assert decide(BOB, "bank__transfer", {"amount": "50"}, rules, "deny").action == "deny"
    assert decide(BOB, "bank__transfer", {"amount": 500}, rules, "deny").action == "deny"


def test_operators() -> None:
    def hit(ops: dict[str, Any], args: dict[str, Any]) -> bool:
        rule = PolicyRule(id="r", when={"/v": ops}, action="allow")
        return decide(ANON, "t", args, [rule], "deny").action == "allow"

    assert hit({"not_equals": "a"}, {"v": "b"})
    assert not hit({"not_equals": "a"}, {"v": "a"})
    assert hit({"not_one_of": [1, 2]}, {"v": 3})
    assert hit({"contains": "rm -rf"}, {"v": "sudo rm -rf /"})
    assert hit({"contains": 3}, {"v": [1, 2, 3]})
    assert not hit({"contains": 3}, {"v": [1, 2, True]})
    assert hit({"exists": False}, {})
    assert hit({"exists": True}, {"v": None})
    assert hit({"not_regex": "[a-z]+"}, {"v": "ABC"})
    assert hit({"equals": {"a": [1, 2]}}, {"v": {"a": [1, 2]}})
    assert not hit({"equals": 1}, {"v": True})
    assert hit({"min": 1, "max": 3}, {"v": 2})
    assert not hit({"min": 1, "max": 3}, {"v": 4})


def test_json_pointer_escapes_and_arrays() -> None:
    doc = {"a/b": {"m~n": [10, 20]}}
    assert resolve_pointer(doc, "/a~1b/m~0n/1") == 20
    assert resolve_pointer(doc, "/a~1b/m~0n/01") is not 20  # noqa: F632 - leading zero is not an index
    assert resolve_pointer(doc, "") is doc


def test_allowed_filters_unconditionally_denied_tools() -> None:
    assert allowed(ALICE, "git__git_push", RULES, "deny")
    assert allowed(CI, "git__git_log", RULES, "deny")
    assert not allowed(CI, "git__git_commit", RULES, "deny")
    assert allowed(CI, "git__git_push", RULES, "deny"), "a push to main needs approval, so it is listable"
    assert not allowed(ANON, "other__x", RULES, "deny")
    assert allowed(ANON, "other__x", RULES, "approve")
    conditional_allow = [
        PolicyRule(id="read-only", tools=["db__query"], when={"/readonly": {"equals": True}}, action="allow"),
        PolicyRule(id="deny-db", tools=["db__*"], action="deny"),
    ]
    assert allowed(ANON, "db__query", conditional_allow, "deny")
    assert not allowed(ANON, "db__drop", conditional_allow, "deny")
    conditional_deny_only = [PolicyRule(id="d", tools=["x"], when={"/a": {"equals": 1}}, action="deny")]
    assert not allowed(ANON, "x", conditional_deny_only, "deny")
    assert allowed(ANON, "x", conditional_deny_only, "allow")


def test_allowed_agrees_with_decide_on_argumentless_calls() -> None:
    for p, t in itertools.product([ALICE, BOB, CI, ANON], ["git__git_push", "git__git_log", "bank__x", "fs__y"]):
        if decide(p, t, {}, RULES, "deny").action != "deny":
            assert allowed(p, t, RULES, "deny")


@pytest.mark.parametrize(
    "pattern",
    ["(a+)+", "(a*)*b", "(x+x+)+y", "((ab)*)+", "(?:a|b+)*c", "(a{2,})+", "(a[a-z]+)*!", "(?i)(A[a-z]+)*"],
)
def test_catastrophic_regex_refused_at_config_load(pattern: str) -> None:
    with pytest.raises(PolicyRuleError):
        compile_regex(pattern)
    with pytest.raises(ConfigError, match="repetition"):
        parse_config(
            {"policy": {"rules": [{"id": "r", "action": "deny", "when": {"/a": {"regex": pattern}}}]}},
            __import__("pathlib").Path("t.toml"),
        )


@pytest.mark.parametrize(
    "when",
    [
        {"a": {"equals": 1}},
        {"/a": {"bogus": 1}},
        {"/a": {}},
        {"/a": {"regex": "("}},
        {"/a": {"min": "3"}},
        {"/a": {"one_of": 3}},
        {"/a": {"exists": 1}},
    ],
)
def test_invalid_conditions_refused(when: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PolicyRule(id="r", action="deny", when=when)


def test_safe_regexes_accepted_and_fast() -> None:
    for pattern in [
        "main|master",
        "release/[0-9]+\\.[0-9]+",
        "[a-z]+(-[a-z]+)*",
        ".*force.*",
        r"\w+(\.\w+)*",
        "[^x]+(x[^x]+)*",
    ]:
        compile_regex(pattern)
    rule = PolicyRule(id="r", when={"/v": {"regex": "[a-z]+(-[a-z]+)*"}}, action="deny")
    start = time.perf_counter()
    decide(ANON, "t", {"v": "a-" * 2000 + "!"}, [rule], "allow")
    assert time.perf_counter() - start < 0.5


def test_effective_default() -> None:
    assert effective_default(PolicyConfig(), GatewayConfig()) == "allow"
    assert effective_default(PolicyConfig(), GatewayConfig(host="0.0.0.0", auth="keys")) == "deny"
    assert effective_default(PolicyConfig(), GatewayConfig(auth="keys")) == "deny"
    assert effective_default(PolicyConfig(default="approve"), GatewayConfig()) == "approve"
    assert is_loopback("::1") and is_loopback("127.0.0.2") and is_loopback("LOCALHOST")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.com")
