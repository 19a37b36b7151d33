"""An immutable snapshot of the index: documents, vectors, the FAISS index and the BM25 index.

A :class:`ToolIndex` swaps whole snapshots, so searches never see a half-applied sync.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
import numpy.typing as npt

from toolcrib.index.documents import ToolDoc, lexical_text
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

    @classmethod
    def build(
        cls,
        docs: Sequence[ToolDoc],
        hashes: Sequence[str],
        vectors: Vectors,
        *,
        dense: faiss.Index | None = None,
        previous: Snapshot | None = None,
    ) -> Snapshot:
        """Build the FAISS (unless given) and BM25 indexes over ``docs`` and their ``vectors``.

        Tokens of documents unchanged since ``previous`` are reused rather than recomputed.
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
        return cls(
            docs=tuple(docs),
            hashes=tuple(hashes),
            vectors=vectors,
            dense=dense if dense is not None else new_faiss_index(vectors),
            lexical=LexicalIndex(tokens),
            tokens=tuple(tokens),
            rows={doc.key: row for row, doc in enumerate(docs)},
            server_rows={s: np.asarray(r, dtype=np.int64) for s, r in by_server.items()},
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
