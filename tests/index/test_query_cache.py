"""The query-embedding cache: its key (the normaliser), its bound, its thread safety, and that a hit
returns exactly the vector the real model computes for the query."""

from __future__ import annotations

import string
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.index.conftest import CountingEmbedder
from toolcrib.index.documents import ToolDoc
from toolcrib.index.embedder import FastEmbedEmbedder, QueryCache, normalize_query
from toolcrib.index.search import ToolIndex

# Every Unicode whitespace character str.split() knows, ASCII and not.
WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()]
words = st.lists(st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1), min_size=1)
separators = st.text(st.sampled_from(WHITESPACE), min_size=1, max_size=4)


@settings(max_examples=2000)
@given(st.text())
def test_normaliser_is_idempotent(text: str) -> None:
    once = normalize_query(text)
    assert normalize_query(once) == once
    assert once == once.strip() and "  " not in once


@settings(max_examples=1000)
@given(words, st.data())
def test_normaliser_ignores_whitespace_runs_and_ends(parts: list[str], data: st.DataObject) -> None:
    plain = " ".join(parts)
    spaced = data.draw(separators) + "".join(p + data.draw(separators) for p in parts)
    assert normalize_query(spaced) == normalize_query(plain)


@settings(max_examples=1000)
@given(st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " \t\n", max_size=80))
def test_normaliser_ignores_case(text: str) -> None:
    assert normalize_query(text.upper()) == normalize_query(text.lower()) == normalize_query(text.swapcase())


def test_normaliser_folds_compatibility_forms_and_case() -> None:
    assert normalize_query("  \uff25\uff43\uff48\uff4f\u3000Some\tTEXT\n") == "echo some text"
    assert normalize_query("STRASSE") == normalize_query("straße") == "strasse"
    assert normalize_query("\ufb01le") == "file"
    assert normalize_query(" \t ") == ""


def test_lru_is_bounded_and_evicts_the_least_recently_used() -> None:
    inner = CountingEmbedder()
    cache = QueryCache(inner, maxsize=2)
    cache.embed(["read a file"])
    cache.embed(["git status"])
    cache.embed(["READ  a file"])  # hit: "read a file" is now the most recent
    cache.embed(["weather"])  # evicts "git status"
    assert len(cache) == 2
    assert inner.texts == ["read a file", "git status", "weather"]
    cache.embed(["read a file", "git status", "Git Status"])
    assert inner.texts[3:] == ["git status"]  # one model call for two spellings in one batch
    assert (cache.hits, cache.misses) == (3, 4)


def test_size_zero_disables_caching_and_negative_is_refused() -> None:
    inner = CountingEmbedder()
    cache = QueryCache(inner, maxsize=0)
    a = cache.embed(["git log"])
    b = cache.embed(["git log"])
    assert np.array_equal(a, b) and inner.texts == ["git log", "git log"] and len(cache) == 0
    with pytest.raises(ValueError, match="0 \\(off\\) or a positive"):
        QueryCache(inner, maxsize=-1)


def test_cached_rows_cannot_be_changed_through_a_result() -> None:
    cache = QueryCache(CountingEmbedder())
    first = cache.embed(["read a file"])
    first[0] = 0.0  # the caller's copy
    assert np.array_equal(cache.embed(["read a file"]), CountingEmbedder().embed(["read a file"]))


def test_concurrent_searches_share_one_bounded_cache() -> None:
    inner = CountingEmbedder()
    cache = QueryCache(inner, maxsize=16)
    queries = [f"query number {i}" for i in range(64)]
    expected = {q: CountingEmbedder().embed([q])[0] for q in queries}
    failures: list[str] = []

    def worker(seed: int) -> None:
        for step in range(400):
            q = queries[(seed * 7 + step * 13) % len(queries)]
            got = cache.embed([q.upper(), q])
            if not (np.array_equal(got[0], expected[q]) and np.array_equal(got[1], expected[q])):
                failures.append(q)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(cache) <= 16
    assert cache.hits + cache.misses == 8 * 400 * 2  # every row served, by a hit or by a model call


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> FastEmbedEmbedder:
    return FastEmbedEmbedder(cache_dir=tmp_path_factory.mktemp("cache"))


def test_real_model_hit_equals_uncached_embedding(minilm: FastEmbedEmbedder) -> None:
    cache = QueryCache(minilm)
    spellings = ["what time is it in Tokyo", "  What TIME is it\tin tokyo ", "WHAT  TIME IS IT IN TOKYO\n"]
    uncached = minilm.embed(["what time is it in Tokyo"])[0]
    for text in spellings:
        # the uncased model gives every spelling the same vector, cached or not
        assert np.array_equal(minilm.embed([text])[0], uncached)
        assert np.array_equal(cache.embed([text])[0], uncached)
    assert len(cache) == 1 and (cache.hits, cache.misses) == (2, 1)
    # batched with other queries, a hit is still the single-text vector
    both = cache.embed(["convert time between timezones", spellings[1]])
    assert np.array_equal(both[1], uncached)
    assert np.array_equal(both[0], minilm.embed(["convert time between timezones"])[0])


def test_real_model_search_is_the_same_with_and_without_the_cache(minilm: FastEmbedEmbedder, tmp_path: Path) -> None:
    def doc(server: str, name: str, description: str) -> ToolDoc:
        return ToolDoc(f"{server}__{name}", server, name, description, {"type": "object", "properties": {}})

    docs = [
        doc("time", "get_current_time", "Get current time in a specific timezone"),
        doc("time", "convert_time", "Convert time between timezones"),
        doc("up", "echo", "Echo the text back"),
        doc("fs", "read_file", "Read the complete contents of a file"),
    ]
    cached = ToolIndex(None, minilm)
    plain = ToolIndex(None, minilm, query_cache_size=0)
    cached.sync(docs)
    plain.sync(docs)
    for query in ["what time is it in Tokyo", "Echo  some TEXT back", ["read a file", "convert time"]]:
        for _ in range(2):
            assert cached.search(query) == plain.search(query)
    assert cached.query_cache.hits == 4 and cached.query_cache.misses == 4
    assert cached.search("what time is it in Tokyo")[0].key == "time__get_current_time"


def test_needs_model_says_when_a_search_would_embed(catalog: list[ToolDoc]) -> None:
    inner = CountingEmbedder()
    index = ToolIndex(None, inner)
    index.sync(catalog)
    inner.texts.clear()
    assert index.needs_model("read a file") and index.needs_model(["read a file", "git log"])
    assert not index.needs_model("read a file", mode="bm25")
    index.search("Read A  File")
    assert inner.texts == ["read a file"]
    assert not index.needs_model("read a file") and not index.needs_model(["  READ a file", " "])
    assert index.needs_model(["read a file", "git log"])
    hits = index.query_cache.hits
    assert not index.needs_model("read a file") and index.query_cache.hits == hits  # a peek, not a hit
    uncached = ToolIndex(None, inner, query_cache_size=0)
    uncached.sync(catalog)
    uncached.search("read a file")
    assert uncached.needs_model("read a file")
