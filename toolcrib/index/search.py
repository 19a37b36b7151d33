"""The tool index: incremental sync, persistence and dense / BM25 / hybrid search."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from toolcrib.errors import IndexError_
from toolcrib.index import persistence
from toolcrib.index.documents import (
    DEFAULT_STYLE,
    ServerDoc,
    TextStyle,
    ToolDoc,
    document_text,
    generated_text,
    server_text,
)
from toolcrib.index.embedder import QUERY_CACHE_SIZE, Embedder, QueryCache
from toolcrib.index.fusion import Fusion, _ranks, fuse, fusion_for, merge_rankings, normalize_scores
from toolcrib.index.store import Snapshot
from toolcrib.index.usage import UsageSignal

log = logging.getLogger(__name__)

RANKINGS = ("hybrid", "dense", "bm25")
#: Whether a new index embeds generated documents (issue 14: measured on the report split, see
#: benchmarks/results/retrieval.md).
GENERATED_DOCS = False
#: Texts embedded per call during a sync (the progress callback fires after each chunk).
SYNC_CHUNK = 64


TERM = "_term"
"""Parts whose name ends with this are the summands of the score (see :func:`compose`)."""


@dataclass(frozen=True)
class Hit:
    """One search result: the tool's key and its score under the ranking used (higher is better).

    ``parts``: only with ``search(..., explain=True)`` (else None): the parts of the score by name
    (see :func:`score_parts`); ``round(compose(parts), 6) == score``.
    """

    key: str
    score: float
    parts: dict[str, float] | None = None


Signals = np.ndarray


def score_parts(dense: Signals | None, lexical: Signals | None, fusion: Fusion) -> dict[str, Signals]:
    """The parts of each candidate's score, as arrays aligned with the candidates of one query.

    ``dense``: cosine similarities (float32) or None (BM25 ranking); ``lexical``: BM25 scores of the
    same candidates or None (dense ranking). Both given: the hybrid ranking, and the parts spell out
    :func:`toolcrib.index.fusion.fuse` over exactly these candidates (the pool the index fused):

    - always ``dense`` (cosine) and/or ``lexical`` (raw BM25), the signals;
    - ``convex``: ``lexical_max`` (best BM25 in the pool), ``lexical_norm`` (``lexical / lexical_max``,
      0 when nothing matches), ``dense_weight`` ``w``, ``dense_term = w * dense`` (or ``w *
      dense_norm`` when the fusion normalises: ``dense_norm`` is
      :func:`~toolcrib.index.fusion.normalize_scores` of the pool's cosines) and
      ``lexical_term = (1 - w) * lexical_norm``;
    - ``rrf``: ``dense_rank`` / ``lexical_rank`` (1-based in the pool), ``rrf_k``, ``dense_weight``,
      ``dense_term = w / (rrf_k + dense_rank)`` and ``lexical_term = (1 - w) / (rrf_k + lexical_rank)``
      (0 without a lexical match);
    - one ranking alone: ``dense_term = dense`` or ``lexical_term = lexical``.

    The score is the sum of the ``*_term`` parts (:func:`compose`). Later signals (server, usage)
    add their own ``*_term`` and raw parts: server relevance (:meth:`ToolIndex._blend_servers`)
    ``server`` (the relevance of the candidate's server), ``server_weight`` and
    ``server_term = server_weight * server``; generated documents ``generated`` (cosine with the
    tool's generated text), ``generated_weight`` and ``generated_term``.
    """
    if dense is None:
        assert lexical is not None
        return {"lexical": lexical, "lexical_term": lexical}
    if lexical is None:
        return {"dense": dense, "dense_term": dense}
    n = len(dense)
    w = fusion.dense_weight
    weight = np.full(n, w)
    if fusion.method == "rrf":
        dense_rank, lex_rank = _ranks(dense), _ranks(lexical)
        return {
            "dense": dense,
            "lexical": lexical,
            "dense_rank": dense_rank,
            "lexical_rank": np.where(lexical > 0, lex_rank, 0.0),
            "rrf_k": np.full(n, fusion.rrf_k),
            "dense_weight": weight,
            "dense_term": w / (fusion.rrf_k + dense_rank),
            "lexical_term": np.where(lexical > 0, (1.0 - w) / (fusion.rrf_k + lex_rank), 0.0),
        }
    top = float(lexical.max(initial=0.0))
    lex_norm = lexical / top if top > 0 else np.zeros_like(lexical)
    dense_parts = {"dense": dense}
    dense_norm = dense
    if fusion.normalize != "none":
        dense_norm = normalize_scores(dense, fusion.normalize)
        dense_parts["dense_norm"] = dense_norm
    return {
        **dense_parts,
        "lexical": lexical,
        "lexical_max": np.full(n, top),
        "lexical_norm": lex_norm,
        "dense_weight": weight,
        "dense_term": w * dense_norm,
        "lexical_term": (1.0 - w) * lex_norm,
    }


def compose(parts: dict[str, float]) -> float:
    """The score the ``*_term`` parts add up to, in the fusion's float32 arithmetic: bit-for-bit the
    score :func:`~toolcrib.index.fusion.fuse` gives (before ``Hit.score`` rounds it to 6 decimals)."""
    total = 0.0
    for name, value in parts.items():
        if name.endswith(TERM):
            total += value
    return float(np.float32(total))


@dataclass(frozen=True)
class SyncReport:
    """What a :meth:`ToolIndex.sync` did."""

    added: int
    changed: int
    removed: int
    unchanged: int
    embedded: int
    seconds: float
    embedded_side: int = 0
    """Server documents and generated documents embedded (``embedded`` counts tool documents)."""


def _check_ranking(ranking: str) -> str:
    if ranking not in RANKINGS:
        raise IndexError_(f"unknown search mode {ranking!r}: use one of {', '.join(RANKINGS)}")
    return ranking


class ToolIndex:
    """Searchable index of tool documents, optionally persisted in a directory.

    ``search`` is synchronous and takes milliseconds, so it may run on an event loop thread;
    ``sync`` may run in a worker thread meanwhile: it builds a new immutable snapshot and swaps it
    in with one assignment, so a search sees either the old or the new catalog, never a mix.
    """

    def __init__(
        self,
        path: Path | None,
        embedder: Embedder,
        ranking: str = "hybrid",
        *,
        fusion: Fusion | None = None,
        text_style: TextStyle = DEFAULT_STYLE,
        query_cache_size: int = QUERY_CACHE_SIZE,
    ) -> None:
        self.path = path
        self.embedder = embedder
        #: Query vectors by normalised query text (see :class:`~toolcrib.index.embedder.QueryCache`).
        self.query_cache = QueryCache(embedder, query_cache_size)
        self.ranking = _check_ranking(ranking)
        self._fusion = fusion
        self.text_style = text_style
        self._snap = Snapshot.empty(embedder.dim)
        self._sync_lock = threading.Lock()
        self._persisted = False
        #: Embed :func:`~toolcrib.index.documents.generated_text` as a second vector per tool
        #: (used when ``fusion.generated_weight > 0``); see :data:`GENERATED_DOCS`.
        self.generated_docs = GENERATED_DOCS
        #: Learned from use (:mod:`toolcrib.index.usage`): adds ``usage_term`` to the score; None: off.
        self.usage: UsageSignal | None = None

    @property
    def fusion(self) -> Fusion:
        """How hybrid scores are fused: the one given, else the embedding model's default
        (:func:`~toolcrib.index.fusion.fusion_for`; follows an ``auto`` model switch)."""
        return self._fusion if self._fusion is not None else fusion_for(self.embedder.model_id)

    @fusion.setter
    def fusion(self, fusion: Fusion | None) -> None:
        """Set a fusion; None goes back to the model's default."""
        self._fusion = fusion

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
    ) -> ToolIndex:
        """Open the index stored in ``path`` (``None``: in memory only).

        A missing directory gives an empty index. A damaged or foreign one is logged as a warning
        and replaced at the next :meth:`sync`; one built with another model is kept out of
        searches and fully re-embedded at the next sync.
        """
        index = cls(path, embedder, ranking, fusion=fusion, text_style=text_style, query_cache_size=query_cache_size)
        if path is None or not persistence.exists(path):
            return index
        try:
            loaded = persistence.load(path)
        except persistence.CorruptIndex as exc:
            log.warning("tool index at %s is unreadable (%s); it will be rebuilt", path, exc)
            return index
        if loaded.fingerprint != embedder.fingerprint or loaded.snapshot.dim != embedder.dim:
            log.warning(
                "tool index at %s was built with %s; re-embedding all %d tools with %s at the next sync",
                path,
                loaded.model_id,
                len(loaded.snapshot),
                embedder.model_id,
            )
            return index
        index._snap = loaded.snapshot
        index._persisted = True
        return index

    def __len__(self) -> int:
        return len(self._snap)

    def doc(self, key: str) -> ToolDoc | None:
        """The document stored under ``key``, if any."""
        snap = self._snap
        row = snap.rows.get(key)
        return None if row is None else snap.docs[row]

    def docs(self) -> list[ToolDoc]:
        """All documents, in index order."""
        return list(self._snap.docs)

    def sync(
        self,
        docs: Iterable[ToolDoc],
        *,
        servers: Collection[str] | None = None,
        full: bool = False,
        progress: Callable[[int, int], None] | None = None,
        server_docs: Mapping[str, ServerDoc] | None = None,
    ) -> SyncReport:
        """Make the index hold ``docs``, embedding only what changed.

        ``servers=None``: ``docs`` is the whole catalog and tools not in it are removed. With
        ``servers``, only tools of those servers are replaced or removed (docs of other servers
        are ignored). ``full`` re-embeds everything. ``progress(done, total)`` reports
        embedding progress. Persists atomically when the index has a path.

        Every server with tools also gets a document (:func:`~toolcrib.index.documents.server_text`
        of its ``server_docs`` entry, else the one stored before, else its name alone, plus its
        tools) and a vector, re-embedded only when that text changes.
        """
        started = time.perf_counter()
        with self._sync_lock:
            old = self._snap
            fingerprint = self.embedder.fingerprint
            incoming: dict[str, ToolDoc] = {}
            for doc in docs:
                if servers is None or doc.server in servers:
                    incoming[doc.key] = doc
            kept = [d for d in old.docs if servers is not None and d.server not in servers]
            kept_keys = {d.key for d in kept}
            fresh_docs = [d for d in incoming.values() if d.key not in kept_keys]
            new_docs = kept + fresh_docs
            new_keys = {d.key for d in new_docs}
            removed = sum(1 for d in old.docs if d.key not in new_keys)
            unchanged = len(kept)
            added = changed = 0
            for doc in fresh_docs:
                row = old.rows.get(doc.key)
                if row is None:
                    added += 1
                elif old.docs[row] == doc:
                    unchanged += 1
                else:
                    changed += 1

            hashes = [d.content_hash(fingerprint, self.text_style) for d in new_docs]
            reuse_by_hash = {} if full else {h: row for row, h in enumerate(old.hashes)}
            to_embed: dict[str, str] = {}
            for doc, h in zip(new_docs, hashes, strict=True):
                if h not in reuse_by_hash and h not in to_embed:
                    to_embed[h] = document_text(doc, self.text_style)
            tools_embedded = len(to_embed)
            side = _SideTexts(self, old, new_docs, server_docs, full)
            to_embed.update(side.texts)
            fresh = self._embed_all(list(to_embed.values()), progress)
            fresh_rows = {h: i for i, h in enumerate(to_embed)}

            vectors = np.zeros((len(new_docs), self.embedder.dim), dtype=np.float32)
            for row, h in enumerate(hashes):
                vectors[row] = fresh[fresh_rows[h]] if h in fresh_rows else old.vectors[reuse_by_hash[h]]

            nothing_changed = (
                not (added or changed or removed or to_embed) and new_docs == list(old.docs) and side.same_as(old)
            )
            if not nothing_changed:
                self._snap = Snapshot.build(
                    new_docs, hashes, vectors, previous=old, **side.build_args(fresh, fresh_rows, self.embedder.dim)
                )
            if self.path is not None and not (nothing_changed and self._persisted):
                persistence.save(self.path, self._snap, model_id=self.embedder.model_id, fingerprint=fingerprint)
                self._persisted = True
        return SyncReport(
            added=added,
            changed=changed,
            removed=removed,
            unchanged=unchanged,
            embedded=tools_embedded,
            embedded_side=len(to_embed) - tools_embedded,
            seconds=time.perf_counter() - started,
        )

    def _embed_all(self, texts: list[str], progress: Callable[[int, int], None] | None) -> np.ndarray:
        out = np.zeros((len(texts), self.embedder.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        if progress is not None:
            progress(0, len(texts))
        for start in range(0, len(order), SYNC_CHUNK):
            chunk = order[start : start + SYNC_CHUNK]
            vectors = self.embedder.embed([texts[i] for i in chunk])
            if vectors.shape != (len(chunk), self.embedder.dim):
                raise IndexError_(
                    f"embedder {self.embedder.model_id!r} returned vectors of shape {vectors.shape}; "
                    f"expected ({len(chunk)}, {self.embedder.dim})"
                )
            out[np.asarray(chunk)] = vectors
            if progress is not None:
                progress(min(start + SYNC_CHUNK, len(texts)), len(texts))
        return out

    def needs_model(self, query: str | Sequence[str], *, mode: str | None = None) -> bool:
        """Whether :meth:`search` with these arguments would run the embedding model.

        False when the ranking is ``bm25`` or every query vector is in :attr:`query_cache`: the
        search is then numpy/FAISS work only (~0.1 ms at 10 tools, ~0.3 ms at 800, ~0.6 ms at
        10,000 on one core), cheaper to run on an event loop than to hand to a worker thread that
        must win the GIL back from the busy loop (up to ``sys.getswitchinterval()``, 5 ms, per
        GIL-releasing call). True means a model call of ~5-10 ms: run it in a worker thread. A
        hint only: a concurrent search may evict the entry before it is used.
        """
        if _check_ranking(mode or self.ranking) == "bm25":
            return False
        queries = [query] if isinstance(query, str) else [q for q in query if q.strip()]
        return not self.query_cache.cached(queries)

    def search(
        self,
        query: str | Sequence[str],
        *,
        limit: int = 5,
        server: str | None = None,
        allowed: Callable[[str], bool] | None = None,
        mode: str | None = None,
        explain: bool = False,
    ) -> list[Hit]:
        """The best ``limit`` tools for ``query``.

        Several queries (one per step of a multi-step task) are searched separately and merged
        (round robin by default, so every step contributes its best tools). ``server`` restricts
        results to one server; ``allowed(key)`` is applied before truncation to ``limit``, so a
        disallowed key is never returned. ``mode`` overrides the index's ranking for this call.
        Query vectors come from :attr:`query_cache` (an LRU keyed by the normalised query text); the
        BM25 side tokenizes the query as given.

        ``explain``: each hit also carries ``parts`` (:func:`score_parts` of its candidate; with
        several queries, those of the query where it scored best, plus ``query``, that query's
        0-based position; with ``merge = "sum"`` also ``merged_sum``, the score, which is then the
        sum over queries rather than :func:`compose` of the terms). Off by default: no extra work.
        """
        ranking = _check_ranking(mode or self.ranking)
        queries = [query] if isinstance(query, str) else [q for q in query if q.strip()]
        snap = self._snap
        if limit <= 0 or not queries or not len(snap):
            return []
        candidates: np.ndarray | None = None
        if server is not None:
            candidates = snap.server_rows.get(server)
            if candidates is None:
                return []
        qvecs = self.query_cache.embed(queries) if ranking != "bm25" else None
        rankings = []
        explained: list[dict[int, dict[str, float]]] | None = [] if explain else None
        for i, text in enumerate(queries):
            qvec = qvecs[i] if qvecs is not None else None
            parts_out: dict[int, dict[str, float]] | None = None
            if explained is not None:
                parts_out = {}
                explained.append(parts_out)
            rankings.append(self._rank_one(snap, text, qvec, ranking, limit, candidates, allowed, parts_out))
        merged = merge_rankings(rankings, self.fusion.merge)[:limit]
        if explained is None:
            return [Hit(snap.docs[row].key, round(score, 6)) for row, score in merged]
        return [
            Hit(snap.docs[row].key, round(score, 6), _merged_parts(row, score, rankings, explained, self.fusion.merge))
            for row, score in merged
        ]

    def _rank_one(
        self,
        snap: Snapshot,
        text: str,
        qvec: np.ndarray | None,
        ranking: str,
        limit: int,
        candidates: np.ndarray | None,
        allowed: Callable[[str], bool] | None,
        parts_out: dict[int, dict[str, float]] | None = None,
    ) -> list[tuple[int, float]]:
        faiss.omp_set_num_threads(1)
        pool_size = max(self.fusion.pool, 4 * limit)
        usage = self.usage.scores(snap, qvec) if self.usage is not None and qvec is not None else None
        while True:
            rows, dense, lexical = self._pool_signals(snap, text, qvec, ranking, pool_size, candidates, usage)
            scores = self._combine(ranking, dense, lexical)
            scores, extra_parts = self._blend_usage(scores, rows, dense, lexical, usage)
            scores, extra_parts = self._blend_servers(
                scores, snap, text, qvec, ranking, rows, dense, lexical, extra_parts
            )
            order = np.argsort(-scores, kind="stable")
            out: list[tuple[int, float]] = []
            for i in order:
                row = int(rows[i])
                if allowed is None or allowed(snap.docs[row].key):
                    out.append((row, float(scores[i])))
                    if len(out) == limit:
                        break
            if len(out) == limit or candidates is not None or pool_size >= len(snap):
                if parts_out is not None:
                    _collect_parts(parts_out, out, rows, {**score_parts(dense, lexical, self.fusion), **extra_parts})
                return out
            pool_size = len(snap)

    def _pool_signals(
        self,
        snap: Snapshot,
        text: str,
        qvec: np.ndarray | None,
        ranking: str,
        pool_size: int,
        candidates: np.ndarray | None,
        usage: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The candidate rows of one query and their signals: float32 cosines (None for ``bm25``) and
        BM25 scores (None for ``dense``), aligned with the rows. ``usage`` (per snapshot row): rows
        with a usage signal join the pool."""
        lexical = snap.lexical.scores(text) if ranking != "dense" else None
        if candidates is not None or pool_size >= len(snap):
            rows = candidates if candidates is not None else np.arange(len(snap), dtype=np.int64)
            dense = snap.vectors[rows] @ qvec if qvec is not None else None
        elif ranking == "bm25":
            assert lexical is not None
            rows = np.argpartition(-lexical, pool_size)[:pool_size].astype(np.int64)
            dense = None
        else:
            assert qvec is not None
            rows, dense = snap.dense_top(qvec, pool_size)
            if lexical is not None:
                lex_top = np.argpartition(-lexical, pool_size)[:pool_size]
                lex_top = lex_top[lexical[lex_top] > 0]
                extra = np.setdiff1d(lex_top, rows, assume_unique=True)
                rows = np.concatenate([rows, extra])
                dense = np.concatenate([dense, snap.vectors[extra] @ qvec])
            if usage is not None:
                extra = np.setdiff1d(np.flatnonzero(usage), rows)
                rows = np.concatenate([rows, extra])
                dense = np.concatenate([dense, snap.vectors[extra] @ qvec])
            if ranking == "hybrid":  # the tools of the most relevant servers (issue 14)
                extra = np.setdiff1d(self._server_pool(snap, qvec, text), rows)
                rows = np.concatenate([rows, extra])
                dense = np.concatenate([dense, snap.vectors[extra] @ qvec])
        if ranking == "dense":
            return rows, dense, None
        assert lexical is not None
        if ranking == "bm25":
            return rows, None, lexical[rows]
        assert dense is not None
        return rows, dense.astype(np.float32), lexical[rows]

    def _combine(self, ranking: str, dense: np.ndarray | None, lexical: np.ndarray | None) -> np.ndarray:
        """The score of each candidate under ``ranking`` from :meth:`_pool_signals`' signals."""
        if ranking == "dense":
            assert dense is not None
            return dense
        assert lexical is not None
        if ranking == "bm25":
            return lexical
        assert dense is not None
        return fuse(dense, lexical, self.fusion)

    def _blend_usage(
        self,
        scores: np.ndarray,
        rows: np.ndarray,
        dense: np.ndarray | None,
        lexical: np.ndarray | None,
        usage: np.ndarray | None,
    ) -> tuple[np.ndarray, dict[str, Signals]]:
        """The usage signal blended in (:mod:`toolcrib.index.usage`): ``usage_term = blend * usage``
        added to the other ``*_term`` parts, summed as :func:`compose` sums them. Returns the scores
        and the extra parts (``usage``, ``usage_blend``, ``usage_term``); unchanged when no candidate
        has a usage signal."""
        if usage is None or self.usage is None:
            return scores, {}
        signal = usage[rows]
        if not signal.any():
            return scores, {}
        blend = self.usage.blend
        term = (blend * signal).astype(np.float32)
        total = term.astype(np.float64) * 0.0
        for name, values in score_parts(dense, lexical, self.fusion).items():
            if name.endswith(TERM):
                total = total + values.astype(np.float64)
        total = total + term.astype(np.float64)
        return total.astype(np.float32), {"usage": signal, "usage_blend": np.full(len(rows), blend), "usage_term": term}

    def _server_relevance(self, snap: Snapshot, qvec: np.ndarray, text: str) -> np.ndarray:
        """Relevance of every server to the query (float32, one per server plus a trailing 0 for
        rows without a server): the dense side (:meth:`~toolcrib.index.store.ServerVectors.server_scores`)
        rescaled over the servers by ``fusion.normalize``, mixed with BM25 over the server documents
        (relative to the best server, 0 when none matches) by ``fusion.server_lexical``."""
        f = self.fusion
        out = snap.servers.server_scores(qvec, f.server_centroid)
        if f.normalize != "none":
            out[:-1] = normalize_scores(out[:-1], f.normalize)
        if f.server_lexical > 0 and len(snap.servers):
            lex = snap.servers.lexical_scores(text)
            top = float(lex.max(initial=0.0))
            lex_norm = lex / top if top > 0 else np.zeros_like(lex)
            m = np.float32(f.server_lexical)
            out[:-1] = (np.float32(1.0) - m) * out[:-1] + m * lex_norm
        return out

    def _server_pool(self, snap: Snapshot, qvec: np.ndarray, text: str) -> np.ndarray:
        """Rows of the tools of the ``fusion.server_expand`` servers most relevant to ``qvec`` (at
        most ``fusion.pool`` rows): they join the hybrid candidate pool (issue 14)."""
        f = self.fusion
        if f.server_weight <= 0 or f.server_expand <= 0 or not len(snap.servers):
            return np.zeros(0, dtype=np.int64)
        per_server = self._server_relevance(snap, qvec, text)[:-1]
        top = np.argsort(-per_server, kind="stable")[: f.server_expand]
        found = [r for j in top if (r := snap.server_rows.get(snap.servers.docs[j].server)) is not None]
        return np.concatenate(found)[: f.pool] if found else np.zeros(0, dtype=np.int64)

    def _blend_servers(
        self,
        scores: np.ndarray,
        snap: Snapshot,
        text: str,
        qvec: np.ndarray | None,
        ranking: str,
        rows: np.ndarray,
        dense: np.ndarray | None,
        lexical: np.ndarray | None,
        extra_parts: dict[str, Signals],
    ) -> tuple[np.ndarray, dict[str, Signals]]:
        """Server relevance and generated documents blended in (issue 14; hybrid ranking only):
        ``server_term = server_weight * server`` (the relevance of each candidate's server,
        :meth:`_server_relevance`) and ``generated_term =
        generated_weight * generated`` (cosine with the tool's generated document), added to the
        other ``*_term`` parts (including ``extra_parts``, e.g. usage) and summed as
        :func:`compose` sums them. Returns the scores and ``extra_parts`` with these parts added;
        both unchanged when the fusion gives them no weight."""
        f = self.fusion
        if ranking != "hybrid" or qvec is None or not f.blends:
            return scores, extra_parts
        parts: dict[str, Signals] = {}
        n = len(rows)
        if f.server_weight > 0 and len(snap.servers):
            per_server = self._server_relevance(snap, qvec, text)
            signal = per_server[snap.servers.row_server[rows]]
            parts |= {
                "server": signal,
                "server_weight": np.full(n, f.server_weight),
                "server_term": (np.float32(f.server_weight) * signal).astype(np.float32),
            }
        if f.generated_weight > 0 and snap.generated is not None:
            signal = (snap.generated[rows] @ qvec).astype(np.float32)
            parts |= {
                "generated": signal,
                "generated_weight": np.full(n, f.generated_weight),
                "generated_term": (np.float32(f.generated_weight) * signal).astype(np.float32),
            }
        if not parts:
            return scores, extra_parts
        merged = {**score_parts(dense, lexical, f), **extra_parts, **parts}
        total = np.zeros(n, dtype=np.float64)
        for name, values in merged.items():
            if name.endswith(TERM):
                total += values.astype(np.float64)
        return total.astype(np.float32), {**extra_parts, **parts}


class _SideTexts:
    """The texts a sync embeds besides the tool documents: one per server (always) and one
    generated document per tool (when ``index.generated_docs``), with the content hashes that let a
    later sync reuse their vectors."""

    def __init__(
        self,
        index: ToolIndex,
        old: Snapshot,
        docs: Sequence[ToolDoc],
        server_docs: Mapping[str, ServerDoc] | None,
        full: bool,
    ) -> None:
        fingerprint = index.embedder.fingerprint
        known = {d.server: d for d in old.servers.docs}
        tools_of: dict[str, list[ToolDoc]] = {}
        for doc in docs:
            tools_of.setdefault(doc.server, []).append(doc)
        self.servers: list[ServerDoc] = []
        self.server_hashes: list[str] = []
        self.texts: dict[str, str] = {}
        reused: dict[str, np.ndarray] = {}
        old_server = {} if full else {h: old.servers.text[j] for j, h in enumerate(old.servers.hashes)}
        for name in sorted(tools_of) if index.fusion.server_weight > 0 else ():
            sdoc = (server_docs or {}).get(name) or known.get(name) or ServerDoc(name)
            text = server_text(sdoc, sorted(tools_of[name], key=lambda d: d.name))
            h = _side_hash(fingerprint, "server", text)
            self.servers.append(sdoc)
            self.server_hashes.append(h)
            if h in old_server:
                reused[h] = old_server[h]
            else:
                self.texts[h] = text
        self.generated_hashes: list[str] = []
        if index.generated_docs:
            old_gen: dict[str, np.ndarray] = {}
            if old.generated is not None and not full:
                old_gen = {h: old.generated[i] for i, h in enumerate(old.generated_hashes)}
            for doc in docs:
                text = generated_text(doc)
                h = _side_hash(fingerprint, "generated", text)
                self.generated_hashes.append(h)
                if h in old_gen:
                    reused[h] = old_gen[h]
                else:
                    self.texts[h] = text
        self._reused = reused

    def same_as(self, old: Snapshot) -> bool:
        """Whether ``old`` already holds exactly these server and generated documents."""
        return (
            tuple(self.server_hashes) == old.servers.hashes
            and tuple(self.servers) == old.servers.docs
            and tuple(self.generated_hashes) == old.generated_hashes
        )

    def build_args(self, fresh: np.ndarray, fresh_rows: Mapping[str, int], dim: int) -> dict[str, Any]:
        """The server and generated keyword arguments of :meth:`Snapshot.build`."""

        def vectors(hashes: Sequence[str]) -> np.ndarray:
            out = np.zeros((len(hashes), dim), dtype=np.float32)
            for i, h in enumerate(hashes):
                out[i] = fresh[fresh_rows[h]] if h in fresh_rows else self._reused[h]
            return out

        return {
            "servers": self.servers,
            "server_hashes": self.server_hashes,
            "server_vectors": vectors(self.server_hashes),
            "generated": vectors(self.generated_hashes) if self.generated_hashes else None,
            "generated_hashes": self.generated_hashes,
        }


def _side_hash(fingerprint: str, kind: str, text: str) -> str:
    """Content hash of a server or generated document (``kind``) under the model ``fingerprint``."""
    return hashlib.sha256(f"{fingerprint}\x00{kind}\x00{text}".encode()).hexdigest()


def describe_parts(parts: dict[str, float]) -> str:
    """One line spelling out how the parts make the score, e.g.
    ``0.85 x dense 0.612 + 0.15 x lexical 4.31/5.02 = 0.520 + 0.129`` (convex; with a normalising
    fusion ``0.70 x dense 0.612 (rescaled 0.431) + ...``, the term being the rescaled value) or
    ``0.85/(60+1) + 0.15/(60+2) = ...`` (rrf); unknown ``*_term`` parts are appended by name."""
    terms = [name for name in parts if name.endswith(TERM)]
    pieces: list[str] = []
    w = parts.get("dense_weight")
    if w is not None and "rrf_k" in parts:
        k = parts["rrf_k"]
        pieces.append(f"{w:.2f}/({k:g}+{parts['dense_rank']:g})")
        if parts["lexical_rank"]:
            pieces.append(f"{1 - w:.2f}/({k:g}+{parts['lexical_rank']:g})")
        else:
            pieces.append("no lexical match")
    elif w is not None:
        norm = parts.get("dense_norm")
        pieces.append(f"{w:.2f} x dense {parts['dense']:.3f}" + ("" if norm is None else f" (rescaled {norm:.3f})"))
        top = parts["lexical_max"]
        pieces.append(f"{1 - w:.2f} x lexical {parts['lexical']:.2f}/{top:.2f}" if top else "no lexical match")
    else:
        pieces.extend(f"{name[: -len(TERM)]} {parts[name]:.3f}" for name in terms)
    known = {"dense_term", "lexical_term"} if w is not None else set(terms)
    pieces.extend(f"{name[: -len(TERM)]} {parts[name]:.3f}" for name in terms if name not in known)
    sums = " + ".join(f"{parts[name]:.3f}" for name in terms)
    return f"{' + '.join(pieces)} = {sums}" if len(terms) > 1 else " + ".join(pieces)


def _collect_parts(
    parts_out: dict[int, dict[str, float]],
    chosen: list[tuple[int, float]],
    rows: np.ndarray,
    parts: dict[str, Signals],
) -> None:
    """Store the parts of the chosen rows (position in ``rows`` -> plain floats) into ``parts_out``."""
    position = {int(row): i for i, row in enumerate(rows)}
    for row, _ in chosen:
        i = position[row]
        parts_out[row] = {name: float(values[i]) for name, values in parts.items()}


def _merged_parts(
    row: int,
    score: float,
    rankings: list[list[tuple[int, float]]],
    explained: list[dict[int, dict[str, float]]],
    merge: str,
) -> dict[str, float]:
    """The parts of ``row``'s merged ``score``: those of the query where it scored best."""
    if len(rankings) == 1:
        return dict(explained[0][row])
    best_query, best = 0, -np.inf
    for q, ranking in enumerate(rankings):
        for r, s in ranking:
            if r == row and s > best:
                best_query, best = q, s
    out = dict(explained[best_query][row])
    out["query"] = float(best_query)
    if merge == "sum":
        out["merged_sum"] = score
    return out
