"""SEP-2243 header rules (toolcrib/gateway/edge/headers.py): the ``Mcp-Param-*`` value parser and the
checks built on it, as properties over generated values, plus the conformance suite's named cases."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.shared.inbound import encode_header_value, mcp_param_headers, x_mcp_header_map

from toolcrib.gateway.edge.headers import (
    HeaderProblem,
    extension_name_rejection,
    param_rejection,
    parse_param_value,
    routing_rejection,
)

HEADER_MISMATCH = -32020
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "priority": {"type": "integer", "x-mcp-header": "Priority"},
        "urgent": {"type": "boolean", "x-mcp-header": "Urgent"},
        "note": {"type": "string"},
    },
}
VISIBLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E))


def client_headers(arguments: dict[str, Any]) -> list[tuple[str, str]]:
    """What a conforming client sends (the SDK's emit side)."""
    return list(mcp_param_headers(x_mcp_header_map(SCHEMA), arguments).items())


@settings(max_examples=1000)
@given(st.text())
def test_parser_round_trips_what_a_client_encodes(value: str) -> None:
    assert parse_param_value("Mcp-Param-X", encode_header_value(value)) == value


@settings(max_examples=1000)
@given(st.text())
def test_parser_returns_a_string_or_one_line_problem(raw: str) -> None:
    try:
        out = parse_param_value("Mcp-Param-X", raw)
    except HeaderProblem as problem:
        assert "\n" not in str(problem) and "Mcp-Param-X" in str(problem)
        return
    assert isinstance(out, str)
    stripped = raw.strip(" \t")
    if not (stripped.startswith("=?base64?") and stripped.endswith("?=")):
        assert out == stripped  # no sentinel: literal, without surrounding whitespace


@settings(max_examples=1000)
@given(VISIBLE, st.characters(exclude_categories=["Cs"]).filter(lambda c: not 0x20 <= ord(c) <= 0x7E))
def test_parser_refuses_characters_outside_visible_ascii(prefix: str, bad: str) -> None:
    raw = f"x{prefix}{bad}y"
    with pytest.raises(HeaderProblem, match="outside visible ASCII"):
        parse_param_value("Mcp-Param-X", raw)


@settings(max_examples=1000)
@given(st.binary(min_size=1, max_size=40))
def test_parser_refuses_non_canonical_base64(data: bytes) -> None:
    unpadded = base64.b64encode(data).decode().rstrip("=")
    if len(unpadded) % 4 == 0:
        return  # already canonical without padding
    with pytest.raises(HeaderProblem):
        parse_param_value("Mcp-Param-X", f"=?base64?{unpadded}?=")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("=?base64?SGVsbG8=?=", "Hello"),
        ("SGVsbG8=", "SGVsbG8="),  # no sentinel: literal
        ("=?base64?SGVsbG8=", "=?base64?SGVsbG8="),  # no suffix: literal
        ("  us-west1  ", "us-west1"),
    ],
)
def test_suite_cases_accepted(raw: str, expected: str) -> None:
    assert parse_param_value("Mcp-Param-Region", raw) == expected


@pytest.mark.parametrize("raw", ["=?base64?SGVsbG8?=", "=?base64?SGVs!!!bG8=?=", "=?base64?//8=?="])
def test_suite_cases_refused(raw: str) -> None:
    """Missing padding, characters outside the alphabet, bytes that are not UTF-8."""
    with pytest.raises(HeaderProblem):
        parse_param_value("Mcp-Param-Region", raw)


ARGUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "region": st.text(max_size=30),
        "priority": st.integers(-(10**12), 10**12),
        "urgent": st.booleans(),
        "note": st.text(max_size=10),
    },
)


@settings(max_examples=300)
@given(ARGUMENTS)
def test_what_a_conforming_client_sends_is_accepted(arguments: dict[str, Any]) -> None:
    assert param_rejection(SCHEMA, arguments, client_headers(arguments)) is None


@settings(max_examples=300)
@given(ARGUMENTS.filter(lambda a: "region" in a), VISIBLE)
def test_a_different_or_missing_value_is_refused(arguments: dict[str, Any], other: str) -> None:
    headers = [(k, v) for k, v in client_headers(arguments) if k != "Mcp-Param-Region"]
    missing = param_rejection(SCHEMA, arguments, headers)
    assert missing is not None and missing.code == HEADER_MISMATCH
    if other.strip(" \t") != arguments["region"]:
        wrong = param_rejection(SCHEMA, arguments, [*headers, ("Mcp-Param-Region", other)])
        assert wrong is not None and wrong.code == HEADER_MISMATCH


@settings(max_examples=300)
@given(ARGUMENTS.filter(lambda a: "region" in a), st.sampled_from(["Mcp-Param-Region", "mcp-param-region"]))
def test_a_repeated_param_header_is_refused(arguments: dict[str, Any], name: str) -> None:
    headers = client_headers(arguments)
    value = dict(headers)["Mcp-Param-Region"]
    rejection = param_rejection(SCHEMA, arguments, [*headers, (name, value)])
    assert rejection is not None and rejection.code == HEADER_MISMATCH


def test_a_header_for_an_absent_argument_is_refused() -> None:
    rejection = param_rejection(SCHEMA, {}, [("Mcp-Param-Region", "eu")])
    assert rejection is not None and rejection.code == HEADER_MISMATCH


def test_no_schema_checks_only_readability() -> None:
    assert param_rejection(None, {"region": "eu"}, [("Mcp-Param-Region", "elsewhere")]) is None
    bad = param_rejection(None, {}, [("Mcp-Param-Region", "=?base64?SGVsbG8?=")])
    assert bad is not None and bad.code == HEADER_MISMATCH


ROUTING = st.sampled_from(["MCP-Protocol-Version", "Mcp-Method", "Mcp-Name"])


@settings(max_examples=300)
@given(ROUTING, st.data())
def test_a_repeated_routing_header_is_refused_in_any_case(name: str, data: st.DataObject) -> None:
    other = "".join(c.upper() if data.draw(st.booleans()) else c.lower() for c in name)
    rejection = routing_rejection([(name, "a"), ("Accept", "*/*"), (other, "a")])
    assert rejection is not None and rejection.code == HEADER_MISMATCH and "\n" not in rejection.message


@settings(max_examples=300)
@given(st.lists(ROUTING, unique=True), st.lists(VISIBLE.filter(bool), max_size=3))
def test_routing_headers_sent_once_pass(names: list[str], extra: list[str]) -> None:
    headers = [(n, "v") for n in names] + [(f"X-{e}", "v") for e in extra]
    assert routing_rejection(headers) is None


@settings(max_examples=1000)
@given(
    method=st.sampled_from(["tasks/get", "tasks/update", "tasks/cancel", "tools/list", "custom/x"]),
    task=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
    header=st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
    same=st.booleans(),
)
def test_mcp_name_on_task_methods_must_match_the_task_id(
    method: str, task: str, header: str | None, same: bool
) -> None:
    """SEP-2663 routing headers: Mcp-Name on tasks/* mirrors params.taskId; other methods are not ours to check."""
    sent = task if same else header
    raw = [("Content-Type", "application/json")] + ([("Mcp-Name", sent)] if sent is not None else [])
    verdict = extension_name_rejection(method, {"taskId": task}, raw)
    if method.startswith("tasks/") and sent is not None and sent != task:
        assert verdict is not None and verdict.code == -32020 and "taskId" in verdict.message
    else:
        assert verdict is None
