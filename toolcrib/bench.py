"""``toolcrib bench tokens``: how many tokens toolcrib saves on this user's own setup.

Three figures per server and in total, in each offline encoding (see :mod:`toolcrib.tokens`):

- **full list**: the JSON of the ``tools/list`` result a client loads without toolcrib (every
  tool's name, description and schemas, as toolcrib's passthrough mode lists them);
- **dispatcher list**: the JSON of the ``tools/list`` result in dispatcher mode (``search_tools``,
  ``invoke`` and any ``always_expose`` tools);
- **typical turn**: the dispatcher list plus one ``search_tools`` call (``limit`` 5) and the
  result text the model reads (:func:`toolcrib.router.dispatcher.render_results`).

The percentage saved compares the typical turn with the full list. Search results come from the
real index in BM25 mode when it is available, otherwise from a deterministic lexical ranking;
without ``--queries`` the five median-sized tools stand in for a result. The report names which.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import mcp_types as types

from toolcrib.config import Config
from toolcrib.errors import ConfigError
from toolcrib.router import dispatcher as disp
from toolcrib.router.catalog import Catalog, Entry
from toolcrib.tokens import ENCODINGS, count_tokens, tokenizer_info

SEARCH_LIMIT = 5
MAX_QUERIES = 200


# ---- what a client reads ----------------------------------------------------------------------


def tools_list_json(tools: Iterable[types.Tool]) -> str:
    """The ``tools/list`` result as it goes over the wire (and into a client's context)."""
    return types.ListToolsResult(tools=list(tools)).model_dump_json(by_alias=True, exclude_none=True)


def dispatcher_tools(catalog: Catalog, always_expose: Sequence[str] = ()) -> list[types.Tool]:
    """The tool list a dispatcher-mode client sees before any search."""
    out = list(disp.DISPATCHER_TOOLS)
    out.extend(e.tool for k, e in catalog.tools.items() if any(fnmatch.fnmatchcase(k, g) for g in always_expose))
    return out


def search_turn_text(query: str, results: Sequence[tuple[Entry, float]], server: str | None = None) -> str:
    """The ``search_tools`` call the model writes plus the result text it reads back."""
    arguments: dict[str, Any] = {"query": query, "limit": SEARCH_LIMIT}
    if server is not None:
        arguments["server"] = server
    call = json.dumps({"name": disp.SEARCH, "arguments": arguments}, ensure_ascii=False)
    result = disp.render_results(results)
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    return call + "\n" + "\n".join(texts)


# ---- picking "typical" search results ----------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    key: str
    score: float


_WORD = re.compile(r"\w+", re.UNICODE)


class LexicalSearcher:
    """A deterministic word-overlap ranking over name and description (the index stand-in)."""

    def __init__(self, catalog: Catalog) -> None:
        self._words = {
            key: set(_WORD.findall(f"{e.name.replace('_', ' ')} {e.tool.description or ''}".lower()))
            for key, e in catalog.tools.items()
        }
        self._server = {key: e.server for key, e in catalog.tools.items()}

    def needs_model(self, query: str | Sequence[str]) -> bool:
        return False  # word overlap only

    def search(
        self,
        query: str | Sequence[str],
        *,
        limit: int = SEARCH_LIMIT,
        server: str | None = None,
        allowed: Callable[[str], bool] | None = None,
    ) -> list[Hit]:
        text = query if isinstance(query, str) else " ".join(query)
        q = set(_WORD.findall(text.lower()))
        scored = []
        for key, words in self._words.items():
            if server is not None and self._server[key] != server:
                continue
            if allowed is not None and not allowed(key):
                continue
            overlap = len(q & words)
            scored.append((-overlap / (1 + len(words)) ** 0.5, key))
        scored.sort()
        return [Hit(key, -s) for s, key in scored[:limit]]


def open_index_searcher(catalog: Catalog, workdir: Path) -> disp.Searcher | None:
    """The real tool index in BM25 mode (no embedding cost), or None when it is not importable."""
    try:
        from toolcrib.index.documents import ToolDoc
        from toolcrib.index.embedder import HashingEmbedder
        from toolcrib.index.search import ToolIndex  # type: ignore[import-not-found,unused-ignore]

        index = ToolIndex.open(workdir, HashingEmbedder(), ranking="bm25")
        docs = [
            ToolDoc(
                key=e.key,
                server=e.server,
                name=e.name,
                description=e.tool.description or "",
                input_schema=e.tool.input_schema,
                title=e.tool.title,
            )
            for e in catalog.tools.values()
        ]
        index.sync(docs)
    except Exception:  # an index still being written must not break the token report
        return None
    searcher: disp.Searcher = index
    return searcher


def median_sized(catalog: Catalog, server: str | None, limit: int = SEARCH_LIMIT) -> list[tuple[Entry, float]]:
    """The ``limit`` tools whose rendered size is closest to the median: a query-free "typical" result."""
    entries = [e for e in catalog.tools.values() if server is None or e.server == server]
    if not entries:
        return []
    size = {e.key: len(disp.render_results([(e, 0.0)]).content[0].text) for e in entries}  # type: ignore[union-attr]
    med = statistics.median(size.values())
    entries.sort(key=lambda e: (abs(size[e.key] - med), e.key))
    return [(e, 0.0) for e in entries[:limit]]


# ---- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the report, for one encoding."""

    label: str
    tools: int
    full: int
    dispatcher: int
    turn: float

    @property
    def saved_list(self) -> float:
        return 1.0 - self.dispatcher / self.full if self.full else 0.0

    @property
    def saved_turn(self) -> float:
        return 1.0 - self.turn / self.full if self.full else 0.0


@dataclass
class Report:
    encodings: tuple[str, ...]
    rows: dict[str, list[Row]] = field(default_factory=dict)
    """Per encoding: one row per server, then the total (label ``TOTAL``)."""
    results_source: str = ""
    queries: int = 0


def measure(
    catalog: Catalog,
    *,
    queries: Sequence[str] = (),
    searcher: disp.Searcher | None = None,
    always_expose: Sequence[str] = (),
    encodings: Sequence[str] = ENCODINGS,
    per_server: bool = True,
    source: str = "",
) -> Report:
    """Count full list, dispatcher list and typical turn, per server and in total."""
    queries = list(queries)[:MAX_QUERIES]
    if queries and searcher is None:
        searcher, source = LexicalSearcher(catalog), "lexical word-overlap ranking (index unavailable)"
    elif not queries:
        source = f"the {SEARCH_LIMIT} median-sized tools (no --queries given)"
    report = Report(tuple(encodings), results_source=source, queries=len(queries))
    servers = sorted({e.server for e in catalog.tools.values()}) if per_server else []
    groups: list[tuple[str, str | None]] = [(s, s) for s in servers] + [("TOTAL", None)]
    dispatcher_json = tools_list_json(dispatcher_tools(catalog, always_expose))

    for label, server in groups:
        entries = [e for e in catalog.tools.values() if server is None or e.server == server]
        full_json = tools_list_json(e.tool for e in entries)
        if queries and searcher is not None:
            turns = []
            for q in queries:
                args = disp.SearchArgs((q,), SEARCH_LIMIT, server)
                turns.append(search_turn_text(q, disp.search(searcher, catalog, args, lambda _k: True), server))
        else:
            turns = [search_turn_text("<task>", median_sized(catalog, server), server)]
        for enc in encodings:
            d = count_tokens(dispatcher_json, enc)
            turn = d + statistics.fmean(count_tokens(t, enc) for t in turns)
            report.rows.setdefault(enc, []).append(Row(label, len(entries), count_tokens(full_json, enc), d, turn))
    return report


def pct(x: float) -> str:
    """A percentage with enough digits that 99.96% never prints as 100.0%."""
    return f"{100 * x:.2f}%" if 0.99 <= x < 1 else f"{100 * x:.1f}%"


def format_report(report: Report) -> str:
    """Markdown tables, one per encoding, each percentage beside its catalog size."""
    lines = []
    for enc in report.encodings:
        lines.append(f"### {tokenizer_info(enc).describe()}")
        lines.append("")
        lines.append("| server | tools | full list | dispatcher list | typical turn | saved (list) | saved (turn) |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for r in report.rows.get(enc, []):
            name = f"**{r.label}**" if r.label == "TOTAL" else r.label
            lines.append(
                f"| {name} | {r.tools} | {r.full:,} | {r.dispatcher:,} | {r.turn:,.0f} | "
                f"{pct(r.saved_list)} of {r.tools} tools | {pct(r.saved_turn)} of {r.tools} tools |"
            )
        lines.append("")
    lines.append(
        f"Typical turn = dispatcher list + one search_tools call (limit {SEARCH_LIMIT}) + its result; "
        f"results from {report.results_source}" + (f", mean over {report.queries} queries." if report.queries else ".")
    )
    lines.append("Counts are estimates for models with other tokenizers (Claude's is not public).")
    return "\n".join(lines)


# ---- the command -------------------------------------------------------------------------------


def read_queries(path: Path) -> list[str]:
    """Queries from a JSONL file with a ``query`` field per line, or plain text, one per line."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read queries ({exc.strerror}); pass an existing file") from None
    out = []
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                q = json.loads(line).get("query")
            except (ValueError, AttributeError):
                raise ConfigError(f"{path}: a line is not valid JSON; use one JSON object or text per line") from None
            if isinstance(q, str) and q.strip():
                out.append(q.strip())
        else:
            out.append(line)
    return out


async def load_catalog(config: Config, wait: float = 30.0) -> tuple[Catalog, list[str]]:
    """Connect to every configured server, list its tools, and disconnect; also say which failed."""
    from toolcrib.cli.index import expander
    from toolcrib.router.pool import Pool

    pool = Pool(config, expand_secret=expander(config))
    async with pool.running():
        await pool.wait_ready(wait)
        catalog = pool.catalog
        problems = [
            f"{name}: {up.state.status}" + (f" ({up.state.error})" if up.state.error else "")
            for name, up in sorted(pool.upstreams.items())
            if up.state.status != "connected"
        ]
    return catalog, problems


def run_tokens(config: Config, queries_path: Path | None, *, out: TextIO | None = None, wait: float = 30.0) -> int:
    import tempfile

    import anyio

    if not config.enabled_servers:
        raise ConfigError("no enabled servers in the config; add a [servers.NAME] section first")
    catalog, problems = anyio.run(load_catalog, config, wait)
    for p in problems:
        print(f"toolcrib: warning: not counted: {p}", file=sys.stderr)
    if not catalog.tools:
        raise ConfigError("no tools listed by any configured server; check `toolcrib serve` output")
    queries = read_queries(queries_path) if queries_path else []
    with tempfile.TemporaryDirectory(prefix="toolcrib-bench-") as tmp:
        searcher = open_index_searcher(catalog, Path(tmp)) if queries else None
        source = "the tool index (BM25 ranking)" if searcher is not None else ""
        report = measure(
            catalog,
            queries=queries,
            searcher=searcher,
            always_expose=config.gateway.always_expose,
            source=source,
        )
    print(format_report(report), file=out or sys.stdout)
    return 0


def _cmd_bench_tokens(args: argparse.Namespace, config: Config) -> int:
    return run_tokens(config, Path(args.queries) if args.queries else None)


def register(sub: Any) -> None:
    """Add ``toolcrib bench tokens`` to the CLI."""
    p = sub.add_parser("bench", help="measure toolcrib on your own setup")
    verbs = p.add_subparsers(dest="bench_verb", metavar="WHAT", required=True)
    t = verbs.add_parser(
        "tokens",
        help="tokens of the full tool list vs toolcrib's dispatcher and a typical search turn",
        description="Connects to the configured servers and counts tokens per server and in total "
        "(o200k_base and cl100k_base, offline).",
    )
    t.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file (as for every verb)")
    t.add_argument("--queries", metavar="FILE", help="JSONL with a `query` per line (or text lines) for search turns")
    t.set_defaults(func=_cmd_bench_tokens)
