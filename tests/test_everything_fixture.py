"""The everything fixture's 2026-07-28 additions (tests/servers/everything_mrtr.py and
everything_diagnostics.py), checked in both eras with the SDK client and with raw HTTP where the
wire shape is the point: MRTR flows (SEP-2322) answer on the retry or mid-call, a tampered
requestState is refused with -32602, an undeclared capability is -32021 with HTTP 400
(SEP-2575), an unknown resource is -32602 with data.uri (SEP-2164), and the list-change
triggers notify handshake sessions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import Client

from tests.test_fixtures import http_server

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
ANSWERS: dict[str, str | int | float | bool] = {
    "name": "Ada",
    "ok": True,
    "color": "blue",
    "context": "ctx",
    "answer": "a",
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with http_server("everything") as served:
        yield served


async def _sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="Paris"), model="m", stop_reason="endTurn"
    )


async def _elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    assert isinstance(params, types.ElicitRequestFormParams)
    wanted = params.requested_schema.get("properties", {})
    return types.ElicitResult(action="accept", content={k: v for k, v in ANSWERS.items() if k in wanted})


async def _roots(context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root.model_validate({"uri": "file:///work", "name": "work"})])


def _client(url: str, mode: str, **kwargs: Any) -> Client:
    return Client(
        url,
        mode=mode,
        sampling_callback=_sampling,
        elicitation_callback=_elicitation,
        list_roots_callback=_roots,
        **kwargs,
    )


def _text(result: types.CallToolResult) -> str:
    assert not result.is_error, result
    assert isinstance(result.content[0], types.TextContent)
    return result.content[0].text


EXPECTED = {
    "test_input_required_result_elicitation": "Hello, Ada!",
    "test_input_required_result_sampling": "LLM says: Paris",
    "test_input_required_result_list_roots": "Client roots: file:///work",
    "test_input_required_result_request_state": 'state-ok: accept {"ok": true}',
    "test_input_required_result_tampered_state": 'state-ok: accept {"ok": true}',
    "test_input_required_result_multi_round": "Ada's favorite color is blue",
    "test_input_required_result_multiple_inputs": (
        'Received user_name: accept {"name": "Ada"}; greeting: Paris; client_roots: file:///work'
    ),
    "test_input_required_result_capabilities": (
        'Received user_name: accept {"name": "Ada"}; greeting: Paris; client_roots: file:///work'
    ),
    "test_streaming_elicitation": 'Streamed elicitation answered: accept {"answer": "a"}',
}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_mrtr_flows_finish_in_both_eras(mode: str, url: str) -> None:
    async with _client(url, mode) as client:
        for tool, text in EXPECTED.items():
            assert _text(await client.call_tool(tool, {})) == text, tool
        prompt = await client.get_prompt("test_input_required_result_prompt")
        assert isinstance(prompt.messages[0].content, types.TextContent)
        assert prompt.messages[0].content.text.endswith("context: ctx")


def _post(url: str, method: str, params: dict[str, Any], caps: dict[str, Any] | None = None) -> httpx.Response:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}} if caps is None else caps,
    }
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**params, "_meta": meta}}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if "name" in params or "uri" in params:
        headers["Mcp-Name"] = str(params.get("name", params.get("uri")))
    return httpx.post(url, json=body, headers=headers, timeout=10)


def _message(response: httpx.Response) -> dict[str, Any]:
    if response.headers["content-type"].startswith("application/json"):
        message: dict[str, Any] = response.json()
        return message
    events = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    return next(e for e in events if e.get("id") == 7)


def test_tampered_request_state_is_refused(url: str) -> None:
    call = {"name": "test_input_required_result_tampered_state", "arguments": {}}
    first = _message(_post(url, "tools/call", call))["result"]
    assert first["resultType"] == "input_required" and set(first["inputRequests"]) == {"confirm"}
    answer = {"confirm": {"action": "accept", "content": {"ok": True}}}
    for state in (first["requestState"] + "-TAMPERED", "x" + first["requestState"][1:], "{}"):
        error = _message(_post(url, "tools/call", {**call, "inputResponses": answer, "requestState": state}))["error"]
        assert error["code"] == -32602
    done = _message(_post(url, "tools/call", {**call, "inputResponses": answer, "requestState": first["requestState"]}))
    assert done["result"]["content"][0]["text"].startswith("state-ok")
    # State minted for one tool does not open another tool's flow.
    other = {"name": "test_input_required_result_request_state", "arguments": {}}
    moved = _post(url, "tools/call", {**other, "inputResponses": answer, "requestState": first["requestState"]})
    assert _message(moved)["error"]["code"] == -32602


def test_missing_input_response_is_asked_again(url: str) -> None:
    call = {"name": "test_input_required_result_multiple_inputs", "arguments": {}}
    caps: dict[str, Any] = {"elicitation": {}, "sampling": {}}
    first = _message(_post(url, "tools/call", call, caps))["result"]
    assert set(first["inputRequests"]) == {"user_name", "greeting"}, "roots was not declared, so not asked"
    part = {"user_name": {"action": "accept", "content": {"name": "Ada"}}, "stray": {"roots": []}}
    again = _post(url, "tools/call", {**call, "inputResponses": part, "requestState": first["requestState"]}, caps)
    assert set(_message(again)["result"]["inputRequests"]) == {"greeting"}


def test_undeclared_capability_is_32021_with_http_400(url: str) -> None:
    response = _post(url, "tools/call", {"name": "test_missing_capability", "arguments": {}}, caps={})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32021
    assert response.json()["error"]["data"]["requiredCapabilities"] == {"sampling": {}}


def test_unknown_resource_is_32602_with_the_uri(url: str) -> None:
    error = _message(_post(url, "resources/read", {"uri": "test://nope"}))["error"]
    assert (error["code"], error["data"]) == (-32602, {"uri": "test://nope"})


async def test_trigger_tool_change_notifies_a_handshake_session(url: str) -> None:
    seen: list[Any] = []

    async def on_message(message: Any) -> None:
        seen.append(message)

    async with Client(url, mode="legacy", message_handler=on_message) as client:
        before = {t.name: t.description for t in (await client.list_tools()).tools}["test_dynamic_tool"]
        await client.call_tool("test_trigger_tool_change", {})
        await client.call_tool("test_trigger_prompt_change", {})
        with anyio.fail_after(5):
            while not {types.ToolListChangedNotification, types.PromptListChangedNotification} <= {
                type(m) for m in seen
            }:
                await anyio.sleep(0.02)
        after = {t.name: t.description for t in (await client.list_tools()).tools}["test_dynamic_tool"]
        assert before != after
