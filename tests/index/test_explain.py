"""Explainable scores: ``ToolIndex.search(..., explain=True)`` gives each hit the parts of its score
(dense, lexical, how they were fused), and the ``*_term`` parts recompose the fused score bit for bit.

The index tests use the shipped int8 MiniLM (real embeddings); the fusion arithmetic gets a
hypothesis property test against :func:`toolcrib.index.fusion.fuse` itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.index.conftest import CATALOG
from toolcrib.cli import main
from toolcrib.index.documents import document_text
from toolcrib.index.embedder import FastEmbedEmbedder
from toolcrib.index.fusion import DEFAULT_FUSION, Fusion, fuse
from toolcrib.index.search import ToolIndex, compose, score_parts

QUERIES = [
    "what time is it in Tokyo",
    "show me the last commits of my repository",
    "read the file config.toml",
    "will it rain in Paris tomorrow",
    "convert 9:00 from London to New York time",
]
FUSIONS = [Fusion(), Fusion(method="rrf"), Fusion(dense_weight=0.5), Fusion(dense_weight=1.0)]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> FastEmbedEmbedder:
    return FastEmbedEmbedder(cache_dir=tmp_path_factory.mktemp("cache"))


def real_index(embedder: FastEmbedEmbedder, fusion: Fusion = DEFAULT_FUSION, ranking: str = "hybrid") -> ToolIndex:
    index = ToolIndex(None, embedder, ranking, fusion=fusion)
    index.sync(CATALOG)
    return index


@pytest.mark.parametrize("fusion", FUSIONS, ids=["convex", "rrf", "convex-w0.5", "dense-only-weight"])
def test_hybrid_parts_recompose_the_fused_score(minilm: FastEmbedEmbedder, fusion: Fusion) -> None:
    index = real_index(minilm, fusion)
    for query in QUERIES:
        plain = index.search(query, limit=5)
        explained = index.search(query, limit=5, explain=True)
        assert [(h.key, h.score) for h in explained] == [(h.key, h.score) for h in plain]  # same ranking
        assert all(h.parts is None for h in plain)  # nothing computed when not asked
        for hit in explained:
            parts = hit.parts
            assert parts is not None
            assert round(compose(parts), 6) == hit.score
            w = np.float32(fusion.dense_weight)
            assert parts["dense_weight"] == pytest.approx(fusion.dense_weight)
            if fusion.method == "convex":
                assert parts["dense_term"] == float(np.float32(fusion.dense_weight * np.float32(parts["dense"])))
                top = parts["lexical_max"]
                assert parts["lexical_norm"] == (float(np.float32(parts["lexical"]) / np.float32(top)) if top else 0)
                assert parts["lexical_term"] == pytest.approx((1 - w) * parts["lexical_norm"], rel=1e-6)
            else:
                assert parts["dense_term"] == pytest.approx(w / (fusion.rrf_k + parts["dense_rank"]), rel=1e-6)
                if parts["lexical"] > 0:
                    assert parts["lexical_term"] == pytest.approx((1 - w) / (60 + parts["lexical_rank"]), rel=1e-6)
                else:
                    assert parts["lexical_term"] == 0 and parts["lexical_rank"] == 0


def test_signals_are_the_real_cosine_and_bm25(minilm: FastEmbedEmbedder) -> None:
    """The raw parts are what they claim: the cosine of the query and document embeddings (computed
    here independently) and the BM25 score of the lexical index; ``lexical_max`` is the best BM25
    of the pool (the whole 9-tool catalog here)."""
    index = real_index(minilm)
    snap = index._snap
    for query in QUERIES:
        qvec = minilm.embed([query])[0]
        lexical = snap.lexical.scores(query)
        for hit in index.search(query, limit=9, explain=True):
            assert hit.parts is not None
            doc = index.doc(hit.key)
            assert doc is not None
            dvec = minilm.embed([document_text(doc, index.text_style)])[0]
            assert hit.parts["dense"] == pytest.approx(float(qvec @ dvec), abs=1e-5)
            assert hit.parts["lexical"] == float(lexical[snap.rows[hit.key]])
            assert hit.parts["lexical_max"] == float(lexical.max())


def test_the_time_tool_wins_on_both_signals(minilm: FastEmbedEmbedder) -> None:
    index = real_index(minilm)
    top = index.search("what time is it in Tokyo", limit=3, explain=True)
    assert top[0].key == "time__get_current_time"
    parts = top[0].parts
    assert parts is not None and parts["dense"] > 0.3 and parts["lexical"] > 0
    assert compose(parts) == pytest.approx(parts["dense_term"] + parts["lexical_term"] + parts["server_term"])


@pytest.mark.parametrize("ranking", ["dense", "bm25"])
def test_single_rankings_have_one_term(minilm: FastEmbedEmbedder, ranking: str) -> None:
    index = real_index(minilm, ranking=ranking)
    signal = "dense" if ranking == "dense" else "lexical"
    for hit in index.search("read a file", limit=4, explain=True):
        assert hit.parts is not None
        assert set(hit.parts) == {signal, f"{signal}_term"}
        assert round(compose(hit.parts), 6) == hit.score


def test_filters_and_several_queries(minilm: FastEmbedEmbedder) -> None:
    index = real_index(minilm)
    hits = index.search("show status", limit=3, server="git", explain=True)
    assert hits and all(h.key.startswith("git__") for h in hits)
    hits = index.search("time", limit=9, allowed=lambda k: k != "time__get_current_time", explain=True)
    assert "time__get_current_time" not in [h.key for h in hits]
    steps = ["what time is it in Tokyo", "commit my changes"]
    merged = index.search(steps, limit=4, explain=True)
    assert [(h.key, h.score) for h in merged] == [(h.key, h.score) for h in index.search(steps, limit=4)]
    for hit in merged:
        assert hit.parts is not None and hit.parts["query"] in (0.0, 1.0)
        assert round(compose(hit.parts), 6) == hit.score  # round robin keeps the best query's score
        alone = index.search(steps[int(hit.parts["query"])], limit=9, explain=True)
        same = next(h for h in alone if h.key == hit.key)
        assert same.score == hit.score


def test_sum_merge_reports_the_sum(minilm: FastEmbedEmbedder) -> None:
    index = real_index(minilm, Fusion(merge="sum"))
    steps = ["what time is it", "convert time between zones"]
    for hit in index.search(steps, limit=3, explain=True):
        assert hit.parts is not None and round(hit.parts["merged_sum"], 6) == hit.score


# ---- the fusion arithmetic -----------------------------------------------------------------------

_unit = st.floats(-1.0, 1.0, width=32, allow_nan=False)
_bm25 = st.one_of(st.just(0.0), st.floats(0.0, 40.0, width=32, allow_nan=False))


@st.composite
def pools(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, Fusion]:
    n = draw(st.integers(1, 40))
    dense = draw(hnp.arrays(np.float32, n, elements=_unit))
    lexical = draw(hnp.arrays(np.float32, n, elements=_bm25))
    fusion = Fusion(
        method=draw(st.sampled_from(["convex", "rrf"])),
        dense_weight=draw(st.one_of(st.sampled_from([0.0, 0.85, 1.0]), st.floats(0.0, 1.0))),
        rrf_k=draw(st.sampled_from([1.0, 60.0, 17.5])),
    )
    return dense, lexical, fusion


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools())
def test_parts_recompose_fuse_bit_for_bit(pool: tuple[np.ndarray, np.ndarray, Fusion]) -> None:
    dense, lexical, fusion = pool
    fused = fuse(dense, lexical, fusion)
    parts = score_parts(dense, lexical, fusion)
    assert all(len(v) == len(dense) for v in parts.values())
    for i in range(len(dense)):
        one = {name: float(values[i]) for name, values in parts.items()}
        assert compose(one) == float(fused[i])  # exact, not approximate
        assert one["dense"] == float(dense[i]) and one["lexical"] == float(lexical[i])
        if fusion.method == "convex":
            assert 0.0 <= one["lexical_norm"] <= 1.0
            assert one["lexical_max"] == float(lexical.max())
        else:
            assert 1 <= one["dense_rank"] <= len(dense)
            assert (one["lexical_rank"] == 0) == (lexical[i] == 0)


# ---- toolcrib search --explain -------------------------------------------------------------------


def test_cli_search_explain(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``toolcrib search QUERY --explain`` on a persisted index of the real time server."""
    cfg = tmp_path / "toolcrib.toml"
    cfg.write_text(
        f"""
[index]
path = "{tmp_path / "index"}"
[servers.time]
command = "{sys.executable}"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
"""
    )
    assert main(["--config", str(cfg), "index"]) == 0
    capfd.readouterr()
    assert main(["--config", str(cfg), "search", "what time is it in Tokyo", "--json", "--explain"]) == 0
    rows = json.loads(capfd.readouterr().out)
    assert rows[0]["name"] == "time__get_current_time"
    for row in rows:
        assert round(compose(row["parts"]), 4) == row["score"]
        assert {"dense", "lexical", "dense_term", "lexical_term"} <= set(row["parts"])
    assert main(["--config", str(cfg), "search", "what time is it in Tokyo", "--explain"]) == 0
    out = capfd.readouterr().out
    assert "parts" in out and f"{DEFAULT_FUSION.dense_weight:.2f} x dense" in out
    assert main(["--config", str(cfg), "search", "what time is it in Tokyo", "--json"]) == 0
    assert all("parts" not in row for row in json.loads(capfd.readouterr().out))
