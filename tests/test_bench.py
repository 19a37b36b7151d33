"""``toolcrib bench tokens``: counts over catalogs, the report, and the CLI against a real server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mcp_types as types
import pytest

from toolcrib import bench
from toolcrib.cli import build_parser, main
from toolcrib.router.catalog import Catalog, Entry
from toolcrib.router.dispatcher import DISPATCHER_TOOLS
from toolcrib.tokens import count_tokens


def make_catalog(servers: dict[str, int]) -> Catalog:
    cat = Catalog()
    for server, n in servers.items():
        for i in range(n):
            name = f"tool_{i}"
            key = cat.tool_key(server, name)
            tool = types.Tool(
                name=key,
                description=f"Does thing number {i} on {server}: reads, writes and lists widgets in detail.",
                input_schema={
                    "type": "object",
                    "properties": {"path": {"type": "string", "description": "Where the widget lives."}},
                    "required": ["path"],
                },
            )
            cat.tools[key] = Entry(key, server, name, tool)
    return cat


def test_dispatcher_list_is_constant_and_small() -> None:
    small, big = make_catalog({"a": 2}), make_catalog({"a": 200})
    assert bench.dispatcher_tools(small) == bench.dispatcher_tools(big) == list(DISPATCHER_TOOLS)
    tokens = count_tokens(bench.tools_list_json(bench.dispatcher_tools(big)))
    assert 100 < tokens <= 600


def test_always_expose_tools_join_the_dispatcher_list() -> None:
    cat = make_catalog({"a": 3, "b": 3})
    names = [t.name for t in bench.dispatcher_tools(cat, ["b__*"])]
    assert names == ["search_tools", "invoke", "b__tool_0", "b__tool_1", "b__tool_2"]


def test_tools_list_json_is_the_wire_form() -> None:
    cat = make_catalog({"a": 1})
    data = json.loads(bench.tools_list_json(e.tool for e in cat.tools.values()))
    assert data["tools"][0]["name"] == "a__tool_0"
    assert "inputSchema" in data["tools"][0]


def test_measure_rows_per_server_and_total() -> None:
    cat = make_catalog({"alpha": 10, "beta": 40})
    report = bench.measure(cat, encodings=["o200k_base"])
    rows = report.rows["o200k_base"]
    assert [(r.label, r.tools) for r in rows] == [("alpha", 10), ("beta", 40), ("TOTAL", 50)]
    alpha, beta, total = rows
    assert alpha.dispatcher == beta.dispatcher == total.dispatcher
    assert total.full > beta.full > alpha.full
    assert total.turn > total.dispatcher
    assert alpha.saved_turn < beta.saved_turn < total.saved_turn < 1
    assert total.saved_list > total.saved_turn
    assert "median-sized" in report.results_source


def test_savings_grow_with_catalog_size() -> None:
    saved = [
        bench.measure(make_catalog({"s": n}), per_server=False, encodings=["cl100k_base"]).rows["cl100k_base"][0]
        for n in (10, 100, 1000)
    ]
    assert saved[0].saved_turn < saved[1].saved_turn < saved[2].saved_turn
    assert saved[2].saved_turn > 0.98


def test_queries_use_a_searcher_and_restrict_to_the_server() -> None:
    cat = make_catalog({"alpha": 6, "beta": 6})
    seen: list[str | None] = []

    class Recorder(bench.LexicalSearcher):
        def search(self, query, *, limit=5, server=None, allowed=None):  # type: ignore[no-untyped-def]
            seen.append(server)
            return super().search(query, limit=limit, server=server, allowed=allowed)

    report = bench.measure(cat, queries=["list widgets"], searcher=Recorder(cat), source="recorder")
    assert sorted(seen, key=str) == sorted(["alpha", "beta", None], key=str)
    assert report.queries == 1 and report.results_source == "recorder"


def test_lexical_searcher_ranks_by_overlap() -> None:
    cat = make_catalog({"a": 3})
    special = types.Tool(name="a__zap", description="Zap the frobnicator", input_schema={"type": "object"})
    cat.tools["a__zap"] = Entry("a__zap", "a", "zap", special)
    hits = bench.LexicalSearcher(cat).search("frobnicator zap please", limit=2)
    assert hits[0].key == "a__zap"
    assert len(hits) == 2


def test_report_puts_catalog_size_beside_every_percentage() -> None:
    text = bench.format_report(bench.measure(make_catalog({"a": 7}), encodings=["o200k_base"]))
    assert "o200k_base" in text
    for line in text.splitlines():
        if "%" in line:
            assert line.count("%") == line.count("of 7 tools")


def test_fallback_encoding_is_reported() -> None:
    text = bench.format_report(bench.measure(make_catalog({"a": 2}), encodings=["nope_base"]))
    assert "bytes/4" in text


def test_read_queries_jsonl_and_text(tmp_path: Path) -> None:
    p = tmp_path / "q.jsonl"
    p.write_text('{"query": "send an email"}\n\n{"relevant": []}\nplain text query\n', encoding="utf-8")
    assert bench.read_queries(p) == ["send an email", "plain text query"]


def test_cli_parses_bench_tokens() -> None:
    args = build_parser().parse_args(["bench", "tokens", "--config", "x.toml", "--queries", "q.jsonl"])
    assert args.config == "x.toml" and args.queries == "q.jsonl"
    args = build_parser().parse_args(["--config", "y.toml", "bench", "tokens"])
    assert args.config == "y.toml" and args.queries is None


def test_cli_counts_a_real_server(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "toolcrib.toml"
    command = json.dumps(sys.executable)
    args = '["-m", "mcp_server_time", "--local-timezone", "UTC"]'
    config.write_text(f"[servers.time]\ncommand = {command}\nargs = {args}\n", encoding="utf-8")
    assert main(["bench", "tokens", "--config", str(config)]) == 0
    out = capfd.readouterr().out
    assert "| time | 2 |" in out
    assert "**TOTAL** | 2 |" in out
    assert "cl100k_base" in out and "o200k_base" in out


def test_cli_without_servers_says_what_to_do(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "toolcrib.toml"
    config.write_text("[gateway]\n", encoding="utf-8")
    assert main(["bench", "tokens", "--config", str(config)]) != 0
    assert "add a [servers.NAME] section" in capfd.readouterr().err
