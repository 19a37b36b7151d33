"""Property-based tests (hypothesis, 1000 examples each) of policy's parsers and matchers.

Each property is checked against an independent reference written here: RFC 6901 pointers by
construction (build a document, point at one of its nodes, resolve), JSON equality by canonical
form, regex whole-match by Python's ``re.fullmatch`` with ``re.DOTALL`` on the syntax both engines
share, strict JSON by :func:`json.loads` plus a finiteness check.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.config import PolicyRule
from toolcrib.gateway.trust.identity import Principal
from toolcrib.gateway.trust.matchers import (
    MAX_REGEX_INPUT,
    MISSING,
    compile_regex,
    evaluate,
    loads_json,
    regex_fullmatch,
    resolve_pointer,
)
from toolcrib.gateway.trust.policy import allowed, decide

PROPS = settings(max_examples=1000, deadline=None, database=None)

# -- JSON values ---------------------------------------------------------------------------------

KEY_TEXT = st.text(alphabet=st.sampled_from("ab~/0 1é"), max_size=4)
SCALARS = (
    st.none()
    | st.booleans()
    | st.sampled_from([0, 1, -1, 1.0, 0.0, -0.0, 2.5])
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEY_TEXT, inner, max_size=4),
    max_leaves=12,
)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _paths(doc: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = [(prefix, doc)]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out.extend(_paths(value, (*prefix, str(index))))
    return out


@PROPS
@given(JSON, st.data(), st.text(max_size=12))
def test_pointer_resolves_every_node_and_nothing_past_it(doc: Any, data: st.DataObject, key: str) -> None:
    path, node = data.draw(st.sampled_from(_paths(doc)))
    pointer = "".join("/" + _escape(token) for token in path)
    assert resolve_pointer(doc, pointer) is node
    if isinstance(node, dict):
        extra = data.draw(KEY_TEXT.filter(lambda k: k not in node))
    elif isinstance(node, list):
        extra = data.draw(st.sampled_from([str(len(node)), "-", "01", "+0", " 0", "\u0660", "1e0"]))
        if extra == "01" and len(node) < 2:
            extra = "00"
    else:
        extra = data.draw(KEY_TEXT)
    assert resolve_pointer(doc, pointer + "/" + _escape(extra)) is MISSING
    # RFC 6901 escaping round-trips any key, '~' and '/' included
    assert resolve_pointer({key: node}, "/" + _escape(key)) is node
    assert resolve_pointer([{key: node}], "/0/" + _escape(key)) is node


# -- value matchers against a reference ---------------------------------------------------------


def _canon(value: Any) -> Any:
    """JSON identity: booleans are not numbers, 1 equals 1.0, object key order does not matter."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("num", Fraction(value)) if math.isfinite(value) else ("nonfinite", repr(value))
    if value is None:
        return ("null",)
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, list):
        return ("list", tuple(_canon(v) for v in value))
    return ("obj", frozenset((k, _canon(v)) for k, v in value.items()))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _reference(op: str, value: Any, expected: Any) -> bool | None:
    if op == "exists":
        return (value is not MISSING) == expected
    if value is MISSING:
        return False
    if op in ("equals", "not_equals"):
        same = _canon(value) == _canon(expected)
        return same if op == "equals" else not same
    if op in ("one_of", "not_one_of"):
        hit = any(_canon(value) == _canon(item) for item in expected)
        return hit if op == "one_of" else not hit
    if op in ("min", "max"):
        if not _finite(value):
            return None
        return Fraction(value) >= Fraction(expected) if op == "min" else Fraction(value) <= Fraction(expected)
    if op in ("regex", "not_regex"):
        if not isinstance(value, str) or len(value) > MAX_REGEX_INPUT:
            return None
        hit = re.fullmatch(expected, value, re.DOTALL) is not None
        return hit if op == "regex" else not hit
    assert op == "contains"
    if isinstance(value, str):
        return isinstance(expected, str) and expected in value
    if isinstance(value, list):
        return any(_canon(item) == _canon(expected) for item in value)
    return None


CONFUSABLE = st.sampled_from([True, False, 1, 0, 1.0, 0.0, "1", "true", None, [], {}, [1], [True], {"a": 1}])
ANY_VALUE = (
    JSON
    | CONFUSABLE
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([math.nan, math.inf, -math.inf])
    | st.lists(CONFUSABLE, max_size=3)
    | st.just(MISSING)
)
NUMBER_BOUND = st.integers(-1000, 1000) | st.floats(-1e6, 1e6, allow_nan=False)
SIMPLE_REGEX = st.sampled_from(["", ".*", "a.*", ".*/etc/.*", "[a-z]+", "a|b", "(ab)*", "[^/]*", "1|true", ".+\n"])
CONDITION = st.one_of(
    st.tuples(st.sampled_from(["equals", "not_equals", "contains"]), JSON | CONFUSABLE),
    st.tuples(st.sampled_from(["one_of", "not_one_of"]), st.lists(JSON | CONFUSABLE, max_size=4)),
    st.tuples(st.sampled_from(["min", "max"]), NUMBER_BOUND),
    st.tuples(st.sampled_from(["regex", "not_regex"]), SIMPLE_REGEX),
    st.tuples(st.just("exists"), st.booleans()),
)
ANON = Principal("anonymous", "anonymous")


@PROPS
@given(CONDITION, ANY_VALUE)
def test_every_operator_agrees_with_the_reference(condition: tuple[str, Any], value: Any) -> None:
    op, expected = condition
    assert evaluate(op, value, expected) == _reference(op, value, expected)


@PROPS
@given(CONDITION, ANY_VALUE, st.sampled_from(["allow", "deny", "approve"]))
def test_undecidable_makes_restrictive_rules_match_and_allow_rules_not(
    condition: tuple[str, Any], value: Any, action: Any
) -> None:
    op, expected = condition
    rule = PolicyRule(id="r", tools=["t"], when={"/v": {op: expected}}, action=action)
    arguments = {} if value is MISSING else {"v": value}
    result = _reference(op, value, expected)
    matched = decide(ANON, "t", arguments, [rule], "default-sentinel").rule == "r"
    assert matched == (result is True or (result is None and action != "allow"))


@PROPS
@given(st.sampled_from([True, False]), st.sampled_from([1, 0, 1.0, 0.0]))
def test_true_is_never_one(flag: bool, number: float) -> None:
    for op in ("equals", "one_of", "contains"):
        expected = [number] if op == "one_of" else number
        assert evaluate(op, flag if op != "contains" else [flag], expected) is False
        back = [flag] if op == "one_of" else flag
        assert evaluate(op, number if op != "contains" else [number], back) is False


# -- regex: RE2, whole value, DOTALL, against Python's re on the shared syntax -------------------

ALPHABET = "ab\n./-é"
LITERAL = st.sampled_from(list(ALPHABET)).map(re.escape)
ATOM = LITERAL | st.sampled_from([".", "[ab]", "[^a]", "[a-z.]", "[\n/]", "\\n", "\\.", "(?:)"])


def _quantified(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    quantifier = st.sampled_from(["", "*", "+", "?", "*?", "+?", "??", "{2}", "{0,2}", "{1,3}"])
    group = st.tuples(inner, quantifier).map(lambda t: f"(?:{t[0]}){t[1]}")
    alternation = st.lists(inner, min_size=2, max_size=3).map(lambda xs: "(?:" + "|".join(xs) + ")")
    sequence = st.lists(inner, min_size=2, max_size=4).map("".join)
    return group | alternation | sequence


PATTERN = st.recursive(ATOM, _quantified, max_leaves=6)
TEXT = st.text(alphabet=st.sampled_from(ALPHABET), max_size=10)


@PROPS
@given(PATTERN, TEXT, TEXT)
def test_regex_is_dotall_whole_match_like_the_reference(pattern: str, text: str, junk: str) -> None:
    compile_regex(pattern)
    expected = re.fullmatch(pattern, text, re.DOTALL) is not None
    assert regex_fullmatch(pattern, text) is expected
    assert evaluate("regex", text, pattern) is expected
    assert evaluate("not_regex", text, pattern) is (not expected)
    longer = text + "\n" + junk
    assert regex_fullmatch(pattern, longer) is (re.fullmatch(pattern, longer, re.DOTALL) is not None)
    if expected:
        assert regex_fullmatch(f"(?:{pattern}).*", longer) is True, "'.' crosses newlines"


# -- loads_json: strict about non-finite numbers and lone surrogates, json.loads otherwise ---------

NUMBER_LITERAL = st.from_regex(
    r"-?(0|[1-9][0-9]{0,3})(\.[0-9]{1,3})?([eE][+-]?[0-9]{1,4})?", fullmatch=True
) | st.from_regex(
    r"-?[1-9][0-9]{15,24}(\.[0-9]{1,22})?", fullmatch=True
)  # around the 64-bit edge, where a fast parser may turn an integer into a float
NON_FINITE_TOKEN = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1E999", "1.5e309"])
STRING_LITERAL = st.text(max_size=6).map(json.dumps) | st.sampled_from(['"\\ud800"', '"\\u0000"', '"NaN"'])
LEAF_TEXT = NUMBER_LITERAL | STRING_LITERAL | st.sampled_from(["true", "false", "null"]) | NON_FINITE_TOKEN
SPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n "])


def _containers(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    array = st.tuples(st.lists(inner, max_size=4), SPACE).map(lambda t: "[" + (t[1] + "," + t[1]).join(t[0]) + "]")
    members = st.lists(st.tuples(STRING_LITERAL, inner).map(lambda kv: f"{kv[0]}:{kv[1]}"), max_size=4)
    return array | members.map(lambda ms: "{" + ",".join(ms) + "}")


JSON_TEXT = st.recursive(LEAF_TEXT, _containers, max_leaves=10)
MUTATED_TEXT = st.tuples(JSON_TEXT, st.integers(0, 40), st.sampled_from(["", ",", "]", "}", '"', "x", "-", "."])).map(
    lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
)


def _has_lone_surrogate(value: Any) -> bool:
    """Over the parsed document (a duplicate key's earlier value is gone, as in what loads_json
    returns): any string, key or value, holding a lone surrogate."""
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _has_non_finite(value: Any) -> bool:
    """Over a document parsed with ``object_pairs_hook=list`` (so duplicate keys are all kept)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


@PROPS
@given(
    JSON_TEXT | MUTATED_TEXT | st.text(max_size=20),
    st.sampled_from(["str", "utf-8", "utf-16"]),
    NON_FINITE_TOKEN,
)
def test_loads_json_agrees_with_json_loads_except_non_finite_and_lone_surrogates(
    text: str, form: str, token: str
) -> None:
    for document in (token, f"[{text},{token}]", f'{{"a":{text},"a":[{token}]}}', f'{{"a":[{token}],"a":1}}'):
        try:
            loads_json(document)
        except ValueError as exc:
            assert "\n" not in str(exc)
        else:
            raise AssertionError(f"accepted a non-finite number in {document!r}")
    try:
        data: str | bytes = text if form == "str" else text.encode(form)
    except UnicodeEncodeError:
        return
    try:
        reference, pairs = json.loads(data), json.loads(data, object_pairs_hook=list)
    except ValueError:
        reference_failed = True
    else:
        reference_failed = False
    try:
        mine = loads_json(data)
    except ValueError:
        assert reference_failed or _has_non_finite(pairs) or _has_lone_surrogate(reference)
        return
    assert not reference_failed and not _has_non_finite(pairs) and not _has_lone_surrogate(reference)
    assert mine == reference
    assert _typed(mine) == _typed(reference), "an integer must stay an integer (and exact)"


def _typed(value: Any) -> Any:
    """``value`` with every number tagged by its type (``1 == 1.0`` in Python; not on the wire)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


# -- allowed is consistent with decide ----------------------------------------------------------

NAMES = ["git__push", "git__log", "docs__read", "docs+file:///etc/hosts", "docs+file:///home/a", "time__now"]
GLOBS = st.lists(st.sampled_from(["*", "git__*", "docs+*", "*etc*", "time__now", "git__log", "docs__?ead"]), min_size=1)
TARGETS = st.fixed_dictionaries(
    {}, optional={"tools": GLOBS, "prompts": GLOBS, "resources": GLOBS}
)  # absent keys = None
PRINCIPALS = [
    Principal("key", "ci"),
    Principal("oauth", "ci", frozenset({"devs"})),
    Principal("key", "bob", frozenset({"ops"})),
    ANON,
]
LIGHT_CONDITION = st.one_of(
    st.tuples(st.sampled_from(["equals", "not_equals", "contains"]), CONFUSABLE),
    st.tuples(st.sampled_from(["one_of", "not_one_of"]), st.lists(CONFUSABLE, max_size=2)),
    st.tuples(st.sampled_from(["min", "max"]), st.sampled_from([0, 100, 1000.5])),
    st.tuples(st.sampled_from(["regex", "not_regex"]), SIMPLE_REGEX),
    st.tuples(st.just("exists"), st.booleans()),
)
WHEN = st.dictionaries(st.sampled_from(["/a", "/b", "/a/0"]), LIGHT_CONDITION.map(lambda c: {c[0]: c[1]}), max_size=2)
RULE = st.builds(
    lambda i, targets, principals, groups, when, action: PolicyRule(
        id=f"r{i}", principals=principals, groups=groups, when=when, action=action, **targets
    ),
    st.integers(0, 99),
    TARGETS,
    st.lists(st.sampled_from(["ci", "key:ci", "oauth:ci", "bob"]), max_size=2),
    st.lists(st.sampled_from(["devs", "ops"]), max_size=1),
    WHEN,
    st.sampled_from(["allow", "deny", "approve"]),
)
ARG_VALUE = (
    CONFUSABLE | st.sampled_from([math.nan, -math.inf, 5, 2000, "/etc/x", "ab", ["a", "b"]]) | st.text(max_size=4)
)
ARGS = st.fixed_dictionaries({}, optional={"a": ARG_VALUE, "b": ARG_VALUE})


@PROPS
@given(
    st.lists(RULE, max_size=4),
    st.sampled_from(PRINCIPALS),
    st.sampled_from(NAMES),
    st.sampled_from(["tool", "prompt", "resource"]),
    st.sampled_from(["allow", "deny", "approve"]),
    st.lists(ARGS, min_size=1, max_size=4),
)
def test_allowed_whenever_some_arguments_are_allowed_or_approved(
    rules: list[PolicyRule], principal: Principal, name: str, kind: Any, default: str, argument_sets: list[Any]
) -> None:
    listable = allowed(principal, name, rules, default, kind=kind)
    for arguments in argument_sets:
        decision = decide(principal, name, arguments, rules, default, kind=kind)
        assert decision.rule in {r.id for r in rules} | {"default"}
        if decision.action != "deny":
            assert listable, (decision, rules)
