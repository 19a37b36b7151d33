"""How the audit log turns text into what it stores and hashes, whatever the text holds.

What reaches the log are Python strings that need not be valid Unicode: a lone surrogate
(U+D800..U+DFFF, e.g. from ``json.loads`` of ``"\\ud800"``), which UTF-8 cannot encode, is refused
from clients by the HTTP edge's parser but may still come from other paths, and PostgreSQL cannot
store U+0000 in a text column. So, the same way in every writer, in ``verify``
and in every hash or HMAC:

- :func:`escape_surrogates`: every surrogate code point becomes its JSON escape ``\\udxxx``
  (six ASCII characters); used on the canonical JSON that hashes and HMACs are computed over
  (:func:`~toolcrib.gateway.audit.schema.canonical_json`, where it is a valid JSON escape that
  parses back to the same code point) and on every HMAC message (:func:`utf8`);
- :func:`storable`: the same, and U+0000 as ``\\u0000`` too; applied to every text column of a row
  or completion before it is redacted, hashed and stored, so both backends store the same row.

Both are the identity on text without those code points, so rows written before them keep their
hashes and HMACs (such text could not be written at all before: the write raised
``UnicodeEncodeError``). Spec sources: RFC 8259 section 7 (JSON ``\\uXXXX`` escapes), RFC 3629
section 3 (UTF-8 excludes U+D800..U+DFFF), PostgreSQL "Character Types" (no NUL in text).
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def escape_surrogates(text: str) -> str:
    """``text`` with each surrogate code point (U+D800..U+DFFF) written as ``\\udxxx``; ``text``
    itself when it holds none. The result always encodes as UTF-8."""
    return text if text.isascii() or not _SURROGATE.search(text) else _SURROGATE.sub(_escape, text)


def storable(text: str) -> str:
    """``text`` as a text column of either backend can hold it: surrogates and U+0000 written as
    ``\\uXXXX``; ``text`` itself when it holds none."""
    return _UNSTORABLE.sub(_escape, text) if _UNSTORABLE.search(text) else text


def utf8(text: str) -> bytes:
    """The bytes an HMAC or hash covers for ``text``: UTF-8 of :func:`escape_surrogates` (never raises)."""
    return escape_surrogates(text).encode()
