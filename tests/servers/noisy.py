"""A raw stdio server that works but also writes non-JSON lines to stdout (a banner at start and
a chatty line before every answer), as servers that log with print() do; before each tool answer
also a blank line, a line that is not UTF-8, and the answer itself in two writes (a line split
across reads of the pipe).

    python -m tests.servers.noisy

Tool: ``echo(text)``.
"""

from __future__ import annotations

import json
import time

from tests.servers import _raw

CAPABILITIES: dict[str, dict[str, object]] = {"tools": {}}
TOOL = {"name": "echo", "description": "Echo the text", "inputSchema": {"type": "object"}}


def main() -> None:
    _raw.write_bytes(b"Starting noisy server v1.0 ...\n")
    for _raw_line, message in _raw.messages():
        _raw.write_bytes(b"[info] handling a message\n")
        if _raw.handshake(message, "toolcrib-noisy", CAPABILITIES) or not isinstance(message, dict):
            continue
        if "id" not in message:
            continue
        if message.get("method") == "tools/list":
            _raw.result(message["id"], {"tools": [TOOL]})
        elif message.get("method") == "tools/call":
            text = str((message.get("params", {}).get("arguments") or {}).get("text", ""))
            _raw.write_bytes(b"\r\n\xff\xfe not UTF-8\n")
            answer = json.dumps(
                {"jsonrpc": "2.0", "id": message["id"], "result": {"content": [{"type": "text", "text": text}]}}
            ).encode()
            _raw.write_bytes(answer[:10])
            time.sleep(0.005)  # the rest arrives in another read of the pipe
            _raw.write_bytes(answer[10:] + b"\n")
        else:
            _raw.error(message["id"], -32601, "Method not found")


if __name__ == "__main__":
    main()
