"""The approval layer against a real approval store and sealer (the upstream edge is a terminal that
records whether it ran): whatever a 2026-07-28 client sends back, only an operator's decision in the
store lets the call through."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError

from toolcrib.gateway.approval import approval_layer, url_elicitation_declared
from toolcrib.gateway.pipeline import Pipeline, TargetKind, UpstreamCall
from toolcrib.gateway.trust.approvals import ApprovalStore, AsyncApprovals
from toolcrib.gateway.trust.identity import Principal
from toolcrib.gateway.trust.policy import Decision
from toolcrib.gateway.trust.sealed import Sealer

URL_CAPS: dict[str, Any] = {"elicitation": {"form": {}, "url": {}}}
ALICE = Principal("key", "alice")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


class Gate:
    """The layer in a one-layer pipeline whose terminal counts the calls that got through."""

    def __init__(self, store: ApprovalStore, mode: str = "hold") -> None:
        self.approvals = AsyncApprovals(store, poll=0.05)
        self.sealer = Sealer(b"k" * 32)
        self.ran = 0
        layer = approval_layer(
            self.approvals, mode=mode, timeout=30, sealer=self.sealer, base_url=lambda: "https://gw.example"
        )
        self.pipeline = Pipeline([layer], self._terminal)

    async def _terminal(self, call: UpstreamCall) -> types.CallToolResult:
        self.ran += 1
        return types.CallToolResult(content=[types.TextContent(type="text", text="ran")])

    async def call(self, **fields: Any) -> Any:
        method = fields.pop("method", "tools/call")
        kind: TargetKind = "tool" if method == "tools/call" else "prompt"
        call = UpstreamCall(
            principal=fields.pop("principal", ALICE), method=method, kind=kind,
            target="echo__echo", server="echo", name="echo", arguments=fields.pop("arguments", {"text": "hi"}),
            era=fields.pop("era", "2026-07-28"), client_capabilities=fields.pop("caps", URL_CAPS), **fields,
        )  # fmt: skip
        call.state.decision = Decision("approve", "needs-approval", "test")
        return await self.pipeline.call(call)

    def resume_of(self, result: types.InputRequiredResult, principal: Principal = ALICE) -> Any:
        return self.sealer.open(result.request_state, "request_state", principal.id)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = ApprovalStore(tmp_path / "approvals.db")
    yield s
    s.close()


@settings(max_examples=40, deadline=None)
@given(responses=st.dictionaries(st.text(max_size=20), json_values, max_size=4), accept=st.booleans())
def test_no_input_responses_approve(responses: dict[str, Any], accept: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = ApprovalStore(Path(tmp) / "approvals.db")
        try:

            async def main() -> None:
                gate = Gate(store)
                first = await gate.call()
                assert isinstance(first, types.InputRequiredResult) and gate.ran == 0
                ((key, _),) = (first.input_requests or {}).items()
                answers = dict(
                    responses, **({key: {"action": "accept", "content": {"approved": True}}} if accept else {})
                )
                again = await gate.call(resume=gate.resume_of(first), input_responses=answers)
                assert gate.ran == 0 and store.list("pending") and not store.list("approved")
                if isinstance(again, types.InputRequiredResult):
                    assert gate.resume_of(again)["id"] == gate.resume_of(first)["id"]
                else:  # only a decline or cancel under our key ends the call, unrun
                    answer = answers.get(key)
                    assert again.is_error and isinstance(answer, dict) and answer.get("action") in ("decline", "cancel")

            anyio.run(main)
        finally:
            store.close()


async def _approve_first_pending(store: ApprovalStore) -> str:
    (pending,) = store.list("pending")
    store.approve(pending.id, "key:op")
    return pending.id


@pytest.mark.anyio
async def test_operator_approval_lets_exactly_one_retry_through(store: ApprovalStore) -> None:
    gate = Gate(store)
    first = await gate.call()
    resume = gate.resume_of(first)
    assert resume["k"] == "approval" and resume["target"] == "echo__echo"
    ask = next(iter((first.input_requests or {}).values()))
    assert ask.params.url == f"https://gw.example/admin/approvals/{resume['id']}"
    assert await _approve_first_pending(store) == resume["id"]
    done = await gate.call(resume=resume)
    assert gate.ran == 1 and not done.is_error
    again = await gate.call(resume=resume)
    assert gate.ran == 1 and again.is_error and "already used" in again.content[0].text


@pytest.mark.anyio
async def test_denied_and_mismatched_resumes_are_refused(store: ApprovalStore) -> None:
    gate = Gate(store)
    resume = gate.resume_of(await gate.call())
    with pytest.raises(MCPError) as err:
        await gate.call(resume=resume, arguments={"text": "other"})
    assert err.value.error.code == types.INVALID_PARAMS
    store.deny(resume["id"], "key:op")
    denied = await gate.call(resume=resume)
    assert denied.is_error and "denied by an operator" in denied.content[0].text and gate.ran == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "fields",
    [
        {"caps": None},  # no capabilities declared
        {"caps": {"elicitation": {}}},  # form mode only (a bare elicitation object)
        {"caps": {"elicitation": {"form": {}}}},
        {"method": "completion/complete"},  # a method with no input_required result
    ],
)
async def test_modern_client_that_cannot_take_the_url_gets_the_pending_error(
    store: ApprovalStore, fields: dict[str, Any]
) -> None:
    gate = Gate(store, mode="pending")
    if fields.get("method") == "completion/complete":
        with pytest.raises(MCPError) as err:
            await gate.call(**fields)
        assert "needs an operator's approval" in err.value.error.message
    else:
        result = await gate.call(**fields)
        assert result.is_error and "needs an operator's approval (id " in result.content[0].text
    assert gate.ran == 0 and len(store.list("pending")) == 1


@given(caps=st.dictionaries(st.sampled_from(["elicitation", "sampling", "roots"]), json_values, max_size=3))
def test_url_elicitation_declared_only_by_an_url_object(caps: dict[str, Any]) -> None:
    elicitation = caps.get("elicitation")
    expected = isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)
    assert url_elicitation_declared(caps) is expected
    assert url_elicitation_declared({**caps, "elicitation": {"url": {}}}) is True
