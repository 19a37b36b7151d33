"""Servers as well as tools, and generated documents (issue 14).

Ranking tests use the shipped int8 MiniLM (real embeddings); the document generators get hypothesis
property tests (never raise, bounded, deterministic).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.index.conftest import CATALOG, CountingEmbedder, tool
from toolcrib.index.documents import (
    GENERATED_CHARS,
    SERVER_TEXT_CHARS,
    ServerDoc,
    ToolDoc,
    generated_text,
    server_text,
)
from toolcrib.index.embedder import FastEmbedEmbedder
from toolcrib.index.fusion import DEFAULT_FUSION, Fusion
from toolcrib.index.search import SYNC_CHUNK, ToolIndex, compose, describe_parts

#: Two servers with the same generic tools: only the server documents say which is the calendar.
GENERIC = [
    tool("acme", "list_items", "List the items in the collection", collection="Collection id"),
    tool("acme", "create_item", "Create a new item with a title and a date", title="Title", date="Date"),
    tool("acme", "delete_item", "Delete an item by id", item_id="Item id"),
    tool("bolt", "list_items", "List the items in the collection", collection="Collection id"),
    tool("bolt", "create_item", "Create a new item with a title and a date", title="Title", date="Date"),
    tool("bolt", "delete_item", "Delete an item by id", item_id="Item id"),
]
SERVERS = {
    "acme": ServerDoc("acme", "Acme Calendar", "Manage your calendar: meetings, appointments and events."),
    "bolt": ServerDoc("bolt", "Bolt Notes", "Keep short text notes and to-do lists.", "Use for personal notes."),
}
WITH_SERVERS = dataclasses.replace(DEFAULT_FUSION, server_weight=0.2)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> FastEmbedEmbedder:
    return FastEmbedEmbedder(cache_dir=tmp_path_factory.mktemp("cache"))


def test_a_query_naming_only_the_servers_domain_finds_its_tools(minilm: FastEmbedEmbedder) -> None:
    index = ToolIndex(None, minilm, fusion=WITH_SERVERS)
    index.sync([*GENERIC, *CATALOG], server_docs=SERVERS)
    for query in ("manage my calendar", "add a meeting to my calendar", "what appointments do I have"):
        hits = index.search(query, limit=len(GENERIC) + len(CATALOG))
        ranks = {h.key: i for i, h in enumerate(hits)}
        for name in ("list_items", "create_item", "delete_item"):
            assert ranks[f"acme__{name}"] < ranks[f"bolt__{name}"], (query, name)
        if "calendar" in query:
            assert hits[0].key.startswith("acme__"), (query, hits[:3])
    notes = {h.key: i for i, h in enumerate(index.search("keep a to-do list of notes", limit=20))}
    assert notes["bolt__create_item"] < notes["acme__create_item"]
    # the server term is what moves them: acme's is larger for the calendar query, bolt's for notes
    parts = {h.key: h.parts for h in index.search("manage my calendar", limit=20, explain=True)}
    assert parts["acme__create_item"]["server"] > parts["bolt__create_item"]["server"]  # type: ignore[index]


@pytest.mark.parametrize(
    "fusion",
    [WITH_SERVERS, dataclasses.replace(WITH_SERVERS, generated_weight=0.1, server_centroid=0.5, server_expand=2)],
    ids=["server", "server+generated"],
)
def test_explain_parts_still_recompose_the_score(minilm: FastEmbedEmbedder, fusion: Fusion) -> None:
    index = ToolIndex(None, minilm, fusion=fusion)
    index.generated_docs = True
    index.sync([*GENERIC, *CATALOG], server_docs=SERVERS)
    for query in ("manage my calendar", "what time is it in Tokyo", "read the file config.toml"):
        hits = index.search(query, limit=6, explain=True)
        assert hits
        for hit in hits:
            assert hit.parts is not None
            assert round(compose(hit.parts), 6) == hit.score
            assert hit.parts["server_term"] == pytest.approx(fusion.server_weight * hit.parts["server"], abs=1e-6)
            if fusion.generated_weight:
                assert "generated_term" in hit.parts
            assert "server" in describe_parts(hit.parts)


def test_server_documents_persist_and_are_not_re_embedded(tmp_path: Path) -> None:
    fusion = dataclasses.replace(DEFAULT_FUSION, server_weight=0.2)
    first = CountingEmbedder()
    ix = ToolIndex.open(tmp_path, first, fusion=fusion)
    report = ix.sync(GENERIC, server_docs=SERVERS)
    assert (report.embedded, report.embedded_side) == (len(GENERIC), 2)
    again = CountingEmbedder()
    reopened = ToolIndex.open(tmp_path, again, fusion=fusion)
    assert reopened._snap.servers.docs == (SERVERS["acme"], SERVERS["bolt"])
    report = reopened.sync(GENERIC)  # no server_docs given: the stored ones are kept
    assert (report.embedded, report.embedded_side) == (0, 0) and again.texts == []
    changed = {**SERVERS, "bolt": ServerDoc("bolt", "Bolt Notes", "Notes, now with reminders.")}
    report = reopened.sync(GENERIC, server_docs=changed)
    assert (report.embedded, report.embedded_side) == (0, 1) and "reminders" in again.texts[0]


def test_server_text_has_the_servers_own_words_then_its_tools() -> None:
    text = server_text(SERVERS["bolt"], GENERIC[3:])
    assert text.startswith("bolt (Bolt Notes): Keep short text notes and to-do lists. Use for personal notes.")
    assert "Tools: list items, create item, delete item." in text
    assert server_text(ServerDoc("x"), []) == "x:"


def test_generated_text_paraphrases_the_name_and_lists_the_objects() -> None:
    doc = tool("time", "getCurrentTime", "Returns the current time.", timezone="IANA name", fmt="format")
    doc = dataclasses.replace(doc, input_schema={**doc.input_schema, "required": ["fmt"]})
    text = generated_text(doc)
    assert text == (
        "get current time. Actions: get, fetch, read, retrieve. Takes: fmt, timezone. "
        "Also: fetch current time; read current time; retrieve current time"
    )


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_schemas = st.one_of(
    st.dictionaries(st.text(max_size=12), _json, max_size=4),
    st.fixed_dictionaries({"properties": st.dictionaries(st.text(max_size=40), _json, max_size=12), "required": _json}),
)


@settings(max_examples=1500, deadline=None)
@given(name=st.text(max_size=200), description=st.text(max_size=600), schema=_schemas)
def test_generated_text_never_raises_is_bounded_and_stable(name: str, description: str, schema: Any) -> None:
    doc = ToolDoc(key="k", server="s", name=name, description=description, input_schema=schema)
    text = generated_text(doc)
    assert isinstance(text, str) and len(text) <= GENERATED_CHARS
    assert generated_text(doc) == text
    assert text == generated_text(ToolDoc.from_json(doc.to_json())) if isinstance(schema, dict) else True


@settings(max_examples=1000, deadline=None)
@given(
    server=st.text(max_size=80),
    fields=st.lists(st.none() | st.text(max_size=3000), min_size=3, max_size=3),
    names=st.lists(st.text(max_size=60), max_size=30),
    description=st.text(max_size=400),
)
def test_server_text_never_raises_and_is_bounded(
    server: str, fields: list[str | None], names: list[str], description: str
) -> None:
    sdoc = ServerDoc(server, *fields)
    tools = [
        ToolDoc(key=f"k{i}", server=server, name=n, description=description, input_schema={})
        for i, n in enumerate(names)
    ]
    text = server_text(sdoc, tools)
    assert len(text) <= SERVER_TEXT_CHARS and text == server_text(sdoc, tools)
    assert ServerDoc.from_json(sdoc.to_json()) == sdoc


def test_upstream_states_become_server_documents() -> None:
    from toolcrib.router.reindex import server_docs_of
    from toolcrib.router.upstream_state import UpstreamState

    states = {
        "cal": UpstreamState(
            connects=1, server_title="Calendar", server_description="Meetings", instructions="Use ISO dates."
        ),
        "bare": UpstreamState(connects=2, server_name="bare-server"),  # connected, says nothing: known empty
        "later": UpstreamState(),  # never connected: unknown, the index keeps what it stored
    }
    assert server_docs_of(states) == {
        "cal": ServerDoc("cal", "Calendar", "Meetings", "Use ISO dates."),
        "bare": ServerDoc("bare"),
    }


class BatchCounter(CountingEmbedder):
    """A CountingEmbedder that also records each ``embed`` call's batch."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        return super().embed(texts)


def test_each_server_document_is_embedded_once_per_sync_and_batched() -> None:
    """The benchmark's 10,000-tool sync question: 200 servers x 10 tools embed 2,000 tool texts and
    200 server texts, each once, in ``ceil(2200 / SYNC_CHUNK)`` batches; later syncs embed only the
    server documents that changed (one tool added: that tool and its server's document)."""
    docs = [tool(f"srv{s}", f"op_{t}", f"Operation {t} of server {s}.", x="X") for s in range(200) for t in range(10)]
    embedder = BatchCounter()
    index = ToolIndex(None, embedder, fusion=WITH_SERVERS)
    report = index.sync(docs)
    assert (report.embedded, report.embedded_side) == (2000, 200)
    assert len(embedder.texts) == len(set(embedder.texts)) == 2200
    assert len(embedder.batches) == math.ceil(2200 / SYNC_CHUNK)
    assert all(len(b) == SYNC_CHUNK for b in embedder.batches[:-1])
    embedder.texts.clear()
    extra = tool("srv7", "op_new", "A new operation.")
    report = index.sync([*docs, extra])
    assert (report.added, report.embedded, report.embedded_side) == (1, 1, 1)
    assert any(t.startswith("srv7: Tools: ") and t.endswith("A new operation.") for t in embedder.texts)
    embedder.texts.clear()
    report = index.sync([*docs, extra], server_docs={"srv3": ServerDoc("srv3", instructions="Now with words.")})
    assert (report.embedded, report.embedded_side) == (0, 1) and "Now with words." in embedder.texts[0]
    embedder.texts.clear()
    report = index.sync([*docs, extra], servers={"srv9"})  # one server's sync step: nothing changed
    assert (report.embedded, report.embedded_side) == (0, 0) and embedder.texts == []
