"""A raw stdio server that answers ``tools/call burst`` at once: three ``notifications/progress``
for the request's token and a ``notifications/message`` log line in one write, then the result
in the next, so the gateway's reader meets the answer right after them (same read or the next).

    python -m tests.servers.burst

Tool: ``burst()``, result text ``done``.
"""

from __future__ import annotations

import json

from tests.servers import _raw

CAPABILITIES: dict[str, dict[str, object]] = {"tools": {}, "logging": {}}
TOOL = {
    "name": "burst",
    "description": "Progress, a log line and the result at once",
    "inputSchema": {"type": "object"},
}


def frame(message: dict[str, object]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **message}, separators=(",", ":")).encode() + b"\n"


def main() -> None:
    for rid, params in _raw.tool_calls("toolcrib-burst", [TOOL], CAPABILITIES):
        token = (params.get("_meta") or {}).get("progressToken")
        out = b""
        if token is not None:
            for i in (1, 2, 3):
                progress = {"progressToken": token, "progress": i, "total": 3, "message": f"step {i}"}
                out += frame({"method": "notifications/progress", "params": progress})
        out += frame({"method": "notifications/message", "params": {"level": "info", "data": "burst log"}})
        _raw.write_bytes(out)  # flushed: the answer below may come in the same read or the next one
        _raw.write_bytes(frame({"id": rid, "result": {"content": [{"type": "text", "text": "done"}]}}))


if __name__ == "__main__":
    main()
