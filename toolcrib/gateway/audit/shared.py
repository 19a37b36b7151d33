"""What both audit backends (SQLite, PostgreSQL) share: building a row, query filters, decoding.

- :func:`build_row`: an :class:`~toolcrib.gateway.audit.events.AuditEvent` as the dict of
  :data:`~toolcrib.gateway.audit.schema.COLUMNS` that is stored and hashed (arguments redacted,
  HMAC'd and truncated; ``error``, ``query``, ``target`` redacted), without ``seq``, ``prev_hash``
  and ``hash``, which the backend fills under its lock;
- :func:`build_completion`: a :class:`~toolcrib.gateway.audit.events.Completion` as the columns its
  ``UPDATE`` sets, ``seal`` included (HMAC under the seal key over the row's hash and those columns);
- :func:`filters`: the ``query`` filters as ``(column, op, value)`` with ``op`` one of ``=``, ``>=``,
  ``glob`` (SQLite ``GLOB`` semantics); each backend renders them in its own SQL;
- :func:`glob_to_regex`: a SQLite ``GLOB`` pattern as an anchored PostgreSQL regular expression (ARE);
- :func:`decode`: a stored row with ``arguments`` and ``results`` parsed back from JSON.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from toolcrib.errors import AuditError
from toolcrib.gateway.audit.events import AuditEvent, AuditRowError, Completion
from toolcrib.gateway.audit.keys import mac
from toolcrib.gateway.audit.schema import COLUMNS, COMPLETION, canonical_json, seal_message
from toolcrib.gateway.audit.text import storable

if TYPE_CHECKING:
    from toolcrib.gateway.trust.secrets import Redactor

MAX_ARGUMENT_CHARS = 65536
"""Redacted arguments longer than this are truncated in the row (the HMAC covers the originals)."""

NO_KEY = "this audit log was opened without an HMAC key; it cannot record calls"


def args_hmac(key: bytes | None, arguments: Mapping[str, Any]) -> str:
    """HMAC-SHA256 (hex) of the canonical JSON of ``arguments`` under the audit key ``key``.
    Raises :class:`AuditError` when ``key`` is None."""
    if key is None:
        raise AuditError(NO_KEY)
    return mac(key, canonical_json(arguments))


def scrub(redactor: Redactor | None, value: Any) -> Any:
    """``value`` with every known secret replaced (unchanged without a redactor)."""
    return redactor.scrub_json(value) if redactor is not None else value


def build_row(event: AuditEvent, key: bytes | None, redactor: Redactor | None) -> dict[str, Any]:
    """The stored columns of ``event`` (``seq``, ``prev_hash`` and ``hash`` still None).

    ``ts`` defaults to now (seconds since the epoch, float). Every text column is made
    :func:`~toolcrib.gateway.audit.text.storable` (lone surrogates and U+0000 as ``\\uXXXX``)
    before it is redacted; the arguments' HMAC covers their canonical JSON
    (:func:`~toolcrib.gateway.audit.schema.canonical_json`). Raises :class:`AuditError` when the
    event carries arguments and ``key`` is None (they cannot be recorded without their HMAC), and
    :class:`~toolcrib.gateway.audit.events.AuditRowError` when its content cannot be recorded
    (e.g. arguments that do not serialise)."""
    try:
        return _build_row(event, key, redactor)
    except AuditError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, UnicodeError) as exc:
        what = event.tool or event.target or event.method or "-"
        raise AuditRowError(f"cannot record the {event.kind} row for {storable(what)!r}: {exc}") from None


def _build_row(event: AuditEvent, key: bytes | None, redactor: Redactor | None) -> dict[str, Any]:
    row: dict[str, Any] = {k: getattr(event, k, None) for k in COLUMNS}
    row["ts"] = float(event.ts if event.ts is not None else time.time())
    if event.request_id is not None:
        row["request_id"] = str(event.request_id)
    if event.latency_ms is not None:
        row["latency_ms"] = float(event.latency_ms)
    _make_storable(row)
    if event.arguments is not None:
        if key is None:
            raise AuditError(NO_KEY)
        arguments = dict(event.arguments)
        original = canonical_json(arguments)
        row["args_hmac"] = mac(key, original)
        scrubbed = scrub(redactor, arguments)  # the redactor reads any str, lone surrogates included
        text = original if scrubbed is arguments else canonical_json(scrubbed)
        row["args_stored"] = "full" if text == original else "redacted"
        if len(text) > MAX_ARGUMENT_CHARS:
            text, row["args_stored"] = text[:MAX_ARGUMENT_CHARS] + "…", "truncated"
        row["arguments"] = text
    if event.results is not None:
        row["results"] = canonical_json(list(event.results))
    for name in ("query", "error", "target"):
        if row[name] is not None:
            row[name] = scrub(redactor, row[name])
    return row


def _make_storable(columns: dict[str, Any]) -> None:
    """Every text value of ``columns`` made :func:`storable`, in place."""
    for name, value in columns.items():
        if isinstance(value, str):
            columns[name] = storable(value)


def build_completion(
    done: Completion, digest: str, seal_key: bytes | None, redactor: Redactor | None
) -> dict[str, Any]:
    """The columns ``done`` sets in the ``call`` row whose hash is ``digest``: every
    :data:`~toolcrib.gateway.audit.schema.COMPLETION` column (text made
    :func:`~toolcrib.gateway.audit.text.storable`, ``error`` then redacted, ``completed``
    defaulting to now) and ``seal``. Raises :class:`AuditError` when ``seal_key`` is None and
    :class:`~toolcrib.gateway.audit.events.AuditRowError` when a value cannot be recorded."""
    if seal_key is None:
        raise AuditError(NO_KEY)
    try:
        fields: dict[str, Any] = {c: getattr(done, c) for c in COMPLETION}
        fields["completed"] = float(done.completed if done.completed is not None else time.time()) + 0.0
        if done.latency_ms is not None:
            fields["latency_ms"] = float(done.latency_ms) + 0.0  # + 0.0: no -0.0, which a database may not keep
        _make_storable(fields)
        if fields["error"] is not None:
            fields["error"] = scrub(redactor, fields["error"])
        fields["seal"] = mac(seal_key, seal_message(digest, fields))
    except (ValueError, TypeError, OverflowError, UnicodeError) as exc:
        raise AuditRowError(f"cannot record the completion of row {done.seq}: {exc}") from None
    return fields


def filters(
    *,
    principal: str | None = None,
    tool: str | None = None,
    since: float | None = None,
    outcome: str | None = None,
    kind: str | None = None,
    request_id: str | None = None,
    method: str | None = None,
    decision: str | None = None,
    until: float | None = None,
    before: int | None = None,
) -> list[tuple[str, str, Any]]:
    """The given filters as ``(column, op, value)``; ``op`` is ``=``, ``>=``, ``<`` or ``glob``.

    ``since``/``until``: seconds since the epoch, ``since <= ts < until``; ``before``: a ``seq``
    cursor, rows with ``seq < before`` (the next page of a newest-first listing)."""
    given = (
        ("principal", "=", principal),
        ("tool", "glob", tool),
        ("ts", ">=", since),
        ("ts", "<", until),
        ("outcome", "=", outcome),
        ("kind", "=", kind),
        ("request_id", "=", request_id),
        ("method", "glob", method),
        ("decision", "=", decision),
        ("seq", "<", before),
    )
    return [
        (column, op, storable(value) if isinstance(value, str) else value)
        for column, op, value in given
        if value is not None
    ]


def decode(row: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``row`` with ``arguments`` and ``results`` parsed from JSON where they parse."""
    out = dict(row)
    for key in ("arguments", "results"):
        if isinstance(out.get(key), str):
            with contextlib.suppress(ValueError):
                out[key] = json.loads(out[key])
    return out


def _char(c: str) -> str:
    """``c`` as a PostgreSQL ARE character-entry escape (literal inside and outside brackets)."""
    code = ord(c)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def glob_to_regex(pattern: str) -> str | None:
    """The SQLite ``GLOB`` ``pattern`` as an anchored PostgreSQL ARE (for ``column ~ regex``), or
    None when it can match nothing (an unterminated ``[`` set, or a set that holds no character).

    SQLite's semantics (``patternCompare`` in ``func.c``), case-sensitive: ``*`` any run of
    characters, ``?`` one character, ``[...]`` one character in the set (``[^...]`` not in it; a
    ``]`` right after ``[`` or ``[^`` is a member; ``a-z`` a range by code point, empty when
    reversed; a ``-`` first, last or right after a range is literal); every other character,
    ``\\`` included, stands for itself. Literals are written as ``\\uXXXX`` escapes, so nothing in
    ``pattern`` is ever read as regex syntax."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if out[-1] != ".*":  # a run of stars is one star; thousands of ".*" are "too complex" for PostgreSQL
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            members, ranges, invert = set[str](), list[tuple[str, str]](), False
            if i < n and pattern[i] == "^":
                invert, i = True, i + 1
            if i < n and pattern[i] == "]":
                members.add("]")
                i += 1
            prior: str | None = None
            while i < n and pattern[i] != "]":
                c2 = pattern[i]
                i += 1
                if c2 == "-" and i < n and pattern[i] != "]" and prior is not None:
                    hi = pattern[i]
                    i += 1
                    if prior <= hi:
                        ranges.append((prior, hi))
                    prior = None
                else:
                    members.add(c2)
                    prior = c2
            if i >= n:
                return None  # unterminated: SQLite matches nothing
            i += 1
            items = [_char(m) for m in sorted(members)] + [f"{_char(lo)}-{_char(hi)}" for lo, hi in ranges]
            if not items:
                if not invert:
                    return None
                out.append(".")
            else:
                out.append(f"[{'^' if invert else ''}{''.join(items)}]")
        else:
            out.append(_char(c))
    out.append("$")
    return "".join(out)


def is_literal(pattern: str) -> bool:
    """True when the GLOB ``pattern`` has no wildcard (``*``, ``?``, ``[``): it matches only itself."""
    return not any(c in pattern for c in "*?[")
