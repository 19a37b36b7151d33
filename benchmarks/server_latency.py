"""Search latency with and without the server signal (issue 14), measured in one run.

``python -m benchmarks.server_latency [--queries N]``: the 10,000-tool catalog of
:mod:`benchmarks.search_latency` (real tools plus synthesised mirrors, each mirror its own server),
one index with its server documents, hybrid searches (limit 5, every query embedded) alternating
between the default fusion before issue 14 (``server_weight = 0``) and the current default, in
blocks of 10 so both see the same machine load. Prints p50/p99 ms of each and the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from benchmarks.common import CachedEmbedder, cached_default_embedder
from benchmarks.search_latency import percentiles, query_texts, real_tools, synthesize
from toolcrib.index.documents import document_text
from toolcrib.index.embedder import FastEmbedEmbedder
from toolcrib.index.fusion import DEFAULT_FUSION
from toolcrib.index.search import ToolIndex


class _Embedder:
    """Tool texts from a table, other texts (server documents) from the disk cache while
    ``indexing``; afterwards (queries) the live model."""

    def __init__(self, live: FastEmbedEmbedder, cache: CachedEmbedder, table: dict[str, np.ndarray]) -> None:
        self.live, self.cache, self.table = live, cache, table
        self.model_id, self.dim, self.fingerprint = live.model_id, live.dim, live.fingerprint
        self.indexing = True

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not self.indexing:
            return self.live.embed(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        missing = [i for i, t in enumerate(texts) if t not in self.table]
        for i, t in enumerate(texts):
            if t in self.table:
                out[i] = self.table[t]
        if missing:
            out[missing] = self.cache.embed([texts[i] for i in missing])
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queries", type=int, default=300, help="timed queries per variant")
    parser.add_argument("--size", type=int, default=10_000, help="tools in the catalog")
    args = parser.parse_args()
    cache = cached_default_embedder()
    live = FastEmbedEmbedder()
    base = real_tools()
    docs, vectors = synthesize(base, cache.embed([document_text(d) for d in base]), args.size)
    table = {document_text(d): v for d, v in zip(docs, vectors, strict=True)}
    embedder = _Embedder(live, cache, table)
    index = ToolIndex.open(None, embedder)
    started = time.perf_counter()
    index.sync(docs)
    cache.save()
    print(f"{len(index)} tools, {len(index._snap.servers)} servers, sync {time.perf_counter() - started:.1f} s")
    embedder.indexing = False  # queries: the live model, every one embedded (query cache cleared)
    variants = {
        "before (server_weight 0)": dataclasses.replace(DEFAULT_FUSION, server_weight=0.0),
        "after": DEFAULT_FUSION,
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    queries = query_texts(args.queries * len(variants))
    for q in queries[:10]:
        index.search(q, limit=5)
    for start in range(0, args.queries, 10):
        for i, (label, fusion) in enumerate(variants.items()):
            index.fusion = fusion
            index.query_cache.clear()
            block = queries[(start + i * args.queries) : (start + i * args.queries) + 10]
            for q in block:
                t = time.perf_counter()
                index.search(q, limit=5)
                samples[label].append(time.perf_counter() - t)
    figures = {label: percentiles(s) for label, s in samples.items()}
    for label, (p50, p99) in figures.items():
        print(f"| {label} | {p50:.2f} | {p99:.2f} |")
    before, after = figures.values()
    print(f"p50 ratio after/before: {after[0] / before[0]:.3f}")


if __name__ == "__main__":
    main()
