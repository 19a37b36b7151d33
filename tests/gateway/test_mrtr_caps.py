"""Property tests for the MRTR capability rules (toolcrib.gateway.mrtr): what toolcrib declares
upstream for a client, and which input requests a client's declared capabilities cover."""

from __future__ import annotations

from typing import Any

import mcp_types as types
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.gateway.mrtr import required_capability
from toolcrib.router.tolerate import RELAYABLE, declared_upstream

NAMES = st.sampled_from([*RELAYABLE, "extensions", "experimental", "tasks"])
VALUES: st.SearchStrategy[dict[str, Any] | None] = st.one_of(
    st.just({}), st.just({"form": {}}), st.just({"url": {}}), st.just({"tools": {}}), st.none()
)
CAPS = st.dictionaries(NAMES, VALUES, max_size=6)


@settings(max_examples=1000)
@given(own=CAPS, client=CAPS)
def test_declared_upstream_never_claims_what_either_side_lacks(own: dict[str, Any], client: dict[str, Any]) -> None:
    out = declared_upstream(own, client)
    for key in RELAYABLE:
        if key in out:
            assert key in own and out[key] == client[key] and isinstance(client[key], dict)
        else:
            assert key not in own or not isinstance(client.get(key), dict)
    skip = (*RELAYABLE, "extensions")
    assert {k: v for k, v in out.items() if k not in skip} == {k: v for k, v in own.items() if k not in skip}
    ours, theirs = own.get("extensions") or {}, client.get("extensions") or {}
    assert set(out.get("extensions", {})) == set(ours) & set(theirs)
    assert all(out["extensions"][k] == ours[k] for k in out.get("extensions", {}))


REQUESTS: list[types.InputRequest] = [
    types.ElicitRequest(params=types.ElicitRequestFormParams(message="m", requested_schema={"type": "object"})),
    types.ElicitRequest(params=types.ElicitRequestURLParams(message="m", url="https://x.test/", elicitation_id="e")),
    types.CreateMessageRequest(params=types.CreateMessageRequestParams(messages=[], max_tokens=1)),
    types.ListRootsRequest(),
]


@settings(max_examples=1000)
@given(caps=CAPS, index=st.integers(0, len(REQUESTS) - 1))
def test_a_missing_capability_names_one_the_request_needs(caps: dict[str, Any], index: int) -> None:
    request = REQUESTS[index]
    missing = required_capability(caps, request)
    if missing is None:  # covered: the client declared the capability of the request's kind
        kind = {"elicitation/create": "elicitation", "sampling/createMessage": "sampling"}.get(request.method, "roots")
        assert isinstance(caps.get(kind), dict)
    else:  # the refusal names exactly one capability, one the client did not declare as needed
        ((name, value),) = missing.items()
        assert caps.get(name) is None or any(k not in caps[name] for k in value)


def test_bare_elicitation_is_form_support() -> None:
    assert required_capability({"elicitation": {}}, REQUESTS[0]) is None
    assert required_capability({"elicitation": {}}, REQUESTS[1]) == {"elicitation": {"url": {}}}
    assert required_capability({"elicitation": {"url": {}}}, REQUESTS[0]) == {"elicitation": {"form": {}}}
    assert required_capability({}, REQUESTS[3]) == {"roots": {}}
