"""Lexical side of the index: a language-aware tokenizer and a BM25 index (bm25s) over it.

The tokenizer splits identifiers (``get_current_time``, ``getCurrentTime``), lowercases, drops
English stopwords, stems English words (Snowball, via ``py_rust_stemmers`` when available) and
turns runs of CJK characters into unigrams and bigrams, so Chinese, Japanese and Korean text
matches without a dictionary.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from functools import lru_cache

import bm25s
import numpy as np
import numpy.typing as npt

logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets DEBUG on its logger at import

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_CJK = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uac00-\ud7af"  # hangul syllables
)
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+", re.UNICODE)
_CJK_RUN = re.compile(rf"[{_CJK}]")

_STOPWORD_TEXT = """
a an and are as at be but by can could do does for from get has have how i if in into is it its me my
of on or our please s so some such than that the their them then there these they this to us use using
via want was we what when where which who will with would you your
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _load_stemmer() -> Callable[[str], str]:
    try:
        from py_rust_stemmers import SnowballStemmer  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - shipped with fastembed
        return lambda word: word
    stemmer = SnowballStemmer("english")
    return lru_cache(maxsize=65536)(stemmer.stem_word)


_stem = _load_stemmer()


def tokenize(text: str) -> list[str]:
    """Index/query tokens for ``text`` (see module docstring)."""
    out: list[str] = []
    for match in _TOKEN.finditer(_CAMEL_BOUNDARY.sub(" ", text)):
        piece = match.group()
        if _CJK_RUN.match(piece):
            out.extend(piece)
            out.extend(piece[i : i + 2] for i in range(len(piece) - 1))
            continue
        word = piece.lower()
        if word in STOPWORDS or (len(word) == 1 and not word.isdigit()):
            continue
        out.append(_stem(word))
    return out


@lru_cache(maxsize=1024)
def query_tokens(query: str) -> tuple[str, ...]:
    """:func:`tokenize` for queries, memoised (the same few queries recur under load)."""
    return tuple(tokenize(query))


class LexicalIndex:
    """An immutable BM25 index over a fixed list of tokenized documents (row i = document i)."""

    def __init__(self, corpus: Sequence[Sequence[str]], *, k1: float = 1.2, b: float = 0.75) -> None:
        self.size = len(corpus)
        self._bm25: bm25s.BM25 | None = None
        if self.size and any(corpus):
            bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
            bm25.index([list(tokens) or [""] for tokens in corpus], show_progress=False)
            self._bm25 = bm25

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> LexicalIndex:
        """Tokenize ``texts`` with :func:`tokenize` and index them."""
        return cls([tokenize(t) for t in texts])

    def scores(self, query: str) -> npt.NDArray[np.float32]:
        """BM25 score of every document for ``query`` (zeros when nothing matches)."""
        tokens = list(query_tokens(query))
        if self._bm25 is None or not tokens:
            return np.zeros(self.size, dtype=np.float32)
        ids = self._bm25.get_tokens_ids(tokens)
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)
