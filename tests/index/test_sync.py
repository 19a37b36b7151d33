"""ToolIndex.sync and persistence: incremental embedding, removal, per-server sync, recovery."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path

import pytest

from tests.index.conftest import CountingEmbedder, tool
from toolcrib.errors import IndexError_
from toolcrib.index import persistence
from toolcrib.index.documents import ToolDoc
from toolcrib.index.search import ToolIndex


def test_round_trip_and_zero_embeddings_on_restart(tmp_path: Path, catalog: list[ToolDoc]) -> None:
    first = CountingEmbedder()
    ix = ToolIndex.open(tmp_path / "idx", first)
    report = ix.sync(catalog)
    assert (report.added, report.embedded, report.removed) == (len(catalog), len(catalog), 0)
    before = ix.search("commit changes", limit=3)

    again = CountingEmbedder()
    reopened = ToolIndex.open(tmp_path / "idx", again)
    assert len(reopened) == len(catalog)
    assert reopened.doc("git__git_commit") == catalog[3]
    assert [h.key for h in reopened.search("commit changes", limit=3)] == [h.key for h in before]
    report = reopened.sync(catalog)
    assert (report.unchanged, report.embedded, report.added, report.changed) == (len(catalog), 0, 0, 0)
    assert again.texts == ["commit changes"]


def test_only_changed_tools_are_embedded(embedder: CountingEmbedder, catalog: list[ToolDoc]) -> None:
    ix = ToolIndex.open(None, embedder)
    ix.sync(catalog)
    embedder.texts.clear()
    edited = dataclasses.replace(catalog[0], description="Tell the time anywhere in the world")
    report = ix.sync([edited, *catalog[1:]])
    assert (report.changed, report.embedded, report.unchanged) == (1, 1, len(catalog) - 1)
    # the tool's document, and its server's (which quotes the first sentence of each of its tools)
    assert report.embedded_side == 1 and len(embedder.texts) == 2 and "anywhere" in embedder.texts[0]
    assert ix.doc(edited.key) == edited


def test_schema_only_change_updates_the_record_without_embedding(
    embedder: CountingEmbedder, catalog: list[ToolDoc]
) -> None:
    ix = ToolIndex.open(None, embedder)
    ix.sync(catalog)
    embedder.texts.clear()
    schema = {"type": "object", "properties": {"timezone": {"type": "string", "minLength": 1}}}
    edited = dataclasses.replace(catalog[0], input_schema=schema)
    report = ix.sync([edited, *catalog[1:]])
    assert (report.changed, report.embedded) == (1, 0)
    assert ix.doc(edited.key) == edited


def test_removed_tools_leave_the_index(embedder: CountingEmbedder, catalog: list[ToolDoc]) -> None:
    ix = ToolIndex.open(None, embedder)
    ix.sync(catalog)
    report = ix.sync(catalog[:-2])
    assert (report.removed, report.embedded) == (2, 0)
    assert len(ix) == len(catalog) - 2
    assert all(h.key not in {d.key for d in catalog[-2:]} for h in ix.search("weather files", limit=20))


def test_per_server_sync_leaves_other_servers_alone(embedder: CountingEmbedder, catalog: list[ToolDoc]) -> None:
    ix = ToolIndex.open(None, embedder)
    ix.sync(catalog)
    embedder.texts.clear()
    new_git = [tool("git", "git_push", "Push commits to a remote"), tool("time", "ignored", "not git")]
    report = ix.sync(new_git, servers={"git"})
    assert (report.added, report.removed, report.embedded) == (1, 3, 1)
    keys = {d.key for d in ix.docs()}
    assert "git__git_push" in keys and "git__git_commit" not in keys
    assert "time__ignored" not in keys
    assert {d.key for d in catalog if d.server != "git"} <= keys


def test_full_sync_re_embeds_everything(embedder: CountingEmbedder, catalog: list[ToolDoc]) -> None:
    ix = ToolIndex.open(None, embedder)
    ix.sync(catalog)
    report = ix.sync(catalog, full=True)
    assert (report.embedded, report.unchanged) == (len(catalog), len(catalog))


def test_model_change_re_embeds_everything(
    tmp_path: Path, catalog: list[ToolDoc], caplog: pytest.LogCaptureFixture
) -> None:
    ToolIndex.open(tmp_path, CountingEmbedder("model-a")).sync(catalog)
    other = CountingEmbedder("model-b")
    with caplog.at_level(logging.WARNING):
        ix = ToolIndex.open(tmp_path, other)
    assert "re-embedding" in caplog.text
    assert len(ix) == 0
    assert ix.sync(catalog).embedded == len(catalog)
    assert json.loads((tmp_path / persistence.META).read_text())["fingerprint"] == "model-b"


def test_identical_texts_share_one_embedding(embedder: CountingEmbedder) -> None:
    a = tool("one", "echo", "Echo the input")
    b = dataclasses.replace(a, key="one__echo2")
    report = ToolIndex.open(None, embedder).sync([a, b])
    assert (report.added, report.embedded) == (2, 1)


def test_progress_reports_embedding(embedder: CountingEmbedder, catalog: list[ToolDoc]) -> None:
    seen: list[tuple[int, int]] = []
    ToolIndex.open(None, embedder).sync(catalog, progress=lambda done, total: seen.append((done, total)))
    total = len(catalog) + len({d.server for d in catalog})  # tool documents and server documents
    assert seen[0] == (0, total) and seen[-1] == (total, total)


@pytest.mark.parametrize("damage", ["truncate-vectors", "garbage-meta", "foreign-meta", "edit-records", "missing"])
def test_damaged_index_is_rebuilt_with_a_warning(
    tmp_path: Path, catalog: list[ToolDoc], caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    ToolIndex.open(tmp_path, CountingEmbedder()).sync(catalog)
    if damage == "truncate-vectors":
        path = tmp_path / persistence.VECTORS
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage-meta":
        (tmp_path / persistence.META).write_bytes(b"\x00\xffnot json")
    elif damage == "foreign-meta":
        (tmp_path / persistence.META).write_text('{"format": "someone-else/3"}')
    elif damage == "edit-records":
        (tmp_path / persistence.RECORDS).write_text("[]")
    else:
        (tmp_path / persistence.RECORDS).unlink()
    embedder = CountingEmbedder()
    with caplog.at_level(logging.WARNING):
        ix = ToolIndex.open(tmp_path, embedder)
    assert "unreadable" in caplog.text and "rebuilt" in caplog.text
    assert len(ix) == 0
    assert ix.sync(catalog).embedded == len(catalog)
    assert len(ToolIndex.open(tmp_path, CountingEmbedder())) == len(catalog)


def test_unwritable_path_is_a_clear_error(tmp_path: Path, catalog: list[ToolDoc]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    ix = ToolIndex.open(blocker / "idx", CountingEmbedder())
    with pytest.raises(IndexError_, match="cannot write the tool index"):
        ix.sync(catalog)
    assert len(ix) == len(catalog)


def test_search_during_sync_sees_a_whole_catalog(catalog: list[ToolDoc]) -> None:
    ix = ToolIndex.open(None, CountingEmbedder())
    ix.sync(catalog)
    stop = threading.Event()
    sizes: set[int] = set()

    def searcher() -> None:
        while not stop.is_set():
            hits = ix.search("file", limit=100)
            sizes.add(len(hits))

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        for _ in range(20):
            ix.sync(catalog[:4])
            ix.sync(catalog)
    finally:
        stop.set()
        thread.join()
    assert sizes <= {4, len(catalog)}


def test_unchanged_documents_are_not_retokenized(
    embedder: CountingEmbedder, catalog: list[ToolDoc], monkeypatch: pytest.MonkeyPatch
) -> None:
    from toolcrib.index import store

    ix = ToolIndex.open(None, embedder)
    ix.sync(catalog)
    calls: list[str] = []
    real = store.tokenize

    def counting(text: str) -> list[str]:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(store, "tokenize", counting)
    ix.sync([*catalog, tool("new", "ping", "Ping a host")])
    assert len(calls) == 1
    assert ix.search("ping a host", mode="bm25", limit=1)[0].key == "new__ping"
