"""The Redactor against the shapes a leak takes (the attack benchmark's findings are regression cases)."""

from __future__ import annotations

import json
import urllib.parse

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from toolcrib.gateway.trust.redaction import INVISIBLE, REDACTED, Redactor

SECRET = 'p@ss/W0rd+"Q"~9z'
IGNORABLE = [
    "\u00ad",
    "\u200b",
    "\u2060",
    "\u3164",
    "\ufe0f",
    "\ufeff",
    "\uffa0",
    "\U0001bca1",
    "\U0001d175",
    "\U000e0041",
]


def test_every_default_ignorable_range_is_skipped() -> None:
    r = Redactor([SECRET])
    for ch in IGNORABLE:
        assert INVISIBLE.fullmatch(ch)
        split = SECRET[:3] + ch + SECRET[3:]
        assert r.scrub(f"<{split}>") == f"<{REDACTED}>", repr(ch)


def test_json_escaped_copies_inside_values_are_scrubbed() -> None:
    r = Redactor([SECRET])
    escaped = json.dumps(SECRET)[1:-1]  # p@ss/W0rd+\"Q\"~9z as text inside a value
    out = r.scrub_json({"content": [{"type": "text", "text": f"x {escaped} y"}], escaped: 1})
    assert SECRET not in json.dumps(out) and escaped not in json.dumps(out, ensure_ascii=False)


def test_url_encodings_with_and_without_safe_slash() -> None:
    r = Redactor([SECRET])
    everything = "".join(f"%{b:02x}" for b in SECRET.encode())
    for form in (
        urllib.parse.quote(SECRET),
        urllib.parse.quote(SECRET, safe=""),
        urllib.parse.quote_plus(SECRET),
        everything,
    ):
        assert r.scrub(f"?t={form}&") == f"?t={REDACTED}&", form
        assert r.scrub(f"?t={form.lower()}&") == f"?t={REDACTED}&", form


@settings(max_examples=1000)
@given(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=6, max_size=24),
    st.lists(st.tuples(st.integers(0, 30), st.sampled_from(IGNORABLE)), max_size=4),
    st.sampled_from([str.upper, str.lower, str.swapcase, lambda s: s]),
    st.text(max_size=10),
    st.text(max_size=10),
)
def test_a_secret_in_any_case_split_by_invisibles_never_survives(
    secret: str, inserts: list[tuple[int, str]], case: object, before: str, after: str
) -> None:
    assume(secret.lower() not in REDACTED.lower())  # the marker itself is not a leak
    r = Redactor([secret])
    leaked = case(secret)  # type: ignore[operator]
    for pos, ch in sorted(inserts, reverse=True):
        pos = min(pos, len(leaked))
        leaked = leaked[:pos] + ch + leaked[pos:]
    out = r.scrub(before + leaked + after)
    assert REDACTED in out
    visible = INVISIBLE.sub("", out).lower()
    assert secret.lower() not in visible
    assert r.scrub_json({"k": [before + leaked + after]}) == {"k": [out]}


# Any code point, lone surrogates included: a client's JSON may carry "\ud800" (json.loads accepts
# it), and os.environ holds undecodable bytes as surrogates; the matcher itself takes UTF-8 only.
_ANY = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())


@settings(max_examples=1000)
@given(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=6, max_size=24),
    st.text(_ANY, max_size=12),
    st.text(_ANY, max_size=12),
)
def test_text_with_lone_surrogates_is_scrubbed_not_raised(secret: str, before: str, after: str) -> None:
    assume(secret.lower() not in REDACTED.lower())
    r = Redactor([secret])
    text = before + secret + after
    out = r.scrub(text)
    assert secret.lower() not in INVISIBLE.sub("", out).lower()
    assert r.scrub_json({before: [text, after]}) == {r.scrub(before): [out, r.scrub(after)]}
    assert r.scrub(before) == before or REDACTED in r.scrub(before)  # nothing else is changed


@settings(max_examples=300)
@given(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=4, max_size=12),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
    st.integers(0, 12),
)
def test_a_secret_holding_a_lone_surrogate_is_registered_and_scrubbed(base: str, surrogate: str, at: int) -> None:
    secret = base[:at] + surrogate + base[at:]  # e.g. a variable read from os.environ with surrogateescape
    r = Redactor([secret])
    assume(len(r))  # long enough once invisible characters are dropped
    out = r.scrub(f"<{secret}>")
    assert REDACTED in out
    assert secret not in out


def _spans_by_definition(r: Redactor, text: str) -> list[tuple[int, int]]:
    """The matching rule written out plainly (every text the slow way: invisible characters dropped
    with an index back, lone surrogates as U+FFFD, case folded one character at a time), the oracle
    for the fast paths of ``Redactor._spans`` (ASCII text, text with neither kind of character)."""
    kept = [i for i, c in enumerate(text) if not INVISIBLE.fullmatch(c)]
    folded = []
    for i in kept:
        c = "\ufffd" if "\ud800" <= text[i] <= "\udfff" else text[i]
        low = c.lower()
        folded.append(low if len(low) == 1 else c)
    assert r._automaton is not None
    spans: list[tuple[int, int]] = []
    for _form, start, end in sorted(
        r._automaton.find_matches_as_indexes("".join(folded), overlapping=True), key=lambda m: m[1]
    ):
        start, end = kept[start], kept[end - 1] + 1
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


_SECRETS = ["sk-Test-0123456789", "İstanbul-ẞecret", 'p@ss/W0rd+"Q"~9z']
_PIECES = st.one_of(
    st.sampled_from(_SECRETS),
    st.sampled_from([s.upper() for s in _SECRETS] + [s.lower() for s in _SECRETS]),
    st.text(st.characters(max_codepoint=127), max_size=8),
    st.text(_ANY, max_size=4),
    st.sampled_from(IGNORABLE),
)


@settings(max_examples=1000)
@given(st.lists(_PIECES, max_size=8))
def test_spans_are_the_rule_whatever_path_the_text_takes(pieces: list[str]) -> None:
    """ASCII text, text without invisible characters or surrogates, and the rest take different
    paths through ``_spans``; each finds exactly what the rule written out plainly finds."""
    r = Redactor(_SECRETS)
    text = "".join(pieces)
    assert r._spans(text) == _spans_by_definition(r, text)
