"""A raw stdio server whose optional listings misbehave, for the gateway's listing tests.

    python -m tests.servers.flaky_lists --mode MODE

It declares tools, resources and prompts and serves the tool ``echo(text)`` (plus ``other``).
Modes:
  no-templates   resources/templates/list answers -32601 and prompts/list -32603; resources/list works
  loop-cursor    tools/list answers the same page with the same nextCursor forever; resources/list
                 pages forever with a fresh cursor (and a fresh resource) each time
  duplicates     tools/list answers two pages, both listing echo (and other once)
  hang-prompts   prompts/list and resources/templates/list are never answered
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from tests.servers import _raw

CAPABILITIES: dict[str, dict[str, object]] = {"tools": {}, "resources": {}, "prompts": {}}
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}
ECHO = {"name": "echo", "description": "Echo the text", "inputSchema": SCHEMA}
OTHER = {"name": "other", "description": "Another tool", "inputSchema": SCHEMA}
RESOURCE = {"uri": "flaky://one", "name": "one"}


def answer(mode: str, method: str, params: dict[str, Any]) -> dict[str, Any] | tuple[int, str] | None:
    """The result, an (code, message) error, or None for no answer at all."""
    cursor = params.get("cursor")
    if method == "tools/list":
        if mode == "loop-cursor":
            return {"tools": [ECHO, OTHER], "nextCursor": "again"}
        if mode == "duplicates":
            return {"tools": [ECHO, OTHER, ECHO], "nextCursor": "p2"} if cursor is None else {"tools": [ECHO]}
        return {"tools": [ECHO, OTHER]}
    if method == "tools/call":
        text = str((params.get("arguments") or {}).get("text", ""))
        return {"content": [{"type": "text", "text": text}], "isError": False}
    if method == "resources/list":
        if mode == "loop-cursor":
            n = int(cursor or 0) + 1
            return {"resources": [{"uri": f"flaky://page/{n}", "name": f"p{n}"}], "nextCursor": str(n)}
        return {"resources": [RESOURCE]}
    if method == "resources/templates/list":
        if mode == "no-templates":
            return (-32601, "Method not found")
        return None if mode == "hang-prompts" else {"resourceTemplates": []}
    if method == "prompts/list":
        if mode == "no-templates":
            return (-32603, "prompts are broken today")
        return None if mode == "hang-prompts" else {"prompts": []}
    return (-32601, f"Method not found: {method}")


def run(mode: str) -> None:
    for _raw_line, message in _raw.messages():
        if _raw.handshake(message, "toolcrib-flaky-lists", CAPABILITIES) or not isinstance(message, dict):
            continue
        if "id" not in message:
            continue
        out = answer(mode, str(message.get("method")), message.get("params") or {})
        if isinstance(out, dict):
            _raw.result(message["id"], out)
        elif isinstance(out, tuple):
            _raw.error(message["id"], *out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="stdio server whose optional listings misbehave")
    parser.add_argument("--mode", choices=["no-templates", "loop-cursor", "duplicates", "hang-prompts"], required=True)
    run(parser.parse_args(argv).mode)


if __name__ == "__main__":
    main()
