"""Property tests for the listen filter (toolcrib/gateway/listen.py): the ``taskIds`` parser, the
per-stream matcher, and the acknowledgement naming exactly what a stream was granted (SEP-2575)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import (
    SUBSCRIPTION_ID_META_KEY,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)

from toolcrib.gateway.listen import BUFFER, Frame, Stream, _ack, _task_ids
from toolcrib.gateway.trust.identity import Principal

URIS = st.lists(st.text(min_size=1, max_size=12), max_size=4)
EVENTS: st.SearchStrategy[ServerEvent] = st.one_of(
    st.just(ToolsListChanged()),
    st.just(PromptsListChanged()),
    st.just(ResourcesListChanged()),
    st.builds(ResourceUpdated, uri=st.text(min_size=1, max_size=12)),
)


@contextmanager
def _stream(**granted: Any) -> Iterator[Stream]:
    send, recv = anyio.create_memory_object_stream[Frame](BUFFER)
    with send, recv:
        yield Stream(Principal("key", "alice"), {SUBSCRIPTION_ID_META_KEY: 7}, send, **granted)


@settings(max_examples=1000)
@given(st.lists(st.text(max_size=20), max_size=6))
def test_task_ids_keep_strings_in_order_without_repeats(ids: list[str]) -> None:
    parsed = _task_ids(types.SubscriptionFilter.model_validate({"taskIds": ids}))
    assert parsed == list(dict.fromkeys(ids))


@settings(max_examples=1000)
@given(
    st.one_of(st.integers(), st.text(), st.dictionaries(st.text(), st.integers()), st.lists(st.integers(), min_size=1))
)
def test_task_ids_that_are_not_a_list_of_strings_are_invalid_params(raw: Any) -> None:
    with pytest.raises(MCPError) as err:
        _task_ids(types.SubscriptionFilter.model_validate({"taskIds": raw}))
    assert err.value.error.code == types.INVALID_PARAMS


def test_no_task_ids_is_empty() -> None:
    assert _task_ids(types.SubscriptionFilter()) == []


@settings(max_examples=1000)
@given(st.booleans(), st.booleans(), st.booleans(), URIS, EVENTS)
def test_a_stream_wants_only_what_it_was_granted(
    tools: bool, prompts: bool, resources: bool, uris: list[str], event: ServerEvent
) -> None:
    with _stream(tools=tools, prompts=prompts, resources=resources, uris=set(uris)) as stream:
        wants = stream.wants(event)
    expected = {
        ToolsListChanged: tools,
        PromptsListChanged: prompts,
        ResourcesListChanged: resources,
    }.get(type(event), isinstance(event, ResourceUpdated) and event.uri in uris)
    assert wants is expected


@settings(max_examples=1000)
@given(st.booleans(), st.booleans(), st.booleans(), URIS, st.lists(st.text(min_size=1, max_size=8), max_size=3))
def test_the_ack_names_exactly_the_grant(
    tools: bool, prompts: bool, resources: bool, uris: list[str], tasks: list[str]
) -> None:
    with _stream(tools=tools, prompts=prompts, resources=resources, uris=set(uris)) as stream:
        stream.tasks = {t: ("s", "u", "s__t") for t in tasks}
        wire = _ack(stream).model_dump(by_alias=True, mode="json", exclude_none=True)
    assert wire["method"] == "notifications/subscriptions/acknowledged"
    assert wire["params"]["_meta"] == {SUBSCRIPTION_ID_META_KEY: 7}
    granted = wire["params"]["notifications"]
    assert granted.get("toolsListChanged", False) is tools and granted.get("promptsListChanged", False) is prompts
    assert granted.get("resourcesListChanged", False) is resources
    assert set(granted.get("resourceSubscriptions", [])) == set(uris)
    assert granted.get("taskIds", []) == list(dict.fromkeys(tasks))
    assert all(v not in (False, None, []) for v in granted.values())  # nothing not granted is echoed


def test_a_stream_whose_client_stops_reading_is_ended() -> None:
    send, recv = anyio.create_memory_object_stream[Frame](2)
    with send, recv:
        stream = Stream(Principal("key", "alice"), {}, send, tools=True)
        for _ in range(3):
            stream.put(Frame(method="notifications/tools/list_changed"))
        assert [recv.receive_nowait().method for _ in range(2)] == ["notifications/tools/list_changed"] * 2
        with pytest.raises(anyio.EndOfStream):  # the third did not fit: the stream was ended, not blocked
            recv.receive_nowait()
