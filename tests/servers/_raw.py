"""Helpers for the raw (non-SDK) stdio fixtures: newline-delimited JSON-RPC on fd 0/1.

These fixtures speak the handshake era only: `server/discover` is answered with -32601,
which is how a legacy server answers it, so an `auto` client falls back to `initialize`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")


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


def handshake(message: Any, name: str, capabilities: dict[str, Any]) -> bool:
    """Answer `initialize` / `server/discover` / notifications; True if `message` was handled."""
    if not isinstance(message, dict):
        return False
    method, msg_id = message.get("method"), message.get("id")
    if "id" not in message:
        return method is not None  # notifications need no answer
    if method == "initialize":
        result(msg_id, initialize_result(message.get("params") or {}, name, capabilities))
        return True
    if method == "server/discover":
        error(msg_id, -32601, "Method not found: server/discover")
        return True
    if method == "ping":
        result(msg_id, {})
        return True
    return False
