"""The benchmark's tune/report split, its slices and the non-English query set."""

from __future__ import annotations

import hashlib
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.common import (
    DATA,
    NON_ENGLISH_QUERIES,
    REAL_SERVER_QUERIES,
    REPORT,
    TUNE,
    load_queries,
    make_query,
    split_of,
)
from benchmarks.retrieval import slices
from toolcrib.index.documents import ToolDoc


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=300))
def test_split_is_the_hash_rule(text: str) -> None:
    expected = TUNE if hashlib.sha256(text.encode("utf-8")).digest()[0] % 2 == 0 else REPORT
    assert split_of(text) == expected == split_of(str(text))


def test_split_halves_a_dataset() -> None:
    texts = [f"query number {i}" for i in range(2000)]
    counts = Counter(split_of(t) for t in texts)
    assert set(counts) == {TUNE, REPORT}
    assert 900 < counts[TUNE] < 1100


def test_non_english_set() -> None:
    tools_dir = DATA / "real-servers"
    langs = Counter(lang for _, _, lang in NON_ENGLISH_QUERIES)
    assert len(NON_ENGLISH_QUERIES) >= 40
    assert {"zh", "es", "de", "fr", "ja"} <= set(langs)
    english = {q for q, _ in REAL_SERVER_QUERIES}
    assert not english & {q for q, _, _ in NON_ENGLISH_QUERIES}
    if tools_dir.is_dir():
        from benchmarks.common import load_tools

        ids = {f"{d.server}/{d.name}" for d in load_tools(tools_dir)}
        assert all(r in ids for _, rel, _ in NON_ENGLISH_QUERIES for r in rel)
        queries = load_queries(None, tools_dir)
        assert Counter(q.lang for q in queries)["en"] == len(REAL_SERVER_QUERIES)


def test_slices() -> None:
    docs = [
        ToolDoc(key="a__x", server="a", name="x", description="查询火车票", input_schema={}),
        ToolDoc(key="b__y", server="b", name="y", description="weather", input_schema={}),
    ]
    queries = [
        make_query("train tickets", ["a/x"]),
        make_query("weather and tickets", ["a/x", "b/y"], "multi", steps="1. weather\n2. tickets"),
        make_query("el tiempo", ["b/y"], lang="es"),
    ]
    got = {name: [q.text for q in qs] for name, qs in slices(docs, queries)}
    assert got["all"] == ["train tickets", "weather and tickets", "el tiempo"]
    assert got["single-tool"] == ["train tickets", "el tiempo"]
    assert got["multi-tool (set recall)"] == ["weather and tickets"]
    assert got["multi-step tasks, text as given"] == ["weather and tickets"]
    assert got["non-English"] == got["non-English: es"] == ["el tiempo"]
    assert got["English"] == ["train tickets", "weather and tickets"]
    assert got["relevant tool described in Chinese"] == ["train tickets", "weather and tickets"]
