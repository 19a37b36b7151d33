"""Retrieval quality of the tool index: ``python -m benchmarks.retrieval [--tools T --queries Q]``.

Runs :class:`toolcrib.index.search.ToolIndex` itself (the offline int8 MiniLM, exact FAISS, bm25s)
with dense, BM25 and hybrid ranking side by side and prints Recall@1/5/10, HitRate@5, MRR@10,
nDCG@10 and All@10 (every relevant tool in the top 10). Relevant ids that share a tool name
(LiveMCPBench lists a name found on several servers under each of them) count once, as "any of".
For datasets whose queries carry a step plan (``steps``), the multi-query search (one query per
step, merged) is measured too. ``--explore`` adds the comparison of document texts and fusion
settings that chose the defaults.

Without ``--tools`` it runs every dataset in ``../shared/data`` and writes
``benchmarks/results/retrieval.md``. Embeddings are cached in ``.toolcrib/bench-cache``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.common import (
    DATA,
    ROOT,
    CachedEmbedder,
    Query,
    cached_default_embedder,
    load_queries,
    load_tools,
    tool_id,
)
from toolcrib.index.documents import DEFAULT_STYLE, TextStyle, ToolDoc
from toolcrib.index.fusion import DEFAULT_FUSION, Fusion
from toolcrib.index.search import ToolIndex

METRICS = ("R@1", "R@5", "R@10", "Hit@5", "MRR@10", "nDCG@10", "All@10")
RESULTS = ROOT / "benchmarks" / "results" / "retrieval.md"
MODES = ("dense", "bm25", "hybrid")


def score_ranking(ranked: Sequence[str], groups: Sequence[frozenset[str]]) -> dict[str, float]:
    """Metrics of one ranked list of tool ids against relevance groups (each group: any-of)."""
    first_rank: dict[int, int] = {}
    for pos, rid in enumerate(ranked[:10], start=1):
        for g, group in enumerate(groups):
            if rid in group and g not in first_rank:
                first_rank[g] = pos
    n = len(groups)

    def recall(k: int) -> float:
        return sum(1 for r in first_rank.values() if r <= k) / n

    dcg = sum(1.0 / math.log2(r + 1) for r in first_rank.values())
    idcg = sum(1.0 / math.log2(i + 1) for i in range(1, min(n, 10) + 1))
    best = min(first_rank.values(), default=None)
    return {
        "R@1": recall(1),
        "R@5": recall(5),
        "R@10": recall(10),
        "Hit@5": float(best is not None and best <= 5),
        "MRR@10": 1.0 / best if best else 0.0,
        "nDCG@10": dcg / idcg,
        "All@10": float(len(first_rank) == n),
    }


def evaluate(
    index: ToolIndex,
    queries: Sequence[Query],
    mode: str,
    texts: Callable[[Query], Sequence[str]] = lambda q: [q.text],
) -> dict[str, float]:
    """Mean metrics of ``index.search`` (limit 10) over ``queries``."""
    totals = dict.fromkeys(METRICS, 0.0)
    for q in queries:
        hits = index.search(list(texts(q)), limit=10, mode=mode)
        ranked = [tool_id(d) for h in hits if (d := index.doc(h.key)) is not None]
        for name, value in score_ranking(ranked, q.groups).items():
            totals[name] += value
    return {name: value / max(len(queries), 1) for name, value in totals.items()}


def build_index(docs: Sequence[ToolDoc], embedder: CachedEmbedder, style: TextStyle = DEFAULT_STYLE) -> ToolIndex:
    """An in-memory index over ``docs`` (vectors come from the cache when present)."""
    index = ToolIndex.open(None, embedder, text_style=style)
    index.sync(docs)
    return index


def table(rows: Sequence[tuple[str, dict[str, float]]], metrics: Sequence[str] = METRICS) -> str:
    """A markdown table: one row per (label, metrics)."""
    lines = ["| ranking | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    lines += [f"| {label} | " + " | ".join(f"{m[k]:.3f}" for k in metrics) + " |" for label, m in rows]
    return "\n".join(lines)


def sample_queries(queries: list[Query], max_single: int, seed: int = 0) -> list[Query]:
    """At most ``max_single`` single-tool queries (seeded sample) plus every multi-tool query."""
    single = [q for q in queries if q.kind == "single"]
    if len(single) > max_single:
        single = random.Random(seed).sample(single, max_single)
    return single + [q for q in queries if q.kind != "single"]


STYLES: dict[str, TextStyle] = {
    "issue baseline: `server: name - description Parameters: p1, p2`": TextStyle(humanize=False, title=False),
    "default: humanized names, title, parameter names": DEFAULT_STYLE,
    "default + parameter descriptions": replace(DEFAULT_STYLE, param_descriptions=True),
    "default without parameter names": replace(DEFAULT_STYLE, param_names=False),
    "default without server": replace(DEFAULT_STYLE, server=False),
}
FUSIONS: dict[str, Fusion] = {
    "rrf equal weight (k=60)": Fusion(method="rrf", dense_weight=0.5),
    "rrf dense 0.7 (k=60)": Fusion(method="rrf", dense_weight=0.7),
    "rrf dense 0.8 (k=60)": Fusion(method="rrf", dense_weight=0.8),
    "convex dense 0.5": Fusion(dense_weight=0.5),
    "convex dense 0.6": Fusion(dense_weight=0.6),
    "convex dense 0.7": Fusion(dense_weight=0.7),
    "convex dense 0.8": Fusion(dense_weight=0.8),
    "convex dense 0.85 (default)": Fusion(dense_weight=0.85),
    "convex dense 0.9": Fusion(dense_weight=0.9),
}


def run_dataset(
    name: str, docs: list[ToolDoc], queries: list[Query], modes: Sequence[str], explore: bool
) -> dict[str, Any]:
    """Every measurement for one dataset; returns a JSON-able dict including its markdown."""
    embedder = cached_default_embedder()
    started = time.perf_counter()
    index = build_index(docs, embedder)
    built = time.perf_counter() - started
    out: dict[str, Any] = {"dataset": name, "tools": len(docs), "queries": len(queries), "modes": {}}
    kinds = sorted({q.kind for q in queries})
    md = [f"### {name}: {len(docs)} tools, {len(queries)} queries", ""]
    for kind_set in [None, *kinds] if len(kinds) > 1 else [None]:
        subset = [q for q in queries if kind_set is None or q.kind == kind_set]
        rows = []
        for mode in modes:
            metrics = evaluate(index, subset, mode)
            rows.append((mode, metrics))
            out["modes"][f"{mode}/{kind_set or 'all'}"] = metrics
        label = "all queries" if kind_set is None else f"{kind_set}-tool queries"
        md += [f"{label} ({len(subset)}):", "", table(rows), ""]

    stepped = [q for q in queries if q.steps]
    if stepped:
        variants: list[tuple[str, str, Callable[[Query], Sequence[str]], Fusion]] = [
            ("task query only", "dense", lambda q: [q.text], DEFAULT_FUSION),
            ("task query only", "hybrid", lambda q: [q.text], DEFAULT_FUSION),
        ]
        for merge in ("round_robin", "max", "sum"):
            fusion = replace(DEFAULT_FUSION, merge=merge)
            variants.append((f"one query per step, {merge}", "hybrid", lambda q: q.steps, fusion))
        variants.append(
            ("task + one query per step, round_robin", "hybrid", lambda q: [q.text, *q.steps], DEFAULT_FUSION)
        )
        variants.append(("one query per step, round_robin", "dense", lambda q: q.steps, DEFAULT_FUSION))
        rows = []
        for label, mode, texts, fusion in variants:
            index.fusion = fusion
            metrics = evaluate(index, stepped, mode, texts)
            rows.append((f"{mode}: {label}", metrics))
            out["modes"][f"multi-query {mode}: {label}"] = metrics
        index.fusion = DEFAULT_FUSION
        md += [
            f"multi-step search ({len(stepped)} tasks with a step plan; limit 10 over the merged list):",
            "",
            table(rows, ("R@5", "R@10", "All@10", "Hit@5", "MRR@10")),
            "",
        ]

    if explore:
        rows = []
        for label, style in STYLES.items():
            variant = index if style == DEFAULT_STYLE else build_index(docs, embedder, style)
            rows.append((f"dense, {label}", evaluate(variant, queries, "dense")))
            rows.append((f"hybrid, {label}", evaluate(variant, queries, "hybrid")))
        md += ["document text (all queries):", "", table(rows), ""]
        rows = [("dense only", out["modes"]["dense/all"])]
        for label, fusion in FUSIONS.items():
            index.fusion = fusion
            rows.append((label, evaluate(index, queries, "hybrid")))
        index.fusion = DEFAULT_FUSION
        md += ["fusion (all queries):", "", table(rows), ""]
        out["explore"] = md[-2]
    embedder.save()
    out["index_build_s"] = built
    out["embedded"] = embedder.computed
    out["markdown"] = "\n".join(md)
    return out


def shared_datasets() -> list[tuple[str, Path, Path | None]]:
    """Every dataset under ``../shared/data``: ``tools.jsonl`` + ``queries.jsonl``, or a dump directory."""
    found = []
    for d in sorted(DATA.iterdir()):
        if (d / "tools.jsonl").exists() and (d / "queries.jsonl").exists():
            found.append((d.name, d / "tools.jsonl", d / "queries.jsonl"))
        elif any(d.glob("*.json")):
            found.append((d.name, d, None))
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tools", type=Path, help="tools.jsonl or a directory of tools/list dumps")
    parser.add_argument("--queries", type=Path, help="queries.jsonl")
    parser.add_argument("--mode", choices=MODES, help="only this ranking (default: all three)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    parser.add_argument("--max-single", type=int, default=2000, help="sample of single-tool queries (seed 0)")
    parser.add_argument("--explore", action="store_true", help="also compare document texts and fusions")
    parser.add_argument("--markdown", type=Path, help=f"write the report here (default without --tools: {RESULTS})")
    args = parser.parse_args(argv)

    if args.tools:
        datasets = [(args.tools.stem if args.tools.is_dir() else args.tools.parent.name, args.tools, args.queries)]
    else:
        datasets = shared_datasets()
        args.markdown = args.markdown or RESULTS
    modes = (args.mode,) if args.mode else MODES
    results = []
    for name, tools_path, queries_path in datasets:
        docs = load_tools(tools_path)
        queries = sample_queries(load_queries(queries_path, tools_path), args.max_single)
        result = run_dataset(name, docs, queries, modes, args.explore)
        results.append(result)
        print(result["markdown"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.markdown:
        write_report(args.markdown, results, args.max_single)


def write_report(path: Path, results: Sequence[dict[str, Any]], max_single: int) -> None:
    """The markdown report: machine, method, one section per dataset."""
    default = DEFAULT_FUSION
    head = [
        "# Tool retrieval quality",
        "",
        machine.describe(),
        "",
        "`python -m benchmarks.retrieval --explore` (ToolIndex with the offline int8 all-MiniLM-L6-v2,",
        f"exact FAISS, bm25s). Default ranking: hybrid, {default.method} fusion with dense weight",
        f"{default.dense_weight}, candidate pool {default.pool} per side; multi-query merge {default.merge}.",
        f"Single-tool queries are a seeded sample of at most {max_single}; every multi-tool query is kept.",
        "R@k = share of a query's relevant tools in the top k (set recall for multi-tool queries); a tool",
        "name listed on several servers counts once (any of).",
        "All@10 = every relevant tool in the top 10. The real-servers queries are handwritten (benchmarks/common.py).",
        "",
        "How the default was chosen: each dataset's *fusion* table sweeps reciprocal rank fusion and the convex",
        "combination (cosine and BM25 scaled by the query's best BM25 score) over the dense weight; the default is",
        "the setting that is best summed over the three datasets. The *document text* table compares what is",
        "embedded; parameter descriptions go to the BM25 text only. BM25 tokenization splits identifiers",
        "(snake/camel case), stems English (Snowball), drops stopwords and indexes CJK characters as unigrams and",
        "bigrams. The *multi-step* table searches each step of a task's step plan (LiveMCPBench `steps`) in one",
        "call and merges the rankings.",
        "",
    ]
    summary = [
        "## Summary (all queries of each dataset)",
        "",
        "| dataset | dense R@1 / R@5 / R@10 | BM25 R@5 | hybrid (default) R@1 / R@5 / R@10 "
        "| per-step multi-query R@10 |",
        "|---|---:|---:|---:|---:|",
    ]

    def cell(r: dict[str, Any], mode: str, ks: tuple[str, ...]) -> str:
        m = r["modes"].get(f"{mode}/all")
        return " / ".join(f"{m[k]:.3f}" for k in ks) if m else "-"

    for r in results:
        stepped = r["modes"].get("multi-query hybrid: one query per step, round_robin")
        steps = f"{stepped['R@10']:.3f}" if stepped else "-"
        summary.append(
            f"| {r['dataset']} | {cell(r, 'dense', ('R@1', 'R@5', 'R@10'))} | {cell(r, 'bm25', ('R@5',))} "
            f"| {cell(r, 'hybrid', ('R@1', 'R@5', 'R@10'))} | {steps} |"
        )
    summary.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(head + summary + [r["markdown"] for r in results]) + "\n")


if __name__ == "__main__":
    main()
