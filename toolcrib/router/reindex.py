"""Keeping the tool index in step with the catalog.

The index (``toolcrib/index``) knows nothing of upstreams; this module feeds it. Reindexing is
incremental (only tools whose content hash changed are embedded) and runs in a worker thread so
searches keep being served. Triggers: start, an upstream's ``tools/list_changed`` (or reconnect),
``toolcrib index`` and ``POST /admin/reindex``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from toolcrib.config import Config
from toolcrib.errors import ToolcribError
from toolcrib.index.documents import ServerDoc, ToolDoc
from toolcrib.index.embedder import AUTO_MODEL, AutoEmbedder, Embedder, load_embedder
from toolcrib.index.search import SyncReport, ToolIndex
from toolcrib.router.catalog import Catalog

if TYPE_CHECKING:
    from toolcrib.index.usage import AuditReader, UsageMiner
    from toolcrib.router.upstream_state import UpstreamState
    from toolcrib.storage.postgres import Database

log = logging.getLogger("toolcrib.reindex")

Visible = Callable[[str], bool]


def docs_for(catalog: Catalog, servers: Collection[str] | None = None, visible: Visible | None = None) -> list[ToolDoc]:
    """Index documents for the catalog's tools (optionally only some servers, only searchable tools)."""
    docs = []
    for key, entry in catalog.tools.items():
        if servers is not None and entry.server not in servers:
            continue
        if visible is not None and not visible(key):
            continue
        tool = entry.tool
        docs.append(
            ToolDoc(
                key=key,
                server=entry.server,
                name=entry.name,
                description=tool.description or "",
                input_schema=dict(tool.input_schema or {}),
                title=tool.title,
            )
        )
    return docs


def open_index(config: Config, embedder: Embedder | None = None, db: Database | None = None) -> ToolIndex:
    """Open (or create) the persisted index.

    ``db`` None (the embedded default): the directory ``[index] path``. With the ``[storage]``
    database: its ``index_snapshots`` row ``"default"`` (:class:`~toolcrib.index.snapshots.PgSnapshots`),
    shared by every replica, so one whose catalog matches starts with zero embeddings; ``[index] path``
    is then unused. Raises :class:`~toolcrib.errors.IndexError_` when the model cannot be loaded or
    the database cannot be read (a damaged snapshot is not an error: it is rebuilt at the next sync).
    """
    initial = _stored_model(config, db) if embedder is None and config.index.model.lower() == AUTO_MODEL else None
    emb = embedder or load_embedder(config.index.model, auto_initial=initial)
    if db is not None:
        from toolcrib.index.snapshots import PgSnapshots, StoredIndex

        return StoredIndex.open_store(PgSnapshots(db), emb, ranking=config.index.ranking)
    return ToolIndex.open(Path(config.index.path), emb, ranking=config.index.ranking)


def _stored_model(config: Config, db: Database | None) -> str | None:
    """The model the stored index was built with (None: nothing usable stored).

    ``[index] model = "auto"`` starts with it, so a restart with an unchanged catalog re-embeds nothing.
    """
    from toolcrib.errors import IndexError_
    from toolcrib.index.persistence import CorruptIndex, FileSnapshots, SnapshotStore

    store: SnapshotStore
    if db is not None:
        from toolcrib.index.snapshots import PgSnapshots

        store = PgSnapshots(db)
    else:
        store = FileSnapshots(Path(config.index.path))
    try:
        loaded = store.load()
    except (CorruptIndex, IndexError_):
        return None
    return loaded.model_id if loaded is not None else None


def server_docs_of(states: Mapping[str, UpstreamState]) -> dict[str, ServerDoc]:
    """The index's server documents from upstream states: title, description and instructions of
    the last ``initialize`` result of every server that has connected at least once
    (``state.connects > 0``), *including* one that said nothing about itself (all three None: its
    document is its name and tools, replacing whatever an earlier run stored). Servers that have
    never connected are left out, so the index keeps what it stored for them (a ``ServerDoc``'s
    absence means "unknown", never "says nothing")."""
    return {
        name: ServerDoc(name, state.server_title, state.server_description, state.instructions)
        for name, state in states.items()
        if state.connects > 0
    }


class Reindexer:
    """Serialises syncs of one index against a changing catalog.

    ``server_docs()``: what each server says about itself (see :func:`server_docs_of`), indexed
    beside its tools (issue 14); None: servers are described by their names and tools only.
    """

    def __init__(
        self,
        index: ToolIndex,
        catalog: Callable[[], Catalog],
        visible: Visible | None = None,
        server_docs: Callable[[], Mapping[str, ServerDoc]] | None = None,
    ) -> None:
        self.index = index
        self._catalog = catalog
        self._visible = visible
        self._server_docs = server_docs
        self._lock = anyio.Lock()
        #: Learning from use (:meth:`learn_from_use`); None: off.
        self.learner: UsageMiner | None = None
        self._learn_interval = 300.0
        self._learn_wake: anyio.Event | None = None
        #: Tool documents embedded by this reindexer's syncs, in all (``SyncReport.embedded`` summed).
        self.embedded = 0
        #: Times ``[index] model = "auto"`` switched models (each one re-embeds the whole catalog).
        self.switches = 0
        #: Servers changed while held (:meth:`hold`); None: not held.
        self._held: set[str] | None = None

    def hold(self) -> None:
        """Until :meth:`start`: :meth:`changed` only notes which servers changed, and nothing is embedded.

        ``toolcrib serve`` holds from before the upstreams start, so the start-up sync measures the
        catalog of every upstream that connected in the start-up window at once: with ``[index] model
        = "auto"`` the model is decided once, and no tool is embedded twice because the non-English
        share of the upstreams connected so far crossed the switch line and back (issue 14).
        """
        if self._held is None:
            self._held = set()

    async def changed(self, server: str) -> SyncReport | None:
        """``server`` connected or changed its tools: sync its tools now, or (held) at :meth:`start`.
        Returns the sync's report, None when held. Raises what :meth:`sync` raises."""
        if self._held is not None:
            self._held.add(server)
            return None
        return await self.sync({server})

    async def start(self, servers: Collection[str]) -> SyncReport:
        """The start-up sync of ``servers`` (those connected in the start-up window); ends :meth:`hold`.

        The model (``auto``) is decided once, on that catalog; then the servers that changed while
        held are synced again (their documents are hashed, not embedded, unless they changed after
        the start-up sync read the catalog). Later changes sync as they come, each re-deciding the
        model with the hysteresis of :func:`~toolcrib.index.embedder.auto_choice`. Raises what
        :meth:`sync` raises (the hold ends all the same).
        """
        try:
            report = await self.sync(servers)
        finally:
            late, self._held = self._held, None
        if late:
            await self.sync(late)
        return report

    def learn_from_use(self, config: Config, audit: AuditReader, db: Database | None = None) -> None:
        """With ``[index] learn_from_use``: blend the usage anchors into the index's ranking and mine
        the audit into them in :meth:`learn_forever` (:mod:`toolcrib.index.usage`)."""
        if not config.index.learn_from_use:
            return
        from toolcrib.index.usage import UsageMiner, UsageSignal, usage_store

        cfg = config.index
        signal = UsageSignal(half_life_days=cfg.usage_half_life_days)
        self.index.usage = signal
        self.learner = UsageMiner(
            audit,
            usage_store(cfg.path, db),
            self.index.embedder,
            signal,
            window=cfg.usage_window,
            half_life_days=cfg.usage_half_life_days,
            cap=cfg.usage_cap,
        )
        self._learn_interval = cfg.usage_interval

    async def learn_forever(self) -> None:
        """Mine the audit in a worker thread now, after every reindex and every ``[index] usage_interval``
        seconds, until cancelled. A failed pass is logged and retried at the next one."""
        learner = self.learner
        if learner is None:
            return
        while True:
            self._learn_wake = anyio.Event()
            try:
                report = await anyio.to_thread.run_sync(learner.mine)
                if report.pairs:
                    log.info(
                        "learned from use: %d pairs, %d new anchors, %d anchors in all (audit up to seq %d)",
                        report.pairs,
                        report.new_anchors,
                        report.anchors,
                        report.last_seq,
                    )
            except ToolcribError as exc:
                log.warning("learning from use failed (retried in %.0f s): %s", self._learn_interval, exc.message)
            except Exception:
                log.exception("learning from use failed (retried in %.0f s)", self._learn_interval)
            with anyio.move_on_after(self._learn_interval):
                await self._learn_wake.wait()

    async def sync(
        self,
        servers: Collection[str] | None = None,
        *,
        full: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> SyncReport:
        async with self._lock:
            catalog = self._catalog()
            emb = self.index.embedder
            switching = False
            if isinstance(emb, AutoEmbedder):  # [index] model = "auto": the whole catalog decides
                descriptions = [d.description for d in docs_for(catalog, None, self._visible)]
                await anyio.to_thread.run_sync(lambda: emb.choose(descriptions))
                if emb.pending:  # the model changed: every tool is re-embedded, not only these servers'
                    switching, servers = True, None
            docs = docs_for(catalog, servers, self._visible)
            described = self._server_docs() if self._server_docs is not None else None
            report: SyncReport = await anyio.to_thread.run_sync(
                lambda: self.index.sync(docs, servers=servers, full=full, progress=progress, server_docs=described)
            )
            self.embedded += report.embedded
            if switching and isinstance(emb, AutoEmbedder):
                emb.commit()
                self.switches += 1
                log.info("tool index re-embedded with %s", emb.describe())
        if self._learn_wake is not None:
            self._learn_wake.set()  # mine after each reindex
        if report.added or report.changed or report.removed:
            log.info(
                "reindexed%s: %d added, %d changed, %d removed, %d unchanged in %.2f s",
                f" {', '.join(sorted(servers))}" if servers else "",
                report.added,
                report.changed,
                report.removed,
                report.unchanged,
                report.seconds,
            )
        return report
