"""Helpers for the raw (non-SDK) stdio fixtures: newline-delimited JSON-RPC on fd 0/1.

By default these fixtures speak the handshake era only: `server/discover` is answered with
-32601, which is how a legacy server answers it, so an `auto` client falls back to `initialize`.
With ``modern=True``, :func:`handshake` answers `server/discover` with a 2026-07-28
``DiscoverResult`` (basic/lifecycle), after which every request is stateless: its protocol
version rides in ``params._meta`` (:func:`is_modern`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
MODERN = "2026-07-28"
VERSION_META = "io.modelcontextprotocol/protocolVersion"
SERVER_INFO_META = "io.modelcontextprotocol/serverInfo"


def messages() -> Iterator[tuple[bytes, Any]]:
    """Yield (raw line, parsed JSON or None) for every line on stdin until EOF."""
    for raw in sys.stdin.buffer:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        yield raw, parsed


def write_bytes(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def write(message: dict[str, Any]) -> None:
    write_bytes(json.dumps(message, separators=(",", ":")).encode() + b"\n")


def result(msg_id: Any, value: dict[str, Any]) -> None:
    write({"jsonrpc": "2.0", "id": msg_id, "result": value})


def error(msg_id: Any, code: int, message: str) -> None:
    write({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})


def initialize_result(params: dict[str, Any], name: str, capabilities: dict[str, Any]) -> dict[str, Any]:
    requested = params.get("protocolVersion")
    version = requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0]
    return {"protocolVersion": version, "capabilities": capabilities, "serverInfo": {"name": name, "version": "1.0.0"}}


def discover_result(name: str, capabilities: dict[str, Any]) -> dict[str, Any]:
    """A complete 2026-07-28 ``DiscoverResult``: versions, capabilities, serverInfo stamp, caching hints."""
    return {
        "supportedVersions": [MODERN],
        "capabilities": capabilities,
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": {SERVER_INFO_META: {"name": name, "version": "1.0.0"}},
    }


def is_modern(params: Any) -> bool:
    """True if a request's params carry the 2026-07-28 version in ``_meta`` (a stateless request)."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and meta.get(VERSION_META) == MODERN


def handshake(
    message: Any,
    name: str,
    capabilities: dict[str, Any],
    *,
    modern: bool = False,
    discover: dict[str, Any] | None = None,
) -> bool:
    """Answer `initialize` / `server/discover` / `ping` / notifications; True if `message` was handled.

    ``modern``: answer `server/discover` with ``discover`` (default :func:`discover_result`) instead of -32601.
    """
    if not isinstance(message, dict):
        return False
    method, msg_id = message.get("method"), message.get("id")
    if "id" not in message:
        return method is not None  # notifications need no answer
    if method == "initialize":
        result(msg_id, initialize_result(message.get("params") or {}, name, capabilities))
        return True
    if method == "server/discover":
        if modern:
            result(msg_id, discover if discover is not None else discover_result(name, capabilities))
        else:
            error(msg_id, -32601, "Method not found: server/discover")
        return True
    if method == "ping":
        result(msg_id, {})
        return True
    return False


def tool_calls(
    name: str, tools: list[dict[str, Any]], capabilities: dict[str, Any]
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Serve the handshake, ``tools/list`` (``tools``), ``logging/setLevel`` and -32601 for any other
    request; yield ``(id, params)`` of each ``tools/call`` for the caller to answer."""
    for _raw_line, message in messages():
        if handshake(message, name, capabilities) or not isinstance(message, dict) or "id" not in message:
            continue
        rid, method = message["id"], message.get("method")
        if method == "tools/list":
            result(rid, {"tools": tools})
        elif method == "logging/setLevel":
            result(rid, {})
        elif method == "tools/call":
            yield rid, message.get("params") or {}
        else:
            error(rid, -32601, f"Method not found: {method}")
