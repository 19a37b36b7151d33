"""Be liberal in what upstreams send: normalise a result to the shape the SDK's client models accept.

The MCP SDK validates every result against the negotiated revision's wire schema before toolcrib
sees it, and its models are stricter than the spec's rules for receivers. So each upstream result
passes through :func:`tolerate` first (at the transport edge, :mod:`toolcrib.router.backchannel`),
which turns the forms a client must accept into the forms the SDK parses:

- **absent ``resultType``** on a 2026-07-28 result becomes ``"complete"``: "when a client receives a
  result ... which does not include ``resultType``, the client MUST treat the absent field as
  ``"complete"``" (2026-07-28 basic/index.mdx, "Result Type"; changelog item 8);
- **absent caching hints** (``ttlMs``, ``cacheScope``) on a 2026-07-28 result whose schema has them
  become ``ttlMs: 0, cacheScope: "private"``: the most conservative reading (immediately stale, never
  shared across authorization contexts; 2026-07-28 server/utilities/caching);
- **content blocks of a type this SDK does not know** (a later revision's, or an extension's) are
  dropped from tool results and prompt messages, with a debug log: no revision a client of toolcrib
  speaks (2025-11-25, 2026-07-28) can carry them, and failing the whole call for one block is worse.

Everything else the spec tells a client to tolerate already parses: unknown fields (in results, list
items, content blocks) are ignored by the SDK models, unknown ``_meta`` keys and unknown capabilities
are kept as data. Results with an explicit ``resultType`` (``input_required``, a claimed extension's)
are never touched, and error responses pass as they are.

The other direction has one fix, :func:`honest_capabilities`: what toolcrib declares upstream is
what it does.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Mapping
from typing import Any

from mcp_types import PROTOCOL_VERSION_META_KEY
from mcp_types.methods import SERVER_RESULTS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

log = logging.getLogger("toolcrib.upstream.tolerate")

KNOWN_BLOCKS = frozenset({"text", "image", "audio", "resource_link", "resource"})
"""Content block ``type`` values the SDK's ``ContentBlock`` union parses (2025-11-25 and 2026-07-28)."""


def request_version(params: Mapping[str, Any] | None) -> str | None:
    """The protocol version a 2026-07-28 request names in ``params._meta`` (None for a session request)."""
    meta = params.get("_meta") if params else None
    version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, Mapping) else None
    return version if isinstance(version, str) else None


@functools.cache
def _caching_fields(method: str, version: str) -> bool:
    """True if ``method``'s result at ``version`` has the (required) caching hints."""
    row = SERVER_RESULTS.get((method, version))
    if row is None:
        return False
    models = getattr(row, "__args__", (row,))
    return any(
        isinstance(m, type)
        and issubclass(m, BaseModel)
        and "cache_scope" in m.model_fields
        and "ttl_ms" in m.model_fields
        for m in models
    )


def tolerate(method: str, version: str | None, result: dict[str, Any], *, upstream: str = "") -> dict[str, Any]:
    """``result`` (the ``result`` member of a response to ``method``, sent at ``version``) in a shape the
    SDK accepts; the same dict when nothing needed changing, else a changed copy. Never raises."""
    fixed = result
    if version in MODERN_PROTOCOL_VERSIONS:
        if "resultType" not in fixed:
            fixed = {**fixed, "resultType": "complete"}
        hinted = "ttlMs" in fixed and "cacheScope" in fixed
        if not hinted and fixed.get("resultType") == "complete" and _caching_fields(method, version):
            fixed = {"ttlMs": 0, "cacheScope": "private", **fixed}
    if method == "tools/call" and isinstance(content := fixed.get("content"), list):
        kept = [block for block in content if _known_block(block)]
        if len(kept) != len(content):
            _dropped(upstream, method, [b for b in content if not _known_block(b)])
            fixed = {**fixed, "content": kept}
    elif method == "prompts/get" and isinstance(messages := fixed.get("messages"), list):
        kept = [m for m in messages if not isinstance(m, dict) or _known_block(m.get("content"))]
        if len(kept) != len(messages):
            dropped = [m.get("content") for m in messages if isinstance(m, dict) and not _known_block(m.get("content"))]
            _dropped(upstream, method, dropped)
            fixed = {**fixed, "messages": kept}
    return fixed


def _known_block(block: Any) -> bool:
    """False only for a content block whose ``type`` is a string this SDK does not know (anything else is
    left for the SDK to judge)."""
    kind = block.get("type") if isinstance(block, dict) else None
    return not isinstance(kind, str) or kind in KNOWN_BLOCKS


def _dropped(upstream: str, method: str, blocks: list[Any]) -> None:
    kinds = sorted({str(b.get("type")) for b in blocks if isinstance(b, dict)})
    log.debug(
        "upstream %s: dropped %d content block(s) of unknown type %s from %s", upstream, len(blocks), kinds, method
    )


CAPABILITIES_META = "io.modelcontextprotocol/clientCapabilities"


RELAYABLE = ("elicitation", "sampling", "roots")
"""The client capabilities toolcrib can relay (its upstream client declares them all)."""

client_declared: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "toolcrib_client_declared", default=None
)
"""The capabilities the client whose call is running declared (wire form), set by the gateway around
the call; requests sent upstream in that context declare no more than these (:func:`declared_upstream`)."""


def declared_upstream(own: Mapping[str, Any], client: Mapping[str, Any]) -> dict[str, Any]:
    """What toolcrib declares upstream for one client's request: its own capabilities, with
    :data:`RELAYABLE` ones kept only where the calling client declared them (with the client's
    settings), and ``extensions`` only those the client declared too (SEP-2575: a server asks only
    for what the requester declared, and a client that did not declare an extension, such as
    ``io.modelcontextprotocol/tasks``, must get what a direct server would give it)."""
    out = {k: v for k, v in own.items() if k not in RELAYABLE and k != "extensions"}
    for key in RELAYABLE:
        if key in own and isinstance(client.get(key), Mapping):
            out[key] = client[key]
    ours, theirs = own.get("extensions"), client.get("extensions")
    if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
        shared = {k: v for k, v in ours.items() if k in theirs}
        if shared:
            out["extensions"] = shared
    return out


def honest_capabilities(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """``params`` with the client capabilities toolcrib declares upstream (``initialize``'s
    ``capabilities``; 2026-07-28 ``_meta["io.modelcontextprotocol/clientCapabilities"]``, SEP-2575)
    made true: ``roots.listChanged`` is withdrawn, as toolcrib never sends
    ``notifications/roots/list_changed`` upstream (basic/lifecycle, "Capability Negotiation"); and a
    2026-07-28 request sent during a client's call declares no more than that client did
    (:data:`client_declared`, :func:`declared_upstream`). A copy when changed; anything else is
    left as it is."""
    if not params:
        return params
    client = client_declared.get()

    def fixed(caps: Any) -> Any:
        roots = caps.get("roots") if isinstance(caps, dict) else None
        if not isinstance(roots, dict) or "listChanged" not in roots:
            return caps
        return {**caps, "roots": {k: v for k, v in roots.items() if k != "listChanged"}}

    out = params
    if "capabilities" in params and "protocolVersion" in params:  # initialize
        caps = fixed(params["capabilities"])
        if caps is not params["capabilities"]:
            out = {**out, "capabilities": caps}
    meta = params.get("_meta")
    if isinstance(meta, dict) and CAPABILITIES_META in meta:
        caps = fixed(meta[CAPABILITIES_META])
        if client is not None and isinstance(caps, Mapping):
            caps = declared_upstream(caps, client)
        if caps is not meta[CAPABILITIES_META]:
            out = {**out, "_meta": {**meta, CAPABILITIES_META: caps}}
    return out
