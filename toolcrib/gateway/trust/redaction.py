"""Redaction: known secret values never leave the gateway, whatever shape a leak takes.

Every upstream secret resolved at the upstream edge is registered with the one :class:`Redactor`;
every upstream-to-client message (results, errors, log and progress notifications, sampling and
elicitation requests, resource contents, prompt messages, completion values), every audit row and
every log record is scrubbed with it.

Matching covers the encodings a leak is likely to take (:func:`secret_forms`: raw, JSON-escaped,
URL-encoded, hex, base64 at each alignment) and, on top of each, **any letter case** and copies
**split by invisible characters** (zero-width space/joiners, word joiner, BOM, soft hyphen...). A
match is replaced whole by :data:`REDACTED`, the invisible characters inside it included.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import ahocorasick_rs
from pydantic import BaseModel

MIN_SECRET_LENGTH = 4
"""Shorter secrets are not registered with the :class:`Redactor`: they would scrub ordinary text."""
REDACTED = "[REDACTED]"
_INVISIBLE_CLASS = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
INVISIBLE = re.compile(f"[{_INVISIBLE_CLASS}]")
"""Every Unicode ``Default_Ignorable_Code_Point`` (DerivedCoreProperties.txt): characters that render
as nothing, so a secret split by them still reads as the secret; they are skipped when matching."""
_URLSAFE = str.maketrans("+/", "-_")
_SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone surrogate: valid in a Python ``str`` (``json.loads`` of ``"\\ud800"``, ``os.environ`` under
``surrogateescape``) but not encodable as UTF-8, which the matcher needs."""
_UNUSUAL = re.compile(f"[{_INVISIBLE_CLASS}\ud800-\udfff]")
"""An invisible character or a lone surrogate: text without any is matched as it is, case-folded
(one regex pass instead of two; most text has neither)."""
_ENCODE_ERRORS = "surrogatepass"
"""How a secret's lone surrogates are encoded into its byte forms (a secret is ours to encode)."""
M = TypeVar("M", bound=BaseModel)


def secret_forms(secret: str) -> set[str]:
    """The encodings of ``secret`` a leak is likely to take: raw, JSON-escaped, URL-encoded, hex,
    and base64 (standard and URL-safe, padded and not, and at each of the three byte alignments it
    can have inside a longer encoded string such as ``Basic base64(user:secret)``)."""
    raw = secret.encode("utf-8", _ENCODE_ERRORS)
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        urllib.parse.quote(secret, safe="", errors=_ENCODE_ERRORS),
        urllib.parse.quote(secret, errors=_ENCODE_ERRORS),  # the common default, which leaves "/" as is
        urllib.parse.quote_plus(secret, safe="", errors=_ENCODE_ERRORS),
        urllib.parse.quote_plus(secret, errors=_ENCODE_ERRORS),
        "".join(f"%{b:02X}" for b in raw),  # every byte percent-encoded, as some encoders do
        binascii.hexlify(raw).decode(),
    }
    for prefix_len in range(3):
        encoded = base64.b64encode(b"\0" * prefix_len + raw).decode()
        total_bits = 8 * (prefix_len + len(raw))
        start = -(-8 * prefix_len // 6)
        middle = encoded[start : total_bits // 6]
        if prefix_len == 0:
            forms.add(encoded)
            forms.add(encoded.translate(_URLSAFE))
        forms.add(middle)
        forms.add(middle.translate(_URLSAFE))
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def _fold(text: str) -> str:
    """Lower-case ``text`` keeping its length (characters whose lower case is longer stay as they are),
    each lone surrogate as U+FFFD (one code point for one, so match offsets stay those of ``text``)."""
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
    return _lower(text)


def _lower(text: str) -> str:
    """Lower-case ``text`` keeping its length (characters whose lower case is longer stay as they are)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(lc := c.lower()) != 1 else lc for c in text)


class Redactor:
    """Scrubs every registered secret, in each of :func:`secret_forms`, any case, and split by invisible
    characters, from text and JSON values.

    One Aho-Corasick automaton over all (case-folded) forms is rebuilt on :meth:`add` and swapped
    atomically, so :meth:`scrub` is one linear pass whatever the number of secrets; overlapping matches
    are merged, so two secrets that overlap in the text are both removed whole. Secrets shorter than
    :data:`MIN_SECRET_LENGTH` are not registered: they would match ordinary words.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._forms: set[str] = set()
        self._lock = threading.Lock()
        self._automaton: ahocorasick_rs.AhoCorasick | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Register a secret value (idempotent)."""
        if len(INVISIBLE.sub("", secret)) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            new = {_fold(INVISIBLE.sub("", f)) for f in secret_forms(secret)} - self._forms
            if not new:
                return
            self._forms |= new
            self._automaton = ahocorasick_rs.AhoCorasick(sorted(self._forms))

    def __len__(self) -> int:
        return len(self._forms)

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """Merged ``[start, end)`` spans of ``text`` holding a registered form."""
        automaton = self._automaton
        if automaton is None or not text:
            return []
        index: list[int] | None = None
        if text.isascii():  # O(1) in CPython: no invisible character, no surrogate, lower() keeps length
            view = text.lower()
        elif _UNUSUAL.search(text) is None:
            view = _lower(text)
        else:
            if INVISIBLE.search(text):
                index = [i for i, c in enumerate(text) if not INVISIBLE.fullmatch(c)]
                text = "".join(text[i] for i in index)
            view = _fold(text)
        matches = automaton.find_matches_as_indexes(view, overlapping=True)
        spans: list[tuple[int, int]] = []
        for _form, start, end in sorted(matches, key=lambda m: m[1]):
            if index is not None:
                start, end = index[start], index[end - 1] + 1
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
        return spans

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of a registered form replaced by ``[REDACTED]``."""
        spans = self._spans(text)
        if not spans:
            return text
        parts = []
        last = 0
        for start, end in spans:
            parts += [text[last:start], REDACTED]
            last = end
        parts.append(text[last:])
        return "".join(parts)

    def scrub_json(self, obj: Any) -> Any:
        """A JSON-like value with every string (keys included) scrubbed: ``obj`` itself when its
        serialization holds no registered form (one pass), else a scrubbed deep copy."""
        if self._automaton is None:
            return obj
        text = "\x00".join(_strings(obj))  # the strings as they are, not JSON-escaped a second time
        return self._walk(obj) if self._spans(text) else obj

    def scrub_model(self, model: M) -> M:
        """A pydantic model (a result, a request's params, a listed tool) with every registered form
        scrubbed: ``model`` itself when it holds none, else a re-validated scrubbed copy."""
        if self._automaton is None:
            return model
        data = model.model_dump(by_alias=True, mode="json", exclude_none=True)
        scrubbed = self.scrub_json(data)
        return model if scrubbed is data else type(model).model_validate(scrubbed)

    def _walk(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.scrub(obj)
        if isinstance(obj, Mapping):
            return {self.scrub(str(k)): self._walk(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self._walk(v) for v in obj]
        return obj


def _strings(obj: Any) -> Iterator[str]:
    """Every string in a JSON-like value, keys included, depth first."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _strings(value)


class RedactingFilter(logging.Filter):
    """Scrub known secret values from every log record before any handler sees it."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if len(self.redactor):
            record.msg = self.redactor.scrub(record.getMessage())
            record.args = None
        return True


def install_log_redaction(redactor: Redactor) -> None:
    """Add a :class:`RedactingFilter` to every root handler (once)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(redactor))
