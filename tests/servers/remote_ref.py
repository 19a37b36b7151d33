"""A raw stdio server whose tool's input schema uses a remote ``$ref`` (and a local one).

    python -m tests.servers.remote_ref [--ref-port PORT]

Tool ``lookup(item, count)``: ``item`` is ``{"$ref": "http://127.0.0.1:PORT/item.json"}`` (PORT
defaults to 9; a client must never fetch it), ``count`` is ``{"$ref": "#/$defs/count"}`` (an
integer >= 1). The answer is the arguments as JSON text.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from tests.servers import _raw

CAPABILITIES: dict[str, dict[str, object]] = {"tools": {}}


def tool(port: int) -> dict[str, object]:
    schema = {
        "type": "object",
        "properties": {
            "item": {"$ref": f"http://127.0.0.1:{port}/item.json"},
            "tag": {"$ref": "https://schemas.example.com/tag.json#/$defs/tag"},
            "count": {"$ref": "#/$defs/count"},
        },
        "required": ["item", "count"],
        "$defs": {"count": {"type": "integer", "minimum": 1}},
    }
    return {"name": "lookup", "description": "Look an item up", "inputSchema": schema}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="stdio server with a remote $ref in a tool schema")
    parser.add_argument("--ref-port", type=int, default=9)
    port = parser.parse_args(argv).ref_port
    for _raw_line, message in _raw.messages():
        if _raw.handshake(message, "toolcrib-remote-ref", CAPABILITIES) or not isinstance(message, dict):
            continue
        if "id" not in message:
            continue
        if message.get("method") == "tools/list":
            _raw.result(message["id"], {"tools": [tool(port)]})
        elif message.get("method") == "tools/call":
            args = message.get("params", {}).get("arguments") or {}
            text = json.dumps(args, sort_keys=True)
            _raw.result(message["id"], {"content": [{"type": "text", "text": text}], "isError": False})
        else:
            _raw.error(message["id"], -32601, "Method not found")


if __name__ == "__main__":
    main()
