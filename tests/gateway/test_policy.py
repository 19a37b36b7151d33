"""Policy: first-match semantics, argument conditions, rule naming and search filtering."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from toolcrib.config import GatewayConfig, PolicyConfig, PolicyRule, parse_config
from toolcrib.errors import ConfigError
from toolcrib.gateway.trust.identity import Principal
from toolcrib.gateway.trust.matchers import (
    MAX_REGEX_INPUT,
    PolicyRuleError,
    compile_regex,
    evaluate,
    loads_json,
    regex_fullmatch,
    resolve_pointer,
)
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
    [r"(a)\1", "(?=a)b", "(?!a)b", "(?<=a)b", "(?<!a)b", r"a\Z", "a++", "(", "[z-a]", "x{1001}"],
)
def test_regex_outside_re2_syntax_refused_at_config_load(pattern: str) -> None:
    with pytest.raises(PolicyRuleError, match="RE2 syntax"):
        compile_regex(pattern)
    with pytest.raises(ConfigError, match="RE2 syntax") as info:
        parse_config(
            {"policy": {"rules": [{"id": "r", "action": "deny", "when": {"/a": {"regex": pattern}}}]}},
            Path("t.toml"),
        )
    assert "\n" not in str(info.value).split("\nfix ")[0], "the problem is one line"


@pytest.mark.parametrize("pattern", ["(a+)+", "(a*)*b", "(x+x+)+y", "((ab)*)+", "(?:a|b+)*c", "(a{2,})+", "(.*a){12}"])
def test_formerly_catastrophic_regexes_run_in_linear_time(pattern: str) -> None:
    rule = PolicyRule(id="r", when={"/v": {"regex": pattern}}, action="deny")
    for value in ("a" * 30 + "!", "x" * 40 + "!", "ab" * 5000 + "!"):
        assert decide(ANON, "t", {"v": value}, [rule], "allow").action == "allow"
    assert decide(ANON, "t", {"v": "a" * 30}, [rule], "allow").action in ("deny", "allow")


def test_regex_is_whole_value_and_dot_matches_newline() -> None:
    rule = PolicyRule(id="no-etc", when={"/path": {"regex": "/etc/.*"}}, action="deny")

    def action(path: str) -> str:
        return decide(ANON, "fs__read", {"path": path}, [rule], "allow").action

    assert action("/etc/passwd\n") == "deny"
    assert action("/etc/\npasswd") == "deny"
    assert action("/etc/passwd\r\n") == "deny"
    assert action("x/etc/passwd") == "allow", "anchored at the start"
    assert action("/et") == "allow"
    tail = PolicyRule(id="r", when={"/v": {"regex": "abc"}}, action="deny")
    assert decide(ANON, "t", {"v": "abc\n"}, [tail], "allow").action == "allow", "anchored at the very end"
    dollar = PolicyRule(id="r", when={"/v": {"regex": "abc$"}}, action="deny")
    assert decide(ANON, "t", {"v": "abc\n"}, [dollar], "allow").action == "allow", "RE2 $ is end of text"
    explicit_off = PolicyRule(id="r", when={"/v": {"regex": "(?-s:a.b)"}}, action="deny")
    assert decide(ANON, "t", {"v": "a\nb"}, [explicit_off], "allow").action == "allow"


def test_regex_input_bound_and_unencodable_strings_are_undecidable() -> None:
    deny = PolicyRule(id="d", when={"/v": {"regex": "[a-z]*"}}, action="deny")
    allow = PolicyRule(id="a", when={"/v": {"regex": "[a-z]*"}}, action="allow")
    at_bound = "a" * MAX_REGEX_INPUT
    assert MAX_REGEX_INPUT >= 65536
    assert regex_fullmatch("[a-z]*", at_bound) is True
    assert regex_fullmatch("[a-z]*", at_bound + "a") is None
    assert decide(ANON, "t", {"v": at_bound + "a"}, [deny], "allow").action == "deny"
    assert decide(ANON, "t", {"v": at_bound + "a"}, [allow], "deny").action == "deny"
    assert regex_fullmatch(".*", "x\ud800") is None, "a lone surrogate has no UTF-8 form"
    assert decide(ANON, "t", {"v": "x\ud800"}, [deny], "allow").action == "deny"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_never_slip_past_min_max(value: float) -> None:
    deny_big = PolicyRule(id="big", when={"/amount": {"min": 1000}}, action="deny")
    allow_small = PolicyRule(id="small", when={"/amount": {"max": 100}}, action="allow")
    assert decide(ANON, "bank__transfer", {"amount": value}, [deny_big], "allow").rule == "big"
    assert decide(ANON, "bank__transfer", {"amount": value}, [allow_small], "deny").rule == "default"
    assert evaluate("min", value, 0) is None and evaluate("max", value, 0) is None


@pytest.mark.parametrize("bound", [math.nan, math.inf, -math.inf, True])
def test_non_finite_bounds_refused(bound: Any) -> None:
    with pytest.raises(ValueError, match="finite number"):
        PolicyRule(id="r", action="deny", when={"/a": {"min": bound}})


@pytest.mark.parametrize(
    "text", ["NaN", "Infinity", "-Infinity", '{"amount": NaN}', "[1, -Infinity]", "1e400", '{"a": -1E999}']
)
def test_loads_json_rejects_non_finite(text: str) -> None:
    with pytest.raises(ValueError, match="finite number"):
        loads_json(text)
    with pytest.raises(ValueError, match="finite number"):
        loads_json(text.encode())


def test_loads_json_agrees_with_json_loads_otherwise() -> None:
    for text in [
        '{"a": [1, 2.5, -0.0, 1e308, "NaN", null, true]}',
        "  3 ",
        '"\\ud83d\\ude00"',
        b'\xef\xbb\xbf{"a": 1}',
    ]:
        assert loads_json(text) == json.loads(text)
    for lone in ['"\\ud800"', '{"k\\udfff": 1}', '["a\\udc80b", 12345678901234567890]', '"\ud800"', b'["\\ud83d"]']:
        with pytest.raises(ValueError, match="lone surrogate"):  # JSON syntax, but not Unicode text
            loads_json(lone)
    for bad in ["", "{", "nan", "[1,]", b"\xff"]:
        with pytest.raises(ValueError):
            loads_json(bad)
    with pytest.raises(ValueError, match="nested too deeply"):
        loads_json("[" * 100_000 + "]" * 100_000)


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


def test_safe_regexes_accepted() -> None:
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
    assert decide(ANON, "t", {"v": "a-" * 2000 + "!"}, [rule], "allow").action == "allow"
    assert decide(ANON, "t", {"v": "a-" * 2000 + "a"}, [rule], "allow").action == "deny"


def test_effective_default() -> None:
    assert effective_default(PolicyConfig(), GatewayConfig()) == "allow"
    assert effective_default(PolicyConfig(), GatewayConfig(host="0.0.0.0", auth="keys")) == "deny"
    assert effective_default(PolicyConfig(), GatewayConfig(auth="keys")) == "deny"
    assert effective_default(PolicyConfig(default="approve"), GatewayConfig()) == "approve"
    assert is_loopback("::1") and is_loopback("127.0.0.2") and is_loopback("LOCALHOST")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.com")


KIND_RULES = [
    PolicyRule(id="no-etc-resources", resources=["*+file:///etc/*"], action="deny"),
    PolicyRule(id="docs-resources", resources=["docs+*"], action="allow"),
    PolicyRule(id="time-tools", tools=["time__*"], action="allow"),
    PolicyRule(id="review-prompt", prompts=["git__review", "git__summar?"], groups=["devs"], action="allow"),
    PolicyRule(id="git-both", tools=["git__git_log"], prompts=["git__log_*"], action="allow"),
    PolicyRule(id="ops-everything", groups=["ops"], action="allow"),
]

# (principal, kind, name) -> (action, rule)
KIND_MATRIX: list[tuple[Principal, str, str, str, str]] = [
    (ANON, "resource", "docs+file:///etc/hosts", "deny", "no-etc-resources"),
    (ANON, "resource", "docs+file:///home/readme", "allow", "docs-resources"),
    (ANON, "resource", "git+file:///home/readme", "deny", "default"),
    (ANON, "tool", "time__get_current_time", "allow", "time-tools"),
    (ANON, "prompt", "time__get_current_time", "deny", "default"),
    (ANON, "resource", "time__get_current_time", "deny", "default"),
    (ANON, "tool", "docs+file:///home/readme", "deny", "default"),
    (ALICE, "prompt", "git__review", "allow", "review-prompt"),
    (ALICE, "prompt", "git__summary", "allow", "review-prompt"),
    (ALICE, "tool", "git__review", "deny", "default"),
    (CI, "prompt", "git__review", "deny", "default"),
    (CI, "tool", "git__git_log", "allow", "git-both"),
    (CI, "prompt", "git__log_day", "allow", "git-both"),
    (CI, "resource", "git__git_log", "deny", "default"),
    (BOB, "resource", "secrets+vault://x", "allow", "ops-everything"),
    (BOB, "prompt", "any__thing", "allow", "ops-everything"),
    (BOB, "resource", "docs+file:///etc/shadow", "deny", "no-etc-resources"),
]


@pytest.mark.parametrize(("principal", "kind", "name", "action", "rule"), KIND_MATRIX)
def test_prompts_and_resources_are_targets(principal: Principal, kind: Any, name: str, action: str, rule: str) -> None:
    d = decide(principal, name, {}, KIND_RULES, "deny", kind=kind)
    assert (d.action, d.rule) == (action, rule), d.reason
    assert kind in d.reason
    assert allowed(principal, name, KIND_RULES, "deny", kind=kind) == (action != "deny")


def test_rule_without_targets_covers_every_kind_and_tools_only_rule_only_tools() -> None:
    everything = [PolicyRule(id="all", action="deny")]
    star_tools = [PolicyRule(id="tools", tools=["*"], action="deny")]
    for kind in ("tool", "prompt", "resource"):
        assert decide(ANON, "s__x", {}, everything, "allow", kind=kind).rule == "all"
        assert decide(ANON, "s__x", {}, star_tools, "allow", kind=kind).rule == (
            "tools" if kind == "tool" else "default"
        )
    assert decide(ANON, "s__x", {}, everything, "allow").rule == "all", "kind defaults to tool (positional callers)"
    assert PolicyRule(id="r", action="allow").tools is None


def test_glob_targets_are_case_sensitive_and_empty_lists_refused() -> None:
    rules = [PolicyRule(id="r", resources=["docs+file:///*"], action="allow")]
    assert decide(ANON, "DOCS+file:///a", {}, rules, "deny", kind="resource").rule == "default"
    for key in ("tools", "prompts", "resources"):
        with pytest.raises(ConfigError, match="empty list"):
            parse_config({"policy": {"rules": [{"id": "r", "action": "deny", key: []}]}}, Path("t.toml"))


def test_prompt_arguments_are_conditions() -> None:
    rules = [PolicyRule(id="r", prompts=["git__*"], when={"/path": {"regex": "/etc/.*"}}, action="deny")]
    assert decide(ANON, "git__review", {"path": "/etc/x"}, rules, "allow", kind="prompt").rule == "r"
    assert decide(ANON, "git__review", {"path": "/home/x"}, rules, "allow", kind="prompt").rule == "default"


def test_rules_see_raw_values_without_path_normalisation() -> None:
    readme_advice = {"/path": {"regex": "/home/ann/.+", "not_regex": ".*\\.\\..*"}}
    allow_home = [PolicyRule(id="home", tools=["fs__*"], when=readme_advice, action="allow")]

    def rule(path: Any) -> str:
        return decide(ANON, "fs__read", {"path": path}, allow_home, "deny").rule

    assert rule("/home/ann/notes.txt") == "home"
    assert rule("/home/ann/.config/x") == "home"
    for escape in ["/home/ann/../../etc/passwd", "/home/ann/..", "/home/ann/x/..\n", "home/ann/x", "/home/annx/y", 7]:
        assert rule(escape) == "default", escape
    naive = [PolicyRule(id="etc", tools=["fs__*"], when={"/path": {"regex": "/etc/.*"}}, action="deny")]
    assert decide(ANON, "fs__read", {"path": "/tmp/../etc/passwd"}, naive, "allow").rule == "default", (
        "raw, not resolved"
    )
