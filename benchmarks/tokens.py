"""Token savings vs catalog size: ``python -m benchmarks.tokens``.

Builds catalogs of 10 ... 5,000 tools from the datasets (``tools.jsonl`` files in the
``{"server","name","description","input_schema"}`` format, and ``real-servers/*.json``
tools/list dumps), counts with :mod:`toolcrib.bench` exactly what ``toolcrib bench tokens``
counts, and writes ``benchmarks/results/tokens.md`` and ``tokens.png``.

The pool of distinct tools is shuffled with a fixed seed so every size mixes all sources; sizes
beyond the pool repeat it under renamed servers (``<server>-r2`` ...), as a user with many similar
servers would see. Search turns use queries sampled (seeded) from the datasets' ``queries.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mcp_types as types

from benchmarks import machine
from toolcrib import bench
from toolcrib.router.catalog import Catalog, Entry
from toolcrib.tokens import ENCODINGS, tokenizer_info

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (10, 50, 100, 500, 1000, 5000)
TARGETS = {100: 0.95, 1000: 0.99}
DISPATCHER_MAX = 600


def load_tools(data_dirs: list[Path]) -> list[tuple[str, types.Tool]]:
    """Every ``(server, tool)`` in the data directories (any dataset in the shared format)."""
    out: list[tuple[str, types.Tool]] = []
    for d in data_dirs:
        for path in sorted(d.rglob("tools.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                schema = rec.get("input_schema") or {"type": "object", "properties": {}}
                tool = types.Tool(name=rec["name"], description=rec.get("description") or None, input_schema=schema)
                out.append((str(rec["server"]), tool))
        for path in sorted(d.rglob("*.json")):
            if path.name.startswith("_"):
                continue
            dump = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(dump, dict) or not isinstance(dump.get("tools"), list):
                continue
            server = str(dump.get("server") or path.stem)
            out.extend((server, types.Tool.model_validate(raw)) for raw in dump["tools"])
    return out


def load_queries(data_dirs: list[Path], n: int, seed: int) -> list[str]:
    queries: list[str] = []
    for d in data_dirs:
        for path in sorted(d.rglob("queries.jsonl")):
            lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
            queries.extend(str(q["query"]) for q in lines if q.get("query"))
    rng = random.Random(seed)
    return rng.sample(queries, min(n, len(queries)))


def safe_server(name: str) -> str:
    s = "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-_") or "server"
    return s.replace("__", "_")[:40]


def build_catalog(pool: list[tuple[str, types.Tool]], size: int) -> Catalog:
    """The first ``size`` tools of the shuffled pool, repeating it under renamed servers if needed."""
    cat = Catalog()
    for i in range(size):
        server, tool = pool[i % len(pool)]
        rep = i // len(pool)
        server = safe_server(server) + (f"-r{rep + 1}" if rep else "")
        key = cat.tool_key(server, tool.name, cat.tools)
        cat.tools[key] = Entry(key, server, tool.name, tool.model_copy(update={"name": key}))
    return cat


def run(data_dirs: list[Path], sizes: list[int], n_queries: int, seed: int, out_dir: Path) -> list[dict[str, Any]]:
    pool = load_tools(data_dirs)
    if not pool:
        raise SystemExit(f"no tools found under {', '.join(map(str, data_dirs))}; pass --data DIR")
    random.Random(seed).shuffle(pool)
    queries = load_queries(data_dirs, n_queries, seed)
    rows: list[dict[str, Any]] = []
    sources = set()
    for size in sizes:
        t0 = time.perf_counter()
        cat = build_catalog(pool, size)
        with tempfile.TemporaryDirectory(prefix="toolcrib-tokens-") as tmp:
            searcher = bench.open_index_searcher(cat, Path(tmp)) if queries else None
            report = bench.measure(
                cat,
                queries=queries,
                searcher=searcher,
                per_server=False,
                source="the tool index (BM25 ranking)" if searcher else "",
            )
        sources.add(report.results_source)
        row: dict[str, Any] = {"size": size}
        for enc in ENCODINGS:
            r = report.rows[enc][-1]
            row[enc] = r
        rows.append(row)
        o = row["o200k_base"]
        print(
            f"{size:>5} tools: full {o.full:>9,}  dispatcher {o.dispatcher:>4}  turn {o.turn:>7,.0f}  "
            f"saved {bench.pct(o.saved_turn)} of {size} tools (o200k_base, {time.perf_counter() - t0:.1f}s)",
            file=sys.stderr,
        )
    write_report(rows, pool, queries, sorted(sources), data_dirs, out_dir)
    return rows


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in rows:
        r = row["o200k_base"]
        target = TARGETS.get(row["size"])
        if target is not None:
            ok = "met" if r.saved_turn >= target else "**missed**"
            out.append(
                f"- >= {bench.pct(target)} saved at {row['size']} tools: {bench.pct(r.saved_turn)} of "
                f"{row['size']} tools per typical turn ({ok}); dispatcher list alone {bench.pct(r.saved_list)} "
                f"of {row['size']} tools"
            )
    worst = max(row["o200k_base"].dispatcher for row in rows)
    ok = "met" if worst <= DISPATCHER_MAX else "**missed**"
    out.append(f"- dispatcher list <= {DISPATCHER_MAX} tokens: {worst} tokens at every size ({ok})")
    return out


def write_report(
    rows: list[dict[str, Any]],
    pool: list[tuple[str, types.Tool]],
    queries: list[str],
    sources: list[str],
    data_dirs: list[Path],
    out_dir: Path,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    servers = len({s for s, _ in pool})
    lines = [
        "# Token savings vs catalog size",
        "",
        machine.describe(),
        "",
        "Reproduce: `python -m benchmarks.tokens` (or `make bench`).",
        "",
        f"Catalogs: seeded shuffle of {len(pool)} distinct tools from {servers} servers "
        f"({', '.join(str(d) for d in data_dirs)}: tools.jsonl datasets and real-servers tools/list dumps); "
        "sizes above the pool repeat it under renamed servers.",
        f"Typical turn = dispatcher list + one search_tools call (limit {bench.SEARCH_LIMIT}) + its result text, "
        f"mean over {len(queries)} sampled dataset queries; results from {'; '.join(sources)}.",
        "Saved = 1 - typical turn / full list.",
        "",
    ]
    for enc in ENCODINGS:
        lines += [
            f"## {tokenizer_info(enc).describe()}",
            "",
            "| catalog size | full list | dispatcher list | typical turn | saved (list) | saved (typical turn) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            r = row[enc]
            n = f"{row['size']:,} tools"
            lines.append(
                f"| {n} | {r.full:,} | {r.dispatcher:,} | {r.turn:,.0f} | "
                f"{bench.pct(r.saved_list)} of {n} | {bench.pct(r.saved_turn)} of {n} |"
            )
        lines.append("")
    lines += ["## Targets (o200k_base)", "", *verdicts(rows), "", "![tokens vs catalog size](tokens.png)", ""]
    (out_dir / "tokens.md").write_text("\n".join(lines), encoding="utf-8")
    plot(rows, out_dir / "tokens.png")
    print("\n".join(lines))
    print(f"wrote {out_dir / 'tokens.md'} and {out_dir / 'tokens.png'}", file=sys.stderr)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row["size"] for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot(sizes, [row["o200k_base"].full for row in rows], "o-", label="full tool list (no toolcrib)")
    ax.plot(sizes, [row["o200k_base"].turn for row in rows], "s-", label="toolcrib: dispatcher + one search (5 hits)")
    ax.plot(sizes, [row["o200k_base"].dispatcher for row in rows], "^-", label="toolcrib: dispatcher list")
    for row in rows:
        r = row["o200k_base"]
        ax.annotate(
            f"{bench.pct(r.saved_turn)}",
            (row["size"], r.turn),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=7,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tools in catalog")
    ax.set_ylabel("tokens in context (o200k_base)")
    ax.set_title("Tokens vs catalog size: full list vs toolcrib")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tokens", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, action="append", help=f"dataset directory (repeatable; default {DEFAULT_DATA})")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated catalog sizes")
    p.add_argument("--queries", type=int, default=50, help="sampled queries per catalog for the typical turn")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    data = args.data or [DEFAULT_DATA]
    run(data, [int(s) for s in args.sizes.split(",")], args.queries, args.seed, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
