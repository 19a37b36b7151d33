"""Search latency, build throughput, warm restart and memory of the tool index.

``python -m benchmarks.search_latency`` measures, with the offline int8 MiniLM:

- ``ToolIndex.search`` p50/p99 (limit 5; the query embedding included, every query distinct) at
  100, 1,000 and 10,000 tools, for hybrid (default), dense and BM25, plus a 3-step multi-query;
- index build throughput (real tool texts embedded per second, sorted by length, token-budget batches);
- a warm restart of a persisted 1,000-tool catalog in a fresh process (zero embeddings);
- peak RSS of a fresh process holding the model and a 10,000-tool index, after searches.

The catalogs start from the real tools of every dataset in ``../shared/data``. Larger catalogs
are synthesised from them (renamed servers, varied names and descriptions); embedding 10,000
texts at ~30/s would take minutes, so the synthetic tools get the real tool's vector plus noise
(cosine ~0.9 to the original), while their BM25 texts are real text. Writes
``benchmarks/results/search_latency.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks.common import DATA, ROOT, CachedEmbedder, cached_default_embedder, load_queries, load_tools
from benchmarks.retrieval import shared_datasets
from toolcrib.index.documents import ToolDoc, document_text
from toolcrib.index.embedder import Embedder, FastEmbedEmbedder
from toolcrib.index.search import ToolIndex

RESULTS = ROOT / "benchmarks" / "results" / "search_latency.md"
SIZES = (100, 1_000, 10_000)
VARIANTS = ("", "get_", "list_", "search_", "fetch_", "update_", "query_", "run_")


class LookupEmbedder:
    """Documents from a precomputed text -> vector table, anything else (queries, server documents)
    from the live model: per text, so a batch mixing table texts and others sends only the others.

    ``live_texts`` / ``live_seconds``: texts sent to the live model and the time spent in it.
    (It used to send a whole batch live when one text was missing: a sync batch of 64 tool texts
    holding one server document re-embedded all 64, ~8,100 texts at 10,000 tools instead of ~1,000.)
    """

    def __init__(self, live: Embedder, table: dict[str, np.ndarray]) -> None:
        self.live = live
        self.table = table
        self.model_id = live.model_id
        self.dim = live.dim
        self.fingerprint = live.fingerprint
        self.live_texts = 0
        self.live_seconds = 0.0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        missing = []
        for i, text in enumerate(texts):
            vector = self.table.get(text)
            if vector is None:
                missing.append(i)
            else:
                out[i] = vector
        if missing:
            started = time.perf_counter()
            out[missing] = self.live.embed([texts[i] for i in missing])
            self.live_seconds += time.perf_counter() - started
            self.live_texts += len(missing)
        return out


def real_tools() -> list[ToolDoc]:
    """Every tool of every shared dataset, keys made unique."""
    docs: dict[str, ToolDoc] = {}
    for _, tools_path, _ in shared_datasets():
        for d in load_tools(tools_path):
            docs.setdefault(d.key, d)
    return list(docs.values())


def synthesize(
    base: Sequence[ToolDoc], vectors: np.ndarray, size: int, seed: int = 0
) -> tuple[list[ToolDoc], np.ndarray]:
    """``size`` tools: the real ones first, then renamed/varied copies with perturbed vectors."""
    rng = np.random.default_rng(seed)
    docs = list(base[:size])
    out = [vectors[i] for i in range(len(docs))]
    copy = 0
    while len(docs) < size:
        copy += 1
        for i, d in enumerate(base):
            if len(docs) >= size:
                break
            prefix = VARIANTS[(copy + i) % len(VARIANTS)]
            server = f"{d.server}-m{copy}"
            name = f"{prefix}{d.name}" if prefix and not d.name.startswith(prefix) else f"{d.name}_{copy}"
            docs.append(
                dataclasses.replace(
                    d,
                    key=f"{server}__{name}",
                    server=server,
                    name=name,
                    description=f"{d.description} (mirror {copy} of {d.server})",
                )
            )
            noisy = vectors[i] + rng.normal(0, 0.025, vectors.shape[1]).astype(np.float32)
            out.append(noisy / np.linalg.norm(noisy))
    return docs, np.vstack(out).astype(np.float32)


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds of ``samples`` given in seconds."""
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]


def query_texts(n: int) -> list[str]:
    """``n`` distinct real query texts from the datasets (deterministic shuffle)."""
    texts: list[str] = []
    for _, tools_path, queries_path in shared_datasets():
        texts.extend(q.text for q in load_queries(queries_path, tools_path))
    unique = list(dict.fromkeys(texts))
    random.Random(1).shuffle(unique)
    return unique[:n]


def time_searches(
    index: ToolIndex, queries: Sequence[Any], mode: str, *, cached: bool = False
) -> tuple[float, float, float]:
    """p50/p99 ms of searching each of ``queries`` once, and the p50 ms of this process's CPU time
    per search (every thread: the model's pool too; unlike wall time, hardly changed by other work
    on the machine); ``cached``: with every query vector already in the index's query cache (a
    repeated query), else with an empty cache (every query embedded)."""
    for q in queries[:5]:
        index.search(q, limit=5, mode=mode)
    if cached:
        for q in queries:
            index.search(q, limit=5, mode=mode)
    else:
        index.query_cache.clear()
    samples, cpu = [], []
    for q in queries:
        c = time.process_time()
        t = time.perf_counter()
        index.search(q, limit=5, mode=mode)
        samples.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return (*percentiles(samples), statistics.median(cpu) * 1000)


def catalog_table(
    cache: CachedEmbedder, live: FastEmbedEmbedder, n_queries: int, sizes: Sequence[int] = SIZES
) -> tuple[list[str], dict[str, Any]]:
    base = real_tools()
    base_vectors = cache.embed([document_text(d) for d in base])
    queries = query_texts(n_queries * 4)
    rows, figures = [], {}
    for size in sizes:
        docs, vectors = synthesize(base, base_vectors, size)
        table = {document_text(d): v for d, v in zip(docs, vectors, strict=True)}
        lookup = LookupEmbedder(live, table)
        index = ToolIndex.open(None, lookup)
        started = time.perf_counter()
        report = index.sync(docs)
        build = time.perf_counter() - started
        result: dict[str, Any] = {
            "index_build_s_without_embedding": build,
            "server_documents_embedded": report.embedded_side,
            "texts_embedded_live": lookup.live_texts,
            "live_model_s": lookup.live_seconds,
        }
        print(
            f"{size:,} tools: sync {build:.2f} s, {report.embedded_side} server documents embedded; "
            f"{lookup.live_texts} texts sent to the model in {lookup.live_seconds:.2f} s",
            flush=True,
        )
        offset = 0
        for mode in ("hybrid", "dense", "bm25"):
            chunk = queries[offset : offset + n_queries]
            offset += n_queries
            result[mode] = time_searches(index, chunk, mode)
        steps = [queries[offset + i : offset + i + 3] for i in range(0, 3 * (n_queries // 3), 3)]
        result["hybrid 3-step"] = time_searches(index, steps, "hybrid")
        result["hybrid, index only"] = time_searches(index, queries[:n_queries], "hybrid", cached=True)
        figures[str(size)] = result
        modes = ("hybrid", "dense", "bm25", "hybrid 3-step", "hybrid, index only")
        cells = " | ".join(f"{result[m][0]:.1f} / {result[m][1]:.1f}" for m in modes)
        rows.append(f"| {size:,} | {cells} | {result['hybrid'][2]:.1f} | {build:.2f} |")
        print(rows[-1], flush=True)
    samples = []
    for q in queries[:n_queries]:
        started = time.perf_counter()
        live.embed([q])
        samples.append(time.perf_counter() - started)
    figures["query embedding alone"] = percentiles(samples)
    head = [
        "| tools | hybrid p50 / p99 ms | dense p50 / p99 ms | bm25 p50 / p99 ms "
        "| hybrid, 3 queries p50 / p99 ms | hybrid, query vector cached p50 / p99 ms "
        "| hybrid CPU ms per search, p50 | sync s (tool vectors precomputed, server documents embedded) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    return head + rows, figures


def build_throughput(live: FastEmbedEmbedder, count: int) -> dict[str, float]:
    """Real tool texts embedded per second through ``ToolIndex.sync``, and unsorted for comparison."""
    base = real_tools()
    docs = random.Random(2).sample(base, min(count, len(base)))
    texts = [document_text(d) for d in docs]
    started = time.perf_counter()
    report = ToolIndex.open(None, live).sync(docs)
    sorted_rate = report.embedded / (time.perf_counter() - started)
    sample = texts[:96]
    started = time.perf_counter()
    for i in range(0, len(sample), 16):
        live._encode(sample[i : i + 16])
    unsorted_rate = len(sample) / (time.perf_counter() - started)
    chars = [len(t) for t in texts]
    return {
        "texts": float(report.embedded),
        "texts_per_s": sorted_rate,
        "unsorted_texts_per_s_96": unsorted_rate,
        "mean_chars": statistics.mean(chars),
        "max_chars": float(max(chars)),
    }


def peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would include the forking parent's pages)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_average() -> str:
    """The 1-minute load average (other work on the machine skews latency)."""
    return f"{os.getloadavg()[0]:.2f}"


def child(kind: str, directory: Path) -> None:
    """Run in a fresh process: warm restart or RSS measurement of a persisted index."""
    started = time.perf_counter()
    live = FastEmbedEmbedder()
    model_s = time.perf_counter() - started
    docs = [ToolDoc.from_json(json.loads(line)) for line in (directory / "docs.jsonl").open()]
    started = time.perf_counter()
    index = ToolIndex.open(directory / "index", live)
    open_s = time.perf_counter() - started
    report = index.sync(docs)
    restart_s = time.perf_counter() - started
    for q in query_texts(50):
        index.search(q)
    rss_mb = peak_rss_mb()
    longest = sorted((document_text(d) for d in real_tools()), key=len)[-64:]
    live.embed(longest)
    print(
        json.dumps(
            {
                "kind": kind,
                "tools": len(index),
                "embedded": report.embedded,
                "model_load_s": model_s,
                "open_s": open_s,
                "open_and_sync_s": restart_s,
                "peak_rss_mb": rss_mb,
                "peak_rss_after_embedding_mb": peak_rss_mb(),
            }
        )
    )


def persisted(cache: CachedEmbedder, live: FastEmbedEmbedder, size: int, directory: Path) -> None:
    base = real_tools()
    docs, vectors = synthesize(base, cache.embed([document_text(d) for d in base]), size)
    table = {document_text(d): v for d, v in zip(docs, vectors, strict=True)}
    ToolIndex.open(directory / "index", LookupEmbedder(live, table)).sync(docs)
    with (directory / "docs.jsonl").open("w") as f:
        for d in docs:
            f.write(json.dumps(d.to_json()) + "\n")


def run_child(kind: str, directory: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.search_latency", "--child", kind, str(directory)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="tool index latency, build, restart and memory")
    parser.add_argument("--queries", type=int, default=300, help="timed queries per catalog size and mode")
    parser.add_argument("--build-texts", type=int, default=300, help="tool texts embedded for the build rate")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--sizes",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        default=SIZES,
        help="comma-separated catalog sizes of the latency/sync table (default 100,1000,10000)",
    )
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="only the latency/sync table (no build rate, restart or memory); prints, writes no results file",
    )
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return

    load_before = load_average()
    cache = cached_default_embedder()
    live = FastEmbedEmbedder()
    table_rows, figures = catalog_table(cache, live, args.queries, args.sizes)
    if args.table_only:
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
        return
    build = build_throughput(live, args.build_texts)
    print(build, flush=True)
    with tempfile.TemporaryDirectory() as td:
        d1, d10 = Path(td) / "1k", Path(td) / "10k"
        d1.mkdir()
        d10.mkdir()
        persisted(cache, live, 1_000, d1)
        persisted(cache, live, 10_000, d10)
        cache.save()
        restart = run_child("restart", d1)
        memory = run_child("rss", d10)
    print(restart, memory, flush=True)
    loads = f"{load_before} at the start, {load_average()} at the end"
    figures.update(build=build, restart=restart, memory=memory)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    lines = [
        "# Tool index: search latency, build, restart, memory",
        "",
        machine.describe(),
        f"1-minute load average (the 2 cores are shared with other work): {loads}.",
        "",
        "`python -m benchmarks.search_latency`: offline int8 all-MiniLM-L6-v2 (toolcrib's onnxruntime session, "
        f"{live.threads} non-spinning intra-op threads, the gateway's setting),",
        "exact FAISS `IndexIDMap2(IndexFlatIP)` with `omp_set_num_threads(1)`, bm25s. Every timed call embeds",
        f"a distinct real query ({args.queries} per cell, limit 5) with the query cache emptied first, except in",
        "the 'query vector cached' column: the same queries searched again, each a hit in the index's",
        "query-embedding cache (LRU keyed by the normalised query). Catalogs start from the",
        f"{len(real_tools())} real tools of {DATA}; larger catalogs are synthesised from them",
        "(renamed servers, varied names and descriptions). Their BM25 text is real text, but their vectors",
        "are the original tool's vector plus Gaussian noise (cosine ~0.9), not embeddings of the varied text:",
        "embedding 10,000 texts here takes minutes.",
        "",
        *table_rows,
        "",
        "The sync column: one `ToolIndex.sync` of the whole catalog with the tool vectors looked up (the",
        "synthetic ones cannot be embedded), the server documents (one per server: name, tools, first",
        "sentences) embedded by the live model: "
        + "; ".join(
            f"{int(size):,} tools: {f['server_documents_embedded']} server documents, "
            f"{f['live_model_s']:.1f} s of model time"
            for size, f in figures.items()
            if isinstance(f, dict) and "live_model_s" in f
        )
        + ".",
        "",
        "The query embedding alone (the same model call, {} queries): p50 {:.1f} ms, p99 {:.1f} ms.".format(
            args.queries, *figures["query embedding alone"]
        ),
        "",
        "Index build (real tool texts through `ToolIndex.sync`, sorted by length, batched by a padded-token",
        f"budget of 512 word pieces, clipped to 256 per text): {build['texts']:.0f} texts",
        f"(mean {build['mean_chars']:.0f} chars, max {build['max_chars']:.0f}) at",
        f"**{build['texts_per_s']:.1f} texts/s**; the first 96 of them unsorted, batch 16: "
        f"{build['unsorted_texts_per_s_96']:.1f} texts/s.",
        "",
        f"Warm restart of a persisted {restart['tools']:,}-tool index in a fresh process: model load "
        f"{restart['model_load_s']:.2f} s, `ToolIndex.open` {restart['open_s']:.2f} s, "
        "open + `sync` of the unchanged catalog "
        f"**{restart['open_and_sync_s']:.2f} s** with **{restart['embedded']} embeddings**; "
        f"total with the model {restart['model_load_s'] + restart['open_and_sync_s']:.2f} s.",
        "",
        f"Peak RSS (VmHWM) of a fresh process with the model, a {memory['tools']:,}-tool index and 50 searches: "
        f"**{memory['peak_rss_mb']:.0f} MB**; after it also embeds the 64 longest real tool texts (a reindex): "
        f"{memory['peak_rss_after_embedding_mb']:.0f} MB.",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
