"""The ``Accept`` parser (:mod:`toolcrib.gateway.edge.accept`): hypothesis properties, 1000 examples each."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.gateway.edge.accept import accepted, response_mode

PROPS = settings(max_examples=1000, deadline=None, database=None)
RANGES = st.sampled_from(
    [
        "application/json",
        "text/event-stream",
        "*/*",
        "application/*",
        "text/*",
        "text/html",
        "image/png",
        "APPLICATION/JSON",
    ]
)
QS = st.sampled_from(["", ";q=0", ";q=0.0", ";q=1", ";q=0.5", ";q=bogus", ";charset=utf-8", ";q=2", ' ; q="0"'])
ELEMENTS = st.tuples(RANGES, QS).map(lambda t: t[0] + t[1])


def _q(suffix: str) -> float:
    """The reference reading of one element's quality."""
    for part in suffix.split(";"):
        name, eq, value = part.partition("=")
        if eq and name.strip() == "q":
            try:
                q = float(value.strip().strip('"'))
            except ValueError:
                return 1.0
            return q if 0 <= q <= 1 else 1.0
    return 1.0


def _reference(elements: list[tuple[str, str]], want: str) -> bool:
    """The most specific matching range decides; among equally specific ones the highest q."""
    kind = want.split("/")[0]
    for specific in (want, f"{kind}/*", "*/*"):
        qs = [_q(suffix) for media, suffix in elements if media.lower() == specific]
        if qs:
            return max(qs) > 0
    return False


@PROPS
@given(st.text(max_size=60) | st.lists(st.text(",;=/*qa", max_size=8), max_size=6).map(",".join))
def test_never_raises_on_any_header(header: str) -> None:
    json_ok, sse_ok = accepted(header)
    assert isinstance(json_ok, bool) and isinstance(sse_ok, bool)
    assert response_mode(header) in ("either", "json", "sse", "none")


@PROPS
@given(st.lists(st.tuples(RANGES, QS), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_matches_the_reference_and_ignores_order(elements: list[tuple[str, str]], rnd: Any) -> None:
    header = ", ".join(media + suffix for media, suffix in elements)
    want = (_reference(elements, "application/json"), _reference(elements, "text/event-stream"))
    assert accepted(header) == want, header
    shuffled = list(elements)
    rnd.shuffle(shuffled)
    assert accepted(", ".join(m + q for m, q in shuffled)) == want


@PROPS
@given(st.lists(ELEMENTS, max_size=4))
def test_an_explicit_full_quality_type_is_always_accepted(rest: list[str]) -> None:
    assert accepted(", ".join([*rest, "application/json"]))[0]
    assert accepted(", ".join(["text/event-stream;q=1", *rest]))[1]


def test_examples() -> None:
    assert response_mode(None) == response_mode("") == response_mode("*/*") == "either"
    assert response_mode("application/json, text/event-stream") == "either"
    assert response_mode("application/json") == "json"
    assert response_mode("text/event-stream") == "sse"
    assert response_mode("text/event-stream;q=0, */*") == "json"
    assert response_mode("text/html") == "none"
