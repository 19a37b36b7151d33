"""A server's own words (description, instructions) reach its *stored* server document and vector.

Both index stores (the embedded directory, :class:`~toolcrib.index.persistence.FileSnapshots`, and
PostgreSQL's ``index_snapshots`` row, :class:`~toolcrib.index.snapshots.PgSnapshots`): a first
replica syncs a server that says something about itself; a second replica opens the same store,
sees the server connected saying something else (or nothing at all), syncs through
:func:`~toolcrib.router.reindex.server_docs_of` as the gateway does, and the store must then hold
the new document and a new vector. Real stores (a directory, a throw-away PostgreSQL cluster),
the real hashing embedder (counted).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.index.conftest import CountingEmbedder, tool
from toolcrib.index.documents import ServerDoc
from toolcrib.index.fusion import DEFAULT_FUSION
from toolcrib.index.persistence import FileSnapshots, SnapshotStore
from toolcrib.index.snapshots import PgSnapshots, StoredIndex
from toolcrib.router.reindex import server_docs_of
from toolcrib.router.upstream_state import UpstreamState

FUSION = dataclasses.replace(DEFAULT_FUSION, server_weight=0.2)
TOOLS = [
    tool("entries", "add_entry", "Add an entry", title="Title", when="When"),
    tool("entries", "list_entries", "List the entries"),
    tool("echo", "echo", "Echo the text back", text="Text"),
]
SAID = UpstreamState(
    status="connected",
    connects=1,
    server_title="Entries",
    server_description="Keeps entries.",
    instructions="A calendar: meetings and appointments.",
)


@pytest.fixture(params=["directory", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SnapshotStore]:
    if request.param == "directory":
        yield FileSnapshots(tmp_path / "index")
        return
    from toolcrib.storage import migrations
    from toolcrib.storage.postgres import Database

    db = Database(request.getfixturevalue("pg_url")).open()
    try:
        migrations.upgrade(db)
        yield PgSnapshots(db)
    finally:
        db.close()


def _replica(store: SnapshotStore, state: UpstreamState) -> tuple[StoredIndex, CountingEmbedder]:
    """A replica opening ``store`` and syncing the catalog as the gateway does, ``entries`` in ``state``."""
    embedder = CountingEmbedder()
    index = StoredIndex.open_store(store, embedder, fusion=FUSION)
    states = {"entries": state, "echo": UpstreamState(status="connected", connects=1)}
    index.sync(TOOLS, server_docs=server_docs_of(states))
    return index, embedder


def _stored(store: SnapshotStore) -> tuple[ServerDoc, np.ndarray]:
    loaded = store.load()
    assert loaded is not None
    servers = loaded.snapshot.servers
    j = servers.by_name["entries"]
    return servers.docs[j], servers.text[j]


@pytest.mark.parametrize(
    "now",
    [
        dataclasses.replace(SAID, instructions="A to-do list: tasks and chores."),
        dataclasses.replace(SAID, instructions=None),
        dataclasses.replace(SAID, server_description="Keeps entries, now with reminders."),
        dataclasses.replace(SAID, server_description=None),
        UpstreamState(status="connected", connects=1),  # connected, and says nothing about itself
    ],
    ids=["instructions-changed", "instructions-dropped", "description-changed", "description-dropped", "silent"],
)
def test_a_changed_server_re_embeds_its_stored_document(store: SnapshotStore, now: UpstreamState) -> None:
    _replica(store, SAID)
    doc, vector = _stored(store)
    assert doc == ServerDoc("entries", "Entries", "Keeps entries.", "A calendar: meetings and appointments.")
    second, embedder = _replica(store, now)
    expected = ServerDoc("entries", now.server_title, now.server_description, now.instructions)
    assert second._snap.servers.docs[second._snap.servers.by_name["entries"]] == expected
    assert len(embedder.texts) == 1 and embedder.texts[0].startswith("entries")  # that document alone
    doc, changed = _stored(store)
    assert doc == expected
    assert not np.allclose(vector, changed)
    assert np.allclose(changed, CountingEmbedder().embed(embedder.texts)[0])


def test_a_server_not_connected_yet_keeps_its_stored_document(store: SnapshotStore) -> None:
    _replica(store, SAID)
    before = _stored(store)
    _, embedder = _replica(store, UpstreamState())  # still starting: nothing known about it yet
    assert embedder.texts == []
    after = _stored(store)
    assert after[0] == before[0] and np.array_equal(after[1], before[1])
