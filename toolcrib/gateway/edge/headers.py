"""SEP-2243 request headers of a 2026-07-28 POST: ``Mcp-Method``, ``Mcp-Name`` and ``Mcp-Param-*``.

Spec: 2026-07-28 basic/transports "Standard Headers" and "Custom Headers" (SEP-2243). A client
mirrors the JSON-RPC method into ``Mcp-Method``, the tool or prompt name (resource URI) into
``Mcp-Name``, and every argument whose input-schema property carries ``x-mcp-header: TOKEN`` into
``Mcp-Param-TOKEN``, so an intermediary can route without parsing the body. The server MUST check
that each header agrees with the body; a header that is missing where required, duplicated,
malformed (a character outside visible ASCII, a broken ``=?base64?...?=`` sentinel) or different
from the body is answered with HTTP 400 and JSON-RPC -32020 (HeaderMismatch).

The comparison itself is the SDK's (:mod:`mcp.shared.inbound`: ``classify_inbound_request`` for
``Mcp-Method``/``Mcp-Name``, ``validate_mcp_param_headers`` for ``Mcp-Param-*``), so toolcrib and the
servers behind it judge a request the same way. This module adds what the SDK leaves to the
transport: duplicated headers seen on the raw carrier, the character rule for ``Mcp-Param-*``
values, and where the called tool's schema comes from (the gateway's catalog, for tools this
principal may use).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from mcp.shared.inbound import (
    MCP_PARAM_HEADER_PREFIX,
    InboundLadderRejection,
    decode_header_value,
    find_duplicated_routing_header,
    validate_mcp_param_headers,
)
from mcp_types.jsonrpc import HEADER_MISMATCH

from toolcrib.gateway.trust.identity import Principal

_PARAM_PREFIX = MCP_PARAM_HEADER_PREFIX.lower()
_VISIBLE = re.compile(r"[\x20-\x7e]*")
"""RFC 9110 section 5.5 field-value characters toolcrib accepts: visible ASCII and space (no
obs-text, no controls); anything else must travel base64-wrapped (SEP-2243 "Value Encoding")."""


class HeaderProblem(ValueError):
    """A header value that cannot be read: ``str(problem)`` is one line naming the header and what to do."""


def parse_param_value(name: str, raw: str) -> str:
    """The value an ``Mcp-Param-*`` header carries: ``raw`` with surrounding whitespace removed
    (RFC 9110 section 5.5 OWS), then unwrapped when it is a ``=?base64?PAYLOAD?=`` sentinel
    (canonical padded base64 of UTF-8; SEP-2243 "Value Encoding"). A value without both the prefix
    and the suffix is literal.

    Raises :class:`HeaderProblem` for a character outside visible ASCII, or a sentinel whose payload
    is not canonical base64 of UTF-8 text.
    """
    value = raw.strip(" \t")
    if not _VISIBLE.fullmatch(value):
        raise HeaderProblem(f"{name} header has a character outside visible ASCII; send it as =?base64?...?=")
    decoded = decode_header_value(value)
    if decoded is None:
        raise HeaderProblem(f"{name} header has a malformed =?base64?...?= value; send canonical padded base64")
    return decoded


def mismatch(message: str) -> InboundLadderRejection:
    """A HeaderMismatch (-32020, HTTP 400) rejection with a one-line message."""
    return InboundLadderRejection(code=HEADER_MISMATCH, message=message)


def routing_rejection(raw_headers: Iterable[tuple[str, str]]) -> InboundLadderRejection | None:
    """-32020 when ``MCP-Protocol-Version``, ``Mcp-Method`` or ``Mcp-Name`` is sent more than once
    (first-copy and last-copy readers would disagree), else None. ``raw_headers`` are the request's
    (name, value) pairs with repeats, e.g. aiohttp's ``request.headers.items()``."""
    duplicated = find_duplicated_routing_header(raw_headers)
    if duplicated is None:
        return None
    return mismatch(f"{duplicated} header appears more than once; send it once")


def param_headers(raw_headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``Mcp-Param-*`` (name, value) pairs among ``raw_headers``, repeats kept, in order, values
    without surrounding whitespace (RFC 9110 section 5.5 OWS)."""
    return [(k, v.strip(" \t")) for k, v in raw_headers if k.lower().startswith(_PARAM_PREFIX)]


def param_rejection(
    input_schema: Any, arguments: Mapping[str, Any], raw_headers: Iterable[tuple[str, str]]
) -> InboundLadderRejection | None:
    """-32020 when the ``Mcp-Param-*`` headers of a ``tools/call`` disagree with its arguments, else None.

    ``input_schema`` is the tool's input schema as the client was shown it (JSON object, or None for
    no schema: nothing to check). Every ``Mcp-Param-*`` value must be readable
    (:func:`parse_param_value`), then each ``x-mcp-header``-annotated property and its header must be
    present together and equal, or absent together (SEP-2243 "Server Behavior for Custom Headers").
    A schema whose annotations are invalid validates nothing (a conforming client drops that tool).
    """
    params = param_headers(raw_headers)
    for name, value in params:
        try:
            parse_param_value(name, value)
        except HeaderProblem as problem:
            return mismatch(str(problem))
    if input_schema is None:
        return None
    return validate_mcp_param_headers(input_schema, arguments, _MultiPairs(params))


class _MultiPairs(Mapping[str, str]):
    """A read-only mapping whose ``items()`` keeps repeated names, so the SDK sees duplicates."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs
        self._last = {k.lower(): v for k, v in pairs}

    def __getitem__(self, key: str) -> str:
        return self._last[key.lower()]

    def __iter__(self) -> Any:
        return iter(self._last)

    def __len__(self) -> int:
        return len(self._last)

    def items(self) -> Any:
        return list(self._pairs)


def tool_schema(gateway: Any, principal: Principal, name: Any) -> Any | None:
    """The input schema (JSON object) of the tool ``name`` as ``principal`` is shown it, or None.

    None when the name is not a string, the catalog has no such tool, or policy hides it from this
    principal: a hidden tool is then answered as unknown by the call itself, and its schema never
    decides a header check (which would reveal that it exists).
    """
    if not isinstance(name, str):
        return None
    entry = gateway.pool.catalog.tools.get(name)
    if entry is None or not gateway.may_use(principal, name):
        return None
    return entry.tool.input_schema


EXTENSION_NAME_BEARING = {"tasks/get": "taskId", "tasks/update": "taskId", "tasks/cancel": "taskId"}
"""Extension methods whose ``Mcp-Name`` mirrors a param (SEP-2663 "Routing Headers": ``params.taskId``);
the core ones (tools/call, prompts/get, resources/read) are checked by the SDK's ladder."""


def extension_name_rejection(
    method: str, params: Mapping[str, Any], raw_headers: Iterable[tuple[str, str]]
) -> InboundLadderRejection | None:
    """-32020 when an ``Mcp-Name`` header on an :data:`EXTENSION_NAME_BEARING` method differs from
    the param it mirrors (an absent header is allowed), else None."""
    key = EXTENSION_NAME_BEARING.get(method)
    if key is None:
        return None
    sent = [v.strip() for k, v in raw_headers if k.lower() == "mcp-name"]
    if sent and sent[0] != params.get(key):
        return mismatch(f"Mcp-Name header does not match params.{key}; send the same value in both")
    return None
