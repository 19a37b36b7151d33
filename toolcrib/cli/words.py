"""Counted nouns in CLI output: ``1 problem``, ``2 problems``."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``"N noun"`` with the noun in the plural unless ``n`` is 1 (``plural`` default: ``noun + "s"``)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
