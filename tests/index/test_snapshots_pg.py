"""The tool index kept in PostgreSQL (``index_snapshots``): a new replica starts warm, damage is rebuilt.

Real PostgreSQL (the ``pg_url`` fixture: a fresh database per test in a throw-away cluster), real
embedders (the offline MiniLM, and the hashing embedder) with their ``embed`` counted, a real
ToolIndex. "Replicas" are separate ``Database`` pools and separate embedder instances.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from tests.index.conftest import CATALOG, CountingEmbedder, tool
from toolcrib.config import Config, IndexConfig
from toolcrib.errors import IndexError_
from toolcrib.index import persistence
from toolcrib.index.documents import DEFAULT_STYLE, ToolDoc, document_text
from toolcrib.index.embedder import FastEmbedEmbedder, Vectors, normalize_query
from toolcrib.index.persistence import FileSnapshots, SnapshotStore
from toolcrib.index.search import ToolIndex
from toolcrib.index.snapshots import PgSnapshots, StoredIndex
from toolcrib.router.reindex import open_index
from toolcrib.storage import migrations
from toolcrib.storage.postgres import Database

QUERIES = ["commit my changes", "what time is it in Tokyo", "read a file", "weather tomorrow in Paris"]


class CountingMiniLM(FastEmbedEmbedder):
    """The offline MiniLM, counting the texts it embeds."""

    def __init__(self, cache_dir: Path) -> None:
        super().__init__(cache_dir=cache_dir)
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.texts.extend(texts)
        return super().embed(texts)


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def databases(pg_url: str) -> Iterator[tuple[Database, Database]]:
    """Two replicas' connection pools to one freshly migrated database."""
    a, b = Database(pg_url).open(), Database(pg_url).open()
    migrations.upgrade(a)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _row(db: Database) -> tuple[str, float] | None:
    with db.connection() as conn:
        row = conn.execute("SELECT model, updated FROM index_snapshots WHERE name = 'default'").fetchone()
    return None if row is None else (str(row[0]), float(row[1]))


def test_replica_b_starts_warm_with_zero_embeddings_real_model(
    databases: tuple[Database, Database], model_cache: Path
) -> None:
    db_a, db_b = databases
    config = Config(index=IndexConfig(path="/nonexistent/unused-with-a-database"))
    emb_a = CountingMiniLM(model_cache)
    replica_a = open_index(config, emb_a, db=db_a)
    assert isinstance(replica_a, StoredIndex) and len(replica_a) == 0
    report = replica_a.sync(CATALOG)
    assert report.embedded == len(CATALOG) == len(emb_a.texts) - report.embedded_side
    expected = {q: replica_a.search(q, limit=3) for q in QUERIES}
    row = _row(db_a)
    assert row is not None and row[0] == emb_a.model_id

    emb_b = CountingMiniLM(model_cache)
    replica_b = open_index(config, emb_b, db=db_b)
    assert len(replica_b) == len(CATALOG)
    assert replica_b.doc("git__git_commit") == CATALOG[3]
    report = replica_b.sync(CATALOG)
    assert (report.unchanged, report.added, report.changed, report.removed) == (len(CATALOG), 0, 0, 0)
    assert report.embedded == 0 and emb_b.texts == []  # warm: not one tool embedded
    for query, hits in expected.items():
        assert replica_b.search(query, limit=3) == hits
    assert emb_b.texts == [normalize_query(q) for q in QUERIES]  # only the queries themselves
    assert expected["what time is it in Tokyo"][0].key == "time__get_current_time"


@pytest.mark.parametrize("backend", ["file", "postgres"])
def test_both_stores_keep_the_same_contract(backend: str, databases: tuple[Database, Database], tmp_path: Path) -> None:
    def store(db: Database) -> SnapshotStore:
        return FileSnapshots(tmp_path / "idx") if backend == "file" else PgSnapshots(db)

    db_a, db_b = databases
    first = StoredIndex.open_store(store(db_a), CountingEmbedder())
    first.sync(CATALOG)
    extra = tool("git", "git_diff", "Shows changes between commits", repo_path="Path")
    again = CountingEmbedder()
    second = StoredIndex.open_store(store(db_b), again)
    report = second.sync([*CATALOG, extra])  # one new tool: only it is embedded
    assert (report.added, report.embedded, report.unchanged) == (1, 1, len(CATALOG))
    third = StoredIndex.open_store(store(db_a), CountingEmbedder())
    assert third.doc("git__git_diff") == extra and len(third) == len(CATALOG) + 1
    if backend == "file":  # the StoredIndex writes the directory form ToolIndex reads
        assert len(ToolIndex.open(tmp_path / "idx", CountingEmbedder())) == len(CATALOG) + 1


DAMAGE = {
    "garbage-vectors": "UPDATE index_snapshots SET vectors = 'garbage'::bytea",
    "truncated-vectors": "UPDATE index_snapshots SET vectors = substring(vectors from 1 for 100)",
    "edited-records": "UPDATE index_snapshots SET records = convert_to('[]', 'UTF8')",
    "foreign-meta": """UPDATE index_snapshots SET meta = '{"format": "someone-else/3"}'""",
    "meta-not-an-object": "UPDATE index_snapshots SET meta = '[1, 2]'",
    "checksum-forged-count": "UPDATE index_snapshots SET meta = jsonb_set(meta, '{count}', '3')",
    "model-column-disagrees": "UPDATE index_snapshots SET model = 'someone-else'",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_row_is_rebuilt_and_logged(
    damage: str, databases: tuple[Database, Database], caplog: pytest.LogCaptureFixture
) -> None:
    db_a, db_b = databases
    StoredIndex.open_store(PgSnapshots(db_a), CountingEmbedder()).sync(CATALOG)
    with db_a.connection() as conn:
        conn.execute(DAMAGE[damage].encode())

    embedder = CountingEmbedder()
    with caplog.at_level(logging.WARNING, logger="toolcrib.index.snapshots"):
        replica_b = StoredIndex.open_store(PgSnapshots(db_b), embedder)
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "unreadable" in warning and "rebuilt" in warning and "index_snapshots 'default'" in warning
    assert "\n" not in warning and "postgres@" in warning and "password" not in warning
    assert len(replica_b) == 0
    assert replica_b.sync(CATALOG).embedded == len(CATALOG)
    healed = StoredIndex.open_store(PgSnapshots(db_a), CountingEmbedder())
    assert len(healed) == len(CATALOG) and healed.sync(CATALOG).embedded == 0


def test_another_model_is_re_embedded(databases: tuple[Database, Database], caplog: pytest.LogCaptureFixture) -> None:
    db_a, db_b = databases
    StoredIndex.open_store(PgSnapshots(db_a), CountingEmbedder("model-a")).sync(CATALOG)
    other = CountingEmbedder("model-b")
    with caplog.at_level(logging.WARNING):
        replica_b = StoredIndex.open_store(PgSnapshots(db_b), other)
    assert "re-embedding all 9 tools" in caplog.text and len(replica_b) == 0
    assert replica_b.sync(CATALOG).embedded == len(CATALOG)
    with db_a.connection() as conn:
        meta = conn.execute("SELECT meta FROM index_snapshots").fetchone()
    assert meta is not None and meta[0]["fingerprint"] == "model-b"


def test_an_unchanged_sync_does_not_rewrite_the_row(databases: tuple[Database, Database]) -> None:
    db_a, db_b = databases
    StoredIndex.open_store(PgSnapshots(db_a), CountingEmbedder()).sync(CATALOG)
    before = _row(db_a)
    StoredIndex.open_store(PgSnapshots(db_b), CountingEmbedder()).sync(CATALOG)
    assert _row(db_a) == before


def test_concurrent_saves_from_replicas_never_leave_a_mixed_row(databases: tuple[Database, Database]) -> None:
    """Two replicas alternate between two catalogs, saving each time; every load sees one whole save."""
    db_a, db_b = databases
    small = CATALOG[:4]
    large = [*CATALOG, *(tool("extra", f"t{i}", f"extra tool number {i} for bulk") for i in range(40))]
    errors: list[BaseException] = []

    def replica(db: Database, order: list[list[ToolDoc]]) -> None:
        try:
            index = StoredIndex.open_store(PgSnapshots(db), CountingEmbedder())
            for _ in range(15):
                for docs in order:
                    index.sync(docs)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=replica, args=(db_a, [small, large])),
        threading.Thread(target=replica, args=(db_b, [large, small])),
    ]
    seen: set[int] = set()
    for t in threads:
        t.start()
    reader = Database(db_a.url).open()
    try:
        while any(t.is_alive() for t in threads):
            loaded = PgSnapshots(reader).load()  # CorruptIndex here would be a torn row
            if loaded is not None:
                seen.add(len(loaded.snapshot))
        for t in threads:
            t.join()
        final = PgSnapshots(reader).load()
    finally:
        reader.close()
    assert not errors
    assert seen <= {len(small), len(large)}
    assert final is not None and len(final.snapshot) in (len(small), len(large))
    docs = small if len(final.snapshot) == len(small) else large
    assert list(final.snapshot.docs) == docs
    expected = CountingEmbedder().embed([document_text(d, DEFAULT_STYLE) for d in docs])
    assert np.array_equal(final.snapshot.vectors, expected)  # records and vectors from the same save


def test_a_database_without_the_schema_is_a_clear_error(pg_url: str) -> None:
    db = Database(pg_url).open()
    try:
        with pytest.raises(IndexError_) as info:
            StoredIndex.open_store(PgSnapshots(db), CountingEmbedder())
    finally:
        db.close()
    message = info.value.message
    assert "cannot read the tool index from" in message and "toolcrib db upgrade" in message
    assert "\n" not in message


def test_without_a_database_open_index_uses_the_directory(tmp_path: Path) -> None:
    config = Config(index=IndexConfig(path=str(tmp_path / "idx"), model="hashing"))
    index = open_index(config, CountingEmbedder())
    assert type(index) is ToolIndex
    index.sync(CATALOG)
    assert persistence.exists(tmp_path / "idx")
    assert len(open_index(config, CountingEmbedder())) == len(CATALOG)


def test_a_failed_save_is_a_clear_error_and_retried(databases: tuple[Database, Database]) -> None:
    db_a, _ = databases
    index = StoredIndex.open_store(PgSnapshots(db_a), CountingEmbedder())
    with db_a.connection() as conn:
        conn.execute("ALTER TABLE index_snapshots RENAME TO elsewhere")
    with pytest.raises(IndexError_, match=r"cannot write the tool index to .*toolcrib db upgrade") as info:
        index.sync(CATALOG)
    assert "\n" not in info.value.message
    assert len(index) == len(CATALOG)  # searches keep working from memory
    with db_a.connection() as conn:
        conn.execute("ALTER TABLE elsewhere RENAME TO index_snapshots")
    assert index.sync(CATALOG).embedded == 0  # nothing changed, but the unsaved snapshot is saved now
    assert len(StoredIndex.open_store(PgSnapshots(db_a), CountingEmbedder())) == len(CATALOG)
