"""Snapshots kept in a :class:`~toolcrib.index.persistence.SnapshotStore`, e.g. in PostgreSQL.

With ``[storage] url`` set, every replica keeps the tool index in one row of ``index_snapshots``
(:mod:`toolcrib.storage.migrations`): the same three parts as the directory form
(:func:`~toolcrib.index.persistence.encode`), with the same checksums verified at load. A new
replica whose catalog matches the stored snapshot starts warm: its first sync reuses every stored
vector (by content hash) and embeds nothing.

Replicas save with one ``INSERT ... ON CONFLICT DO UPDATE`` (one statement, one transaction): the
last writer wins and a reader sees one writer's row, whole. A replica does not reload rows other
replicas write after it started; its own syncs keep its in-memory index current.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg.types.json import Jsonb

from toolcrib.errors import IndexError_, StorageError
from toolcrib.index.documents import DEFAULT_STYLE, ServerDoc, TextStyle, ToolDoc
from toolcrib.index.embedder import QUERY_CACHE_SIZE, Embedder
from toolcrib.index.fusion import Fusion
from toolcrib.index.persistence import CorruptIndex, FileSnapshots, Loaded, SnapshotStore, decode, encode
from toolcrib.index.search import SyncReport, ToolIndex
from toolcrib.index.store import Snapshot

if TYPE_CHECKING:
    from toolcrib.storage.postgres import Database

log = logging.getLogger(__name__)

_PARTS = ("meta", "records", "vectors")


class PgSnapshots:
    """A :class:`~toolcrib.index.persistence.SnapshotStore` in the row ``name`` of ``index_snapshots``.

    Columns: ``model`` (the model id, also in ``meta``), ``meta`` (jsonb), ``records`` and ``vectors``
    (bytea), ``updated`` (Unix seconds). Errors: :class:`~toolcrib.index.persistence.CorruptIndex`
    when the row is damaged or foreign; :class:`~toolcrib.errors.IndexError_` (one line) when the
    database cannot be read or written (unreachable, or its schema not yet upgraded).
    """

    def __init__(self, db: Database, name: str = "default") -> None:
        self.db = db
        self.name = name
        self.where = f"{db.where} (index_snapshots {name!r})"

    def load(self) -> Loaded | None:
        try:
            with self.db.connection() as conn:
                row = conn.execute(
                    "SELECT model, meta, records, vectors FROM index_snapshots WHERE name = %s", (self.name,)
                ).fetchone()
        except (StorageError, psycopg.Error) as exc:
            raise IndexError_(self._failed("read", exc)) from None
        if row is None:
            return None
        model, meta, records, vectors = row
        if not isinstance(records, bytes | memoryview) or not isinstance(vectors, bytes | memoryview):
            raise CorruptIndex("records and vectors are not binary")
        loaded = decode(meta, bytes(records), bytes(vectors), names=_PARTS)
        if loaded.model_id != model:
            raise CorruptIndex(f"the row's model {model!r} disagrees with its meta ({loaded.model_id!r})")
        return loaded

    def save(self, snapshot: Snapshot, *, model_id: str, fingerprint: str) -> None:
        encoded = encode(snapshot, model_id=model_id, fingerprint=fingerprint)
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO index_snapshots (name, model, meta, records, vectors, updated) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET model = EXCLUDED.model, "
                    "meta = EXCLUDED.meta, records = EXCLUDED.records, vectors = EXCLUDED.vectors, "
                    "updated = EXCLUDED.updated",
                    (self.name, model_id, Jsonb(encoded.meta), encoded.records, encoded.vectors, time.time()),
                )
        except (StorageError, psycopg.Error) as exc:
            raise IndexError_(self._failed("write", exc)) from None

    def _failed(self, verb: str, exc: StorageError | psycopg.Error) -> str:
        why = exc.message if isinstance(exc, StorageError) else (str(exc).strip() or type(exc).__name__).splitlines()[0]
        direction = "from" if verb == "read" else "to"
        return (
            f"cannot {verb} the tool index {direction} {self.where}: {why}; "
            "check that the database is reachable and its schema current (`toolcrib db upgrade`)"
        )


class StoredIndex(ToolIndex):
    """A :class:`~toolcrib.index.search.ToolIndex` persisted in a :class:`SnapshotStore`.

    Searches and syncs behave as the directory-backed index: opening loads the stored snapshot
    (a damaged or foreign one is logged and rebuilt at the next sync; one built with another model
    is re-embedded), and a sync that changed anything (or the first sync after such a rebuild)
    saves the whole snapshot. ``SyncReport.seconds`` includes the save.
    """

    def __init__(
        self,
        store: SnapshotStore,
        embedder: Embedder,
        ranking: str = "hybrid",
        *,
        fusion: Fusion | None = None,
        text_style: TextStyle = DEFAULT_STYLE,
        query_cache_size: int = QUERY_CACHE_SIZE,
    ) -> None:
        super().__init__(
            None, embedder, ranking, fusion=fusion, text_style=text_style, query_cache_size=query_cache_size
        )
        self.store = store
        self._stored = False
        self._store_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: Path | None,
        embedder: Embedder,
        ranking: str = "hybrid",
        *,
        fusion: Fusion | None = None,
        text_style: TextStyle = DEFAULT_STYLE,
        query_cache_size: int = QUERY_CACHE_SIZE,
    ) -> StoredIndex:
        """:meth:`open_store` over the directory ``path`` (:class:`FileSnapshots`); ``path`` is required."""
        if path is None:
            raise ValueError("a StoredIndex needs a store; use ToolIndex.open(None, ...) for an in-memory index")
        return cls.open_store(
            FileSnapshots(path),
            embedder,
            ranking,
            fusion=fusion,
            text_style=text_style,
            query_cache_size=query_cache_size,
        )

    @classmethod
    def open_store(
        cls,
        store: SnapshotStore,
        embedder: Embedder,
        ranking: str = "hybrid",
        *,
        fusion: Fusion | None = None,
        text_style: TextStyle = DEFAULT_STYLE,
        query_cache_size: int = QUERY_CACHE_SIZE,
    ) -> StoredIndex:
        """Open the index kept in ``store``. Nothing stored gives an empty index; a damaged or
        foreign snapshot is logged as a warning and replaced at the next :meth:`sync`. Raises
        :class:`~toolcrib.errors.IndexError_` when the store cannot be read at all."""
        index = cls(store, embedder, ranking, fusion=fusion, text_style=text_style, query_cache_size=query_cache_size)
        try:
            loaded = store.load()
        except CorruptIndex as exc:
            log.warning("tool index at %s is unreadable (%s); it will be rebuilt", store.where, exc)
            return index
        if loaded is None:
            return index
        if loaded.fingerprint != embedder.fingerprint or loaded.snapshot.dim != embedder.dim:
            log.warning(
                "tool index at %s was built with %s; re-embedding all %d tools with %s at the next sync",
                store.where,
                loaded.model_id,
                len(loaded.snapshot),
                embedder.model_id,
            )
            return index
        index._snap = loaded.snapshot
        index._stored = True
        log.info("tool index: %d tools loaded from %s", len(loaded.snapshot), store.where)
        return index

    def sync(
        self,
        docs: Iterable[ToolDoc],
        *,
        servers: Collection[str] | None = None,
        full: bool = False,
        progress: Callable[[int, int], None] | None = None,
        server_docs: Mapping[str, ServerDoc] | None = None,
    ) -> SyncReport:
        started = time.perf_counter()
        with self._store_lock:
            before = self._snap
            report = super().sync(docs, servers=servers, full=full, progress=progress, server_docs=server_docs)
            if self._snap is not before or not self._stored:
                self.store.save(self._snap, model_id=self.embedder.model_id, fingerprint=self.embedder.fingerprint)
                self._stored = True
        return dataclasses.replace(report, seconds=time.perf_counter() - started)
