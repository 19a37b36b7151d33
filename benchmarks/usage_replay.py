"""Learning from use, replayed: ``python -m benchmarks.usage_replay``.

For every dataset in ``../shared/data`` (as :mod:`benchmarks.retrieval` reads them): the TUNE half of
the queries (:func:`benchmarks.common.split_of`) is replayed as past usage, each query as if searched
and then its relevant tools called successfully (:func:`toolcrib.index.usage.replay`, one fresh use
per pair, cap 32 per tool); the REPORT half is measured without and with those anchors, per slice:
dense, default (hybrid + step splitting) and default + usage.

The usage blend and threshold are chosen on the TUNE half alone: it is halved again by the second
byte of SHA-256(text) (tune-a replayed as usage, tune-b measured), over :data:`BLENDS` x
:data:`THRESHOLDS`, the setting with the best mean R@5 over datasets wins. Writes
``benchmarks/results/usage_replay.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.common import REPORT, ROOT, TUNE, Query, cached_default_embedder, load_queries, load_tools, split_of
from benchmarks.retrieval import (
    SLICE_METRICS,
    _split_texts,
    build_index,
    evaluate,
    sample_queries,
    shared_datasets,
    slices,
    table,
)
from toolcrib.index.fusion import DEFAULT_FUSION
from toolcrib.index.search import ToolIndex
from toolcrib.index.steps import DEFAULT_RULES
from toolcrib.index.usage import BLEND, THRESHOLD, UsageSignal, UsageState, replay

RESULTS = ROOT / "benchmarks" / "results" / "usage_replay.md"
BLENDS = (0.1, 0.2, 0.3, 0.5, 0.8)
THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8)


def _half(text: str) -> str:
    """``a`` or ``b``: the low bit of the second byte of SHA-256(text), to halve the tune split."""
    return "a" if hashlib.sha256(text.encode("utf-8")).digest()[1] & 1 == 0 else "b"


def _key(rid: str) -> str:
    server, name = rid.split("/", 1)
    return f"{server}__{name}"


def learned(index: ToolIndex, past: Sequence[Query], blend: float, threshold: float) -> UsageSignal:
    """The usage signal after replaying ``past`` (each query -> each of its relevant tools)."""
    uses = [(_key(rid), q.text) for q in past for rid in q.relevant]
    state = replay(UsageState(), uses, lambda texts: index.query_cache.embed(texts), ts=time.time())
    signal = UsageSignal(blend=blend, threshold=threshold)
    signal.load(state)
    return signal


def run_dataset(name: str, tools: Path, queries_path: Path | None, max_single: int) -> dict[str, Any]:
    docs = load_tools(tools)
    queries = sample_queries(load_queries(queries_path, tools), max_single)
    embedder = cached_default_embedder()
    index = build_index(docs, embedder)
    tune = [q for q in queries if split_of(q.text) == TUNE]
    report = [q for q in queries if split_of(q.text) == REPORT]
    split = _split_texts(DEFAULT_RULES)
    tune_a = [q for q in tune if _half(q.text) == "a"]
    tune_b = [q for q in tune if _half(q.text) == "b"]
    grid: dict[tuple[float, float], float] = {}
    base_tune = evaluate(index, tune_b, "hybrid", split)["R@5"]
    for blend in BLENDS:
        for threshold in THRESHOLDS:
            index.usage = learned(index, tune_a, blend, threshold)
            grid[(blend, threshold)] = evaluate(index, tune_b, "hybrid", split)["R@5"]
    index.usage = None
    embedder.save()
    return {
        "dataset": name,
        "docs": docs,
        "index": index,
        "tune": tune,
        "report": report,
        "tune_a": len(tune_a),
        "tune_b": len(tune_b),
        "grid": grid,
        "base_tune": base_tune,
    }


def report_dataset(r: dict[str, Any], blend: float, threshold: float) -> tuple[list[str], list[tuple[str, ...]]]:
    index: ToolIndex = r["index"]
    split = _split_texts(DEFAULT_RULES)
    signal = learned(index, r["tune"], blend, threshold)
    md = [
        f"### {r['dataset']}: {len(r['docs'])} tools; {len(r['tune'])} tune queries replayed as usage "
        f"({len(signal)} anchors), {len(r['report'])} report queries measured",
        "",
    ]
    summary = []
    for slice_name, subset in slices(r["docs"], r["report"]):
        rows = []
        index.usage = None
        rows.append(("dense", evaluate(index, subset, "dense")))
        rows.append(("default (hybrid + steps)", evaluate(index, subset, "hybrid", split)))
        index.usage = signal
        rows.append(("dense + usage", evaluate(index, subset, "dense")))
        rows.append(("default + usage", evaluate(index, subset, "hybrid", split)))
        index.usage = None
        md += [f"{slice_name} ({len(subset)} queries):", "", table(rows, SLICE_METRICS), ""]
        m = dict(rows)
        d, dflt, u = m["dense"]["R@5"], m["default (hybrid + steps)"]["R@5"], m["default + usage"]["R@5"]
        summary.append(
            (r["dataset"], slice_name, str(len(subset)), f"{d:.3f}", f"{dflt:.3f}", f"{u:.3f}", f"{u - dflt:+.3f}")
        )
    return md, summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--max-single", type=int, default=2000, help="sample of single-tool queries (seed 0)")
    parser.add_argument("--markdown", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = [run_dataset(n, t, q, args.max_single) for n, t, q in shared_datasets()]
    mean = {k: sum(r["grid"][k] for r in results) / len(results) for k in results[0]["grid"]}
    blend, threshold = max(mean, key=lambda k: (mean[k], -k[0]))
    grid_md = [
        "| blend \\ threshold | " + " | ".join(f"{t:g}" for t in THRESHOLDS) + " |",
        "|---|" + "---:|" * len(THRESHOLDS),
    ]
    for b in BLENDS:
        grid_md.append(f"| {b:g} | " + " | ".join(f"{mean[(b, t)]:.3f}" for t in THRESHOLDS) + " |")
    base = sum(r["base_tune"] for r in results) / len(results)
    head = [
        "# Learning from use: replay",
        "",
        machine.describe(),
        "",
        "`python -m benchmarks.usage_replay`. Every dataset of `benchmarks.retrieval` (same loading and",
        "sampling, offline int8 MiniLM; default = hybrid + step splitting with MiniLM's default fusion,",
        f"`fusion_for`: {DEFAULT_FUSION.method} {DEFAULT_FUSION.dense_weight:g} on the raw cosine, server relevance",
        f"{DEFAULT_FUSION.server_weight:g}; no dataset server descriptions loaded, as in the retrieval summary).",
        "The TUNE half of the queries is replayed as past usage: each",
        "query as if searched with `search_tools` and each of its relevant tools then called successfully",
        "(one fresh use per pair, so every anchor weighs 0.5, cap 32 anchors per tool). The REPORT half is",
        "measured without and with those anchors. Usage can only help where a report query resembles a",
        "tune query that led to the same tool; nothing is replayed from the report half.",
        "",
        "**Choosing blend and threshold (tune split only).** The tune half is halved again by the second",
        "byte of SHA-256(text): tune-a replayed, tune-b measured (default + usage, R@5, mean over datasets;",
        f"without usage: {base:.3f}). Chosen: blend {blend:g}, threshold {threshold:g} "
        f"(the library defaults are blend {BLEND:g}, threshold {THRESHOLD:g}).",
        "",
        *grid_md,
        "",
    ]
    summary = [
        "## Summary (report split, R@5)",
        "",
        "| dataset | slice | n | dense | default | default + usage | usage - default |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    body = []
    for r in results:
        md, rows = report_dataset(r, blend, threshold)
        body += md
        summary += ["| " + " | ".join(row) + " |" for row in rows]
        print("\n".join(md), flush=True)
    text = "\n".join([*head, *summary, "", *body]) + "\n"
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(text)
    print("\n".join(head + summary))


if __name__ == "__main__":
    main()
