"""Token counting: exact offline encodings, and the reported bytes/4 fallback."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from toolcrib import tokens


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    tokens._load.cache_clear()
    yield
    tokens._load.cache_clear()


@pytest.mark.parametrize("encoding", tokens.ENCODINGS)
def test_both_encodings_are_exact_offline(encoding: str) -> None:
    info = tokens.tokenizer_info(encoding)
    assert info.exact
    assert info.method.startswith("quicktok")
    assert encoding in info.describe()
    assert tokens.count_tokens("hello world", encoding) == 2
    assert tokens.count_tokens("", encoding) == 0


def test_matches_tiktoken_reference_counts() -> None:
    # tiktoken's cl100k_base ids for this text are [83, 1609, 5963, 374, 2294, 0].
    assert tokens.count_tokens("tiktoken is great!", "cl100k_base") == 6


def test_encodings_differ_on_non_english_text() -> None:
    text = "获取指定城市的天气预报。" * 10
    assert tokens.count_tokens(text, "o200k_base") < tokens.count_tokens(text, "cl100k_base")


def test_special_token_text_counts_as_ordinary_text() -> None:
    assert tokens.count_tokens("<|endoftext|>", "o200k_base") > 1


def test_unknown_encoding_falls_back_to_bytes_and_says_so(fresh_cache: None) -> None:
    info = tokens.tokenizer_info("no_such_encoding")
    assert not info.exact
    assert info.method == tokens.FALLBACK
    assert "bytes/4" in info.describe()
    assert tokens.count_tokens("abcdefgh", "no_such_encoding") == 2
    assert tokens.count_tokens("abcdefghi", "no_such_encoding") == 3
    assert tokens.count_tokens("é", "no_such_encoding") == 1


def test_missing_quicktok_falls_back(monkeypatch: pytest.MonkeyPatch, fresh_cache: None) -> None:
    monkeypatch.setitem(sys.modules, "quicktok", None)
    info = tokens.tokenizer_info("o200k_base")
    assert not info.exact
    assert "quicktok not importable" in info.reason
    assert tokens.count_tokens("x" * 40) == 10


def test_count_many() -> None:
    assert tokens.count_many(["hello world", ""]) == [2, 0]
