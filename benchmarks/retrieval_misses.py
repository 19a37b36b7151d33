"""Why the default ranking misses: ``python -m benchmarks.retrieval_misses [--examples N]``.

For each dataset under ``../shared/data``, on the REPORT half (the queries the headline figures are
measured on; the same seeded sample as ``benchmarks.retrieval``), every query whose relevant tool is
not in the default ranking's top 5 (the first relevant group, for multi-tool queries every group
missing from the top 10) is a *miss*. Printed per dataset, and written to
``benchmarks/results/retrieval_misses.md``:

- how many queries miss, and where their relevant tool ranked (6-10, or beyond 10);
- how often the tool ranked first instead shares a word of four letters or more with the query that
  the relevant tool's own text lacks (a lexically better match: the label names one tool of several
  that answer the query), and the median cosine between the two tools' descriptions;
- the first N misses (query, relevant tool, the tool ranked first, both descriptions cut short).

Nothing here is tuned on: it reads rankings only.
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import REPORT, ROOT, Query, cached_default_embedder, load_queries, load_tools, split_of, tool_id
from benchmarks.retrieval import build_index, sample_queries, shared_datasets
from toolcrib.index.documents import ToolDoc
from toolcrib.index.search import ToolIndex
from toolcrib.index.steps import DEFAULT_RULES, step_queries

RESULTS = ROOT / "benchmarks" / "results" / "retrieval_misses.md"
_WORD = re.compile(r"[a-z]{4,}")


def words(text: str) -> set[str]:
    """Lower-case words of four letters or more (a crude content-word filter)."""
    return set(_WORD.findall(text.lower()))


def ranked_ids(index: ToolIndex, q: Query) -> list[str]:
    """The default ranking (hybrid, the query split into steps as ``search_tools`` does), top 10."""
    hits = index.search(step_queries(q.text, rules=DEFAULT_RULES), limit=10, mode="hybrid")
    return [tool_id(d) for h in hits if (d := index.doc(h.key)) is not None]


def analyse(name: str, docs: list[ToolDoc], queries: Sequence[Query], examples: int) -> str:
    """One dataset's section of the report (markdown)."""
    embedder = cached_default_embedder()
    index = build_index(docs, embedder)
    by_id = {tool_id(d): d for d in docs}
    vectors = embedder.embed([d.description or d.name for d in docs])
    row = {tool_id(d): i for i, d in enumerate(docs)}
    misses: list[tuple[Query, str, list[str]]] = []
    for q in queries:
        ranked = ranked_ids(index, q)
        cut = 5 if q.kind == "single" else 10
        for group in q.groups:
            if not group & set(ranked[:cut]):
                misses.append((q, sorted(group)[0], ranked))
                break
    ranks = Counter((str(ranked.index(gold) + 1) if gold in ranked else "beyond 10") for _, gold, ranked in misses)
    lexical = 0
    cosines = []
    for q, gold, ranked in misses:
        if not ranked or ranked[0] not in by_id or gold not in by_id:
            continue
        first, want = by_id[ranked[0]], by_id[gold]
        qw = words(q.text)
        if (qw & words(f"{first.name} {first.description}")) - words(f"{want.name} {want.description}"):
            lexical += 1
        cosines.append(float(vectors[row[ranked[0]]] @ vectors[row[gold]]))
    n = len(queries)
    lines = [
        f"### {name}: {n} report-half queries, {len(misses)} misses ({len(misses) / max(n, 1):.1%})",
        "",
        "Where the relevant tool ranked: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(ranks.items(), key=lambda kv: (kv[0] == "beyond 10", kv[0])))
        + ".",
        f"The tool ranked first shares a content word with the query that the relevant tool lacks: "
        f"{lexical} of {len(misses)}; median cosine of the two descriptions "
        f"{statistics.median(cosines) if cosines else 0.0:.2f}.",
        "",
        "| query | relevant tool | ranked first instead |",
        "|---|---|---|",
    ]

    def cell(tid: str) -> str:
        d = by_id.get(tid)
        return f"`{tid}`: {(d.description if d else '')[:70]}".replace("|", "/")

    for q, gold, ranked in misses[:examples]:
        lines.append(f"| {q.text[:90].replace('|', '/')} | {cell(gold)} | {cell(ranked[0] if ranked else '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--examples", type=int, default=12, help="misses listed per dataset")
    parser.add_argument("--max-single", type=int, default=2000, help="sample of single-tool queries (seed 0)")
    parser.add_argument("--markdown", type=Path, default=RESULTS, help="write the report here")
    args = parser.parse_args(argv)
    sections = [
        "# Why the default ranking misses (report half)",
        "",
        "`python -m benchmarks.retrieval_misses`. A miss: a single-tool query whose tool is not in the top 5,"
        " or a multi-tool query with a relevant tool missing from the top 10.",
        "",
    ]
    for name, tools_path, queries_path in shared_datasets():
        docs = load_tools(tools_path)
        queries = [
            q
            for q in sample_queries(load_queries(queries_path, tools_path), args.max_single)
            if split_of(q.text) == REPORT
        ]
        section = analyse(name, docs, queries, args.examples)
        print(section, flush=True)
        sections.append(section)
    args.markdown.write_text("\n".join(sections), encoding="utf-8")


if __name__ == "__main__":
    main()
