"""Tokenizer and fusion helpers."""

from __future__ import annotations

import numpy as np
import pytest

from toolcrib.index.documents import ToolDoc, document_text, humanize_identifier, lexical_text
from toolcrib.index.fusion import Fusion, fuse, merge_rankings
from toolcrib.index.lexical import LexicalIndex, tokenize


def test_identifiers_are_split_and_stemmed() -> None:
    assert tokenize("getCurrentTime list_directory HTTPServer") == [
        "current",
        "time",
        "list",
        "directori",
        "http",
        "server",
    ]


def test_cjk_becomes_unigrams_and_bigrams() -> None:
    assert tokenize("必应搜索") == ["必", "应", "搜", "索", "必应", "应搜", "搜索"]


def test_stopwords_are_dropped() -> None:
    assert tokenize("what is the weather in Paris") == ["weather", "pari"]


def test_lexical_index_scores() -> None:
    index = LexicalIndex.from_texts(["read a file", "weather forecast", ""])
    scores = index.scores("weather")
    assert scores.shape == (3,) and scores[1] > 0 and scores[0] == 0
    assert not index.scores("the of and").any()
    assert not LexicalIndex([]).scores("x").any()
    assert LexicalIndex([["weather"], []]).scores("weather")[0] > 0


def test_humanize_and_document_text() -> None:
    assert humanize_identifier("getCurrentTime") == "get current time"
    assert humanize_identifier("git-create_branch") == "git create branch"
    doc = ToolDoc(
        "t__get_current_time",
        "mcp-server-time",
        "get_current_time",
        "Get current time.",
        {"properties": {"timezone": {"description": "IANA name"}}},
        title="Clock",
    )
    assert document_text(doc) == "mcp server time: get current time (Clock) - Get current time.. Parameters: timezone"
    assert "IANA name" in lexical_text(doc)
    assert doc.content_hash("a") != doc.content_hash("b")
    assert ToolDoc.from_json(doc.to_json()) == doc


def test_convex_fusion_lets_dense_decide_without_lexical_match() -> None:
    dense = np.array([0.2, 0.5], dtype=np.float32)
    assert np.argmax(fuse(dense, np.zeros(2, dtype=np.float32))) == 1
    assert np.argmax(fuse(dense, np.array([9.0, 0.0], dtype=np.float32), Fusion(dense_weight=0.5))) == 0
    rrf = fuse(dense, np.array([1.0, 0.0], dtype=np.float32), Fusion(method="rrf", dense_weight=0.5))
    assert rrf[0] > rrf[1] > 0


def test_merge_rankings() -> None:
    a = [(1, 0.9), (2, 0.8), (3, 0.7)]
    b = [(4, 0.6), (2, 0.5)]
    assert [r for r, _ in merge_rankings([a, b], "round_robin")] == [1, 4, 2, 3]
    assert [r for r, _ in merge_rankings([a, b], "max")] == [1, 2, 3, 4]
    assert merge_rankings([a, b], "sum")[0][0] == 2
    with pytest.raises(ValueError):
        Fusion(method="nope")
