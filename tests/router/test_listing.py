"""Paging through upstream listings: bounded, loop-free, duplicate-free, whatever the pages say."""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.router.listing import all_pages

SCHEMA: dict[str, Any] = {"type": "object"}


def _page(names: list[str], cursor: str | None) -> types.ListToolsResult:
    tools = [types.Tool(name=n, input_schema=SCHEMA) for n in names]
    return types.ListToolsResult(tools=tools, next_cursor=cursor)


PAGES = st.lists(
    st.tuples(st.lists(st.sampled_from("abcdefgh"), max_size=6), st.one_of(st.none(), st.sampled_from("xyz"))),
    min_size=1,
    max_size=8,
)


@settings(max_examples=1000)
@given(pages=PAGES, cap=st.integers(1, 10), max_items=st.integers(1, 10))
def test_all_pages_is_bounded_and_distinct(pages: list[tuple[list[str], str | None]], cap: int, max_items: int) -> None:
    """Any server behaviour (cursors that repeat, pages that repeat names, endless paging) ends
    within ``cap`` fetches and yields at most ``max_items`` distinct names, first occurrence first."""
    calls: list[str | None] = []
    warnings: list[str] = []

    async def fetch(cursor: str | None) -> types.ListToolsResult:
        calls.append(cursor)
        names, nxt = pages[min(len(calls) - 1, len(pages) - 1)]
        return _page(names, nxt)

    async def main() -> list[Any]:
        return await all_pages(fetch, "tools", cap, max_items=max_items, warn=lambda w, m: warnings.append(w))

    items = anyio.run(main)
    names = [t.name for t in items]
    assert len(calls) <= cap
    assert len(names) == len(set(names)) <= max_items
    non_none = [c for c in calls if c is not None]
    assert len(non_none) == len(set(non_none))  # never the same cursor twice
    fetched_in_order: list[str] = []
    for i in range(len(calls)):
        fetched_in_order += pages[min(i, len(pages) - 1)][0]
    assert names == list(dict.fromkeys(fetched_in_order))[: len(names)]


def test_endless_fresh_cursors_stop_at_the_cap_with_one_warning() -> None:
    warnings: list[str] = []

    async def fetch(cursor: str | None) -> types.ListToolsResult:
        n = int(cursor or 0) + 1
        return _page([f"t{n}"], str(n))

    async def main() -> list[Any]:
        return await all_pages(fetch, "tools", 50, warn=lambda w, m: warnings.append(w))

    assert len(anyio.run(main)) == 50
    assert warnings == ["tools-pages"]


def test_a_huge_page_is_cut_at_max_items() -> None:
    warnings: list[str] = []

    async def fetch(cursor: str | None) -> types.ListToolsResult:
        return _page([f"t{i}" for i in range(5000)], None)

    async def main() -> list[Any]:
        return await all_pages(fetch, "tools", max_items=1000, warn=lambda w, m: warnings.append(w))

    assert len(anyio.run(main)) == 1000
    assert warnings == ["tools-items"]
