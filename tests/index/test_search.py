"""ToolIndex.search: modes, filters, multi-query, limits (hashing embedder)."""

from __future__ import annotations

import pytest

from tests.index.conftest import CountingEmbedder
from toolcrib.errors import IndexError_
from toolcrib.index.documents import ToolDoc
from toolcrib.index.search import ToolIndex


@pytest.fixture
def index(embedder: CountingEmbedder, catalog: list[ToolDoc]) -> ToolIndex:
    ix = ToolIndex.open(None, embedder)
    ix.sync(catalog)
    return ix


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_each_mode_finds_the_obvious_tool(index: ToolIndex, mode: str) -> None:
    hits = index.search("commit changes to the repository", mode=mode, limit=3)
    assert hits[0].key == "git__git_commit"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_limit_and_len(index: ToolIndex, catalog: list[ToolDoc]) -> None:
    assert len(index) == len(catalog)
    assert len(index.search("file", limit=2)) == 2
    assert index.search("file", limit=0) == []
    assert len(index.search("file", limit=100)) == len(catalog)


def test_allowed_filter_never_returns_a_disallowed_key(index: ToolIndex) -> None:
    def allowed(key: str) -> bool:
        return not key.startswith("fs__")

    for mode in ("dense", "bm25", "hybrid"):
        hits = index.search("read the contents of a file", limit=5, allowed=allowed, mode=mode)
        assert len(hits) == 5
        assert all(allowed(h.key) for h in hits)
    assert index.search("anything", allowed=lambda key: False) == []


def test_allowed_filter_applies_before_truncation(index: ToolIndex) -> None:
    only = "weather__get_forecast"
    hits = index.search("read a file", limit=1, allowed=lambda key: key == only)
    assert [h.key for h in hits] == [only]


def test_server_filter(index: ToolIndex) -> None:
    hits = index.search("time", server="git", limit=10)
    assert {h.key.split("__")[0] for h in hits} == {"git"}
    assert len(hits) == 3
    assert index.search("time", server="nope") == []


def test_multi_query_covers_every_step(index: ToolIndex) -> None:
    hits = index.search(["what time is it in a timezone", "commit changes to the repository"], limit=2)
    assert {h.key for h in hits} == {"time__get_current_time", "git__git_commit"}
    assert index.search(["", "  "]) == []


def test_unknown_mode_is_a_clear_error(index: ToolIndex) -> None:
    with pytest.raises(IndexError_, match="unknown search mode"):
        index.search("x", mode="fuzzy")
    with pytest.raises(IndexError_):
        ToolIndex.open(None, CountingEmbedder(), ranking="fuzzy")


def test_empty_index_returns_nothing(embedder: CountingEmbedder) -> None:
    ix = ToolIndex.open(None, embedder)
    assert ix.search("anything") == []
    assert ix.doc("x") is None


def test_doc_lookup(index: ToolIndex, catalog: list[ToolDoc]) -> None:
    assert index.doc("time__convert_time") == catalog[1]
    assert index.doc("missing") is None


def test_cjk_descriptions_match_lexically(embedder: CountingEmbedder) -> None:
    ix = ToolIndex.open(None, embedder)
    ix.sync(
        [
            ToolDoc("bing__search", "bing", "bing_search", "使用必应搜索指定的关键词", {}),
            ToolDoc("fs__read", "fs", "read_file", "Read a file", {}),
        ]
    )
    assert ix.search("必应搜索", mode="bm25", limit=1)[0].key == "bing__search"
