"""An immutable snapshot of the index: documents, vectors, the FAISS index and the BM25 index.

A :class:`ToolIndex` swaps whole snapshots, so searches never see a half-applied sync.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from toolcrib.index.documents import ServerDoc, ToolDoc, lexical_text, server_text
from toolcrib.index.lexical import LexicalIndex, tokenize

Vectors = npt.NDArray[np.float32]


def new_faiss_index(vectors: Vectors) -> faiss.Index:
    """An ``IndexIDMap2(IndexFlatIP)`` holding ``vectors`` under ids 0..n-1 (exact inner product)."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(vectors):
        index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    return index


@dataclass(frozen=True)
class Snapshot:
    """Everything a search needs, never mutated after construction. Row ``i`` is ``docs[i]``."""

    docs: tuple[ToolDoc, ...]
    hashes: tuple[str, ...]
    vectors: Vectors
    dense: faiss.Index
    lexical: LexicalIndex
    tokens: tuple[tuple[str, ...], ...] = field(repr=False)
    rows: Mapping[str, int] = field(repr=False)
    server_rows: Mapping[str, npt.NDArray[np.int64]] = field(repr=False)
    servers: ServerVectors = field(repr=False, default_factory=lambda: ServerVectors.empty(0))
    """One document and vector per server (issue 14); see :class:`ServerVectors`."""
    generated: Vectors | None = field(repr=False, default=None)
    """Row ``i``: the vector of :func:`~toolcrib.index.documents.generated_text` of ``docs[i]``
    (None: generated documents are off); ``generated_hashes`` their content hashes."""
    generated_hashes: tuple[str, ...] = field(repr=False, default=())

    @classmethod
    def build(
        cls,
        docs: Sequence[ToolDoc],
        hashes: Sequence[str],
        vectors: Vectors,
        *,
        dense: faiss.Index | None = None,
        previous: Snapshot | None = None,
        servers: Sequence[ServerDoc] = (),
        server_hashes: Sequence[str] = (),
        server_vectors: Vectors | None = None,
        generated: Vectors | None = None,
        generated_hashes: Sequence[str] = (),
    ) -> Snapshot:
        """Build the FAISS (unless given) and BM25 indexes over ``docs`` and their ``vectors``.

        Tokens of documents unchanged since ``previous`` are reused rather than recomputed.
        ``servers`` / ``server_hashes`` / ``server_vectors``: one document, content hash and text
        vector per server (see :class:`ServerVectors`; servers of ``docs`` missing there get no
        server signal). ``generated`` / ``generated_hashes``: a second vector per tool row.
        """
        tokens: list[tuple[str, ...]] = []
        for doc in docs:
            old_row = previous.rows.get(doc.key) if previous is not None else None
            if previous is not None and old_row is not None and previous.docs[old_row] == doc:
                tokens.append(previous.tokens[old_row])
            else:
                tokens.append(tuple(tokenize(lexical_text(doc))))
        by_server: dict[str, list[int]] = {}
        for row, doc in enumerate(docs):
            by_server.setdefault(doc.server, []).append(row)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = int(vectors.shape[1])
        server_set = ServerVectors.build(
            docs,
            vectors,
            servers,
            server_hashes,
            server_vectors if server_vectors is not None else np.zeros((0, dim)),
            previous.servers if previous is not None else None,
        )
        return cls(
            docs=tuple(docs),
            hashes=tuple(hashes),
            vectors=vectors,
            dense=dense if dense is not None else new_faiss_index(vectors),
            lexical=LexicalIndex(tokens),
            tokens=tuple(tokens),
            rows={doc.key: row for row, doc in enumerate(docs)},
            server_rows={s: np.asarray(r, dtype=np.int64) for s, r in by_server.items()},
            servers=server_set,
            generated=None if generated is None else np.ascontiguousarray(generated, dtype=np.float32),
            generated_hashes=tuple(generated_hashes),
        )

    @classmethod
    def empty(cls, dim: int) -> Snapshot:
        """A snapshot with no tools."""
        return cls.build((), (), np.zeros((0, dim), dtype=np.float32))

    def __len__(self) -> int:
        return len(self.docs)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.vectors.shape[1])

    def dense_top(self, query: Vectors, k: int) -> tuple[npt.NDArray[np.int64], Vectors]:
        """Rows and cosines of the ``k`` nearest documents to one unit ``query`` vector."""
        k = min(k, len(self.docs))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores, ids = self.dense.search(query.reshape(1, -1), k)
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)


@dataclass(frozen=True)
class ServerVectors:
    """The server side of a snapshot: what :meth:`server_scores` needs at search time.

    ``docs[j]`` / ``hashes[j]`` / ``text[j]``: the :class:`ServerDoc`, content hash and unit vector
    of :func:`~toolcrib.index.documents.server_text` of server ``j``; ``centroid[j]``: the mean of
    its tools' vectors (not normalised: ``centroid @ q`` is the mean cosine of its tools);
    ``row_server[i]``: the server of tool row ``i`` (-1: no server vector, e.g. an index stored
    before servers were indexed, until its next sync); BM25 over the same server texts
    (:meth:`lexical_scores`), built on first use so that a sync tokenizes nothing it did not change.
    """

    docs: tuple[ServerDoc, ...]
    hashes: tuple[str, ...]
    text: Vectors
    centroid: Vectors
    row_server: npt.NDArray[np.int64]
    by_name: Mapping[str, int]
    texts: tuple[str, ...] = ()
    """:func:`~toolcrib.index.documents.server_text` of server ``j`` (what its vector embeds)."""
    _lexical: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """BM25 over ``texts``, built at the first :meth:`lexical_scores` (``index``) from the tokens of
    the previous snapshot's unchanged texts and fresh ones (``tokens``: text -> tokens)."""

    @classmethod
    def empty(cls, dim: int, rows: int = 0) -> ServerVectors:
        """No servers: every row maps to -1."""
        zeros = np.zeros((0, dim), dtype=np.float32)
        return cls((), (), zeros, zeros, np.full(rows, -1, dtype=np.int64), {})

    @classmethod
    def build(
        cls,
        docs: Sequence[ToolDoc],
        vectors: Vectors,
        servers: Sequence[ServerDoc],
        hashes: Sequence[str],
        text: npt.NDArray[np.floating],
        previous: ServerVectors | None = None,
    ) -> ServerVectors:
        """Index ``servers`` (aligned with ``hashes`` and the rows of ``text``) against the tools;
        ``previous``: the server side of the snapshot this one replaces (its tokens are reused)."""
        dim = int(vectors.shape[1])
        if not servers:
            return cls.empty(dim, len(docs))
        by_name = {s.server: j for j, s in enumerate(servers)}
        row_server = np.asarray([by_name.get(d.server, -1) for d in docs], dtype=np.int64)
        centroid = np.zeros((len(servers), dim), dtype=np.float32)
        counts = np.bincount(row_server[row_server >= 0], minlength=len(servers)).astype(np.float32)
        if len(docs):
            np.add.at(centroid, row_server[row_server >= 0], vectors[row_server >= 0])
        centroid /= np.maximum(counts, 1.0)[:, None]
        tools_of: dict[str, list[ToolDoc]] = {}
        for doc in docs:
            tools_of.setdefault(doc.server, []).append(doc)
        texts = [server_text(s, sorted(tools_of.get(s.server, ()), key=lambda d: d.name)) for s in servers]
        return cls(
            tuple(servers),
            tuple(hashes),
            np.ascontiguousarray(text, dtype=np.float32),
            centroid,
            row_server,
            by_name,
            tuple(texts),
            {"tokens": previous._lexical.get("tokens", {})} if previous is not None else {},
        )

    def __len__(self) -> int:
        return len(self.docs)

    def server_scores(self, query: Vectors, centroid_weight: float) -> Vectors:
        """Relevance of every server to one unit ``query`` vector (float32, one per server, plus a
        trailing 0 so that ``scores[row_server]`` gives 0 to rows without a server):
        ``(1 - c) * cos(query, server text) + c * mean cos(query, its tools)``."""
        out = np.zeros(len(self.docs) + 1, dtype=np.float32)
        if len(self.docs):
            c = np.float32(centroid_weight)
            out[:-1] = (np.float32(1.0) - c) * (self.text @ query) + c * (self.centroid @ query)
        return out

    def lexical_scores(self, query: str) -> Vectors:
        """BM25 score of every server document for the query text ``query`` (float32, one per
        server; zeros when nothing matches or there are no servers)."""
        if not self.docs:
            return np.zeros(0, dtype=np.float32)
        index = self._lexical.get("index")
        if index is None:  # racing searches may both build it: same result, one assignment wins
            known = self._lexical.get("tokens", {})
            tokens = {t: known[t] if t in known else tuple(tokenize(t)) for t in self.texts}
            index = LexicalIndex([tokens[t] for t in self.texts])
            self._lexical["tokens"] = tokens
            self._lexical["index"] = index
        scores: Vectors = index.scores(query)
        return scores
