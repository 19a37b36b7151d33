"""Per-query normalisation of the dense scores (issue 14: one fusion weight for MiniLM and e5) and
the server BM25 side. Property tests on :func:`toolcrib.index.fusion.normalize_scores` and the
fusion arithmetic; the real MiniLM for the server BM25 ranking (e5's rankings: test_multilingual.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.index.conftest import CATALOG
from toolcrib.index.documents import ServerDoc, ToolDoc
from toolcrib.index.embedder import FastEmbedEmbedder
from toolcrib.index.fusion import DEFAULT_FUSION, NORMALIZATIONS, Fusion, fuse, normalize_scores
from toolcrib.index.search import ToolIndex, compose, score_parts

_any32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
_scores = st.one_of(
    hnp.arrays(np.float32, st.integers(0, 80), elements=_any32),
    hnp.arrays(np.float32, st.integers(1, 80), elements=st.floats(-1.0, 1.0, width=32)),
    # all equal, and near-equal (e5's narrow spread)
    st.builds(lambda v, n: np.full(n, v, dtype=np.float32), _any32, st.integers(1, 80)),
    hnp.arrays(np.float32, st.integers(1, 80), elements=st.floats(0.75, 0.75006103515625, width=32)),
)
_methods = st.sampled_from([m for m in NORMALIZATIONS if m != "none"])


@settings(max_examples=1500, deadline=None)
@given(_scores, _methods)
def test_normalisation_is_bounded_finite_and_monotone(scores: np.ndarray, method: str) -> None:
    out = normalize_scores(scores, method)
    assert out.shape == scores.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert ((out >= -1.0) & (out <= 1.0)).all()
    order = np.argsort(scores, kind="stable")
    assert (np.diff(out[order]) >= 0).all()  # a higher score never gets a lower value
    if len(scores) and scores.max() == scores.min():
        assert (out == 0).all()  # all equal (a single candidate too): no signal, no NaN
    spread = float(scores.max()) - float(np.median(scores.astype(np.float64))) if len(scores) else 0.0
    if method == "median_max" and spread > 1e-6:  # a spread under 1e-9 counts as all equal
        assert out[int(np.argmax(scores))] == 1.0


@settings(max_examples=1000, deadline=None)
@given(
    hnp.arrays(np.float32, 12, elements=st.floats(-1.0, 1.0, width=32)),
    hnp.arrays(np.float32, 12, elements=st.one_of(st.just(0.0), st.floats(0.0, 40.0, width=32))),
    _methods,
    st.floats(0.0, 1.0),
)
def test_normalised_parts_recompose_fuse(dense: np.ndarray, lexical: np.ndarray, method: str, w: float) -> None:
    fusion = Fusion(dense_weight=w, normalize=method)
    fused = fuse(dense, lexical, fusion)
    parts = score_parts(dense, lexical, fusion)
    assert np.array_equal(parts["dense_norm"], normalize_scores(dense, method))
    for i in range(len(dense)):
        one = {name: float(values[i]) for name, values in parts.items()}
        assert compose(one) == float(fused[i])


def test_normalisation_makes_the_weight_scale_free() -> None:
    """The same ranking whatever the spread of the cosines: e5-like narrow cosines (x 0.1 + 0.8) rank
    like MiniLM-like wide ones, while raw cosines let BM25 take over."""
    rng = np.random.default_rng(0)
    wide = rng.uniform(-0.1, 0.7, 50).astype(np.float32)
    narrow = (0.8 + 0.1 * wide).astype(np.float32)
    lexical = rng.uniform(0, 10, 50).astype(np.float32)
    normed = Fusion(dense_weight=0.8, normalize="median_max")
    assert np.array_equal(np.argsort(-fuse(wide, lexical, normed)), np.argsort(-fuse(narrow, lexical, normed)))
    raw = Fusion(dense_weight=0.8)
    assert not np.array_equal(np.argsort(-fuse(wide, lexical, raw)), np.argsort(-fuse(narrow, lexical, raw)))
    with pytest.raises(ValueError, match="normalize must be one of"):
        Fusion(normalize="softmax")
    with pytest.raises(ValueError, match="server_lexical"):
        Fusion(server_lexical=1.5)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> FastEmbedEmbedder:
    return FastEmbedEmbedder(cache_dir=tmp_path_factory.mktemp("cache"))


def test_server_bm25_finds_the_server_a_word_names(minilm: FastEmbedEmbedder) -> None:
    """A word only the server's own description has ("calendar") reaches its tools through BM25 over
    the server documents, and the explain parts still add up to the score."""
    docs = [
        *CATALOG,
        ToolDoc(key="cal__list_items", server="cal", name="list_items", description="List items.", input_schema={}),
        ToolDoc(key="cal__add_item", server="cal", name="add_item", description="Add an item.", input_schema={}),
    ]
    index = ToolIndex(None, minilm, fusion=replace(DEFAULT_FUSION, server_weight=0.5, server_lexical=1.0))
    index.sync(docs, server_docs={"cal": ServerDoc("cal", "Zorblax", "Zorblax appointments and meetings")})
    lex = index._snap.servers.lexical_scores("zorblax")
    names = [d.server for d in index._snap.servers.docs]
    assert lex[names.index("cal")] > 0 and lex.sum() == lex[names.index("cal")]
    hits = index.search("zorblax list items", limit=3, explain=True)
    assert hits[0].key == "cal__list_items"
    for hit in hits:
        assert hit.parts is not None and round(compose(hit.parts), 6) == hit.score
    assert index._snap.servers.lexical_scores("nothing matches this").sum() == 0

    # a later sync re-tokenizes only the server texts that changed (at the first search after it)
    from toolcrib.index import store

    calls: list[str] = []
    real = store.tokenize

    def counting(text: str) -> list[str]:
        calls.append(text)
        return real(text)

    new = ToolDoc(key="new__ping", server="new", name="ping", description="Ping a host.", input_schema={})
    index.sync([*docs, new])
    original = store.tokenize
    store.tokenize = counting
    try:
        index.search("zorblax ping", limit=3)
    finally:
        store.tokenize = original
    assert len(calls) == 1 and calls[0].startswith("new")
