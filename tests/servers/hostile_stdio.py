"""A raw stdio server that misbehaves on request (the stdio transport's attack review).

    python -m tests.servers.hostile_stdio

Tools: ``ok``; ``echo(text)`` (answers the first 20 characters); ``pause(secs)`` (stops reading
stdin that long, then answers); ``flood(secs, line)`` (writes ``line`` lines to stdout as fast as
it can, then answers); ``elicit_then_answer`` (an ``elicitation/create`` and the answer in one
write); ``error(code, message)`` (a JSON-RPC error answer). With ``HOSTILE_LOG`` set, the name of
every ``tools/call`` received is appended to that file.
"""

from __future__ import annotations

import json
import os
import time

from tests.servers import _raw

NAMES = ["ok", "echo", "pause", "flood", "elicit_then_answer", "error"]


def text(value: str) -> dict[str, object]:
    return {"content": [{"type": "text", "text": value}], "isError": False}


def main() -> None:
    tools = [{"name": n, "description": n, "inputSchema": {"type": "object"}} for n in NAMES]
    record = os.environ.get("HOSTILE_LOG")
    for rid, params in _raw.tool_calls("hostile", tools, {"tools": {}}):
        name, args = params.get("name"), params.get("arguments") or {}
        if record:
            with open(record, "a", encoding="utf-8") as f:
                f.write(f"{name}\n")
        if name == "echo":
            _raw.result(rid, text(str(args.get("text", ""))[:20]))
        elif name == "pause":
            time.sleep(float(args.get("secs", 5)))
            _raw.result(rid, text("resumed"))
        elif name == "flood":
            line = str(args.get("line", "x")).encode() + b"\n"
            blob = line * (65536 // len(line))
            end = time.monotonic() + float(args.get("secs", 5))
            while time.monotonic() < end:
                os.write(1, blob)
            _raw.result(rid, text("flooded"))
        elif name == "elicit_then_answer":
            ask = {"mode": "form", "message": "sure?", "requestedSchema": {"type": "object", "properties": {}}}
            out = json.dumps({"jsonrpc": "2.0", "id": f"ask-{rid}", "method": "elicitation/create", "params": ask})
            out += "\n" + json.dumps({"jsonrpc": "2.0", "id": rid, "result": text("answered")}) + "\n"
            _raw.write_bytes(out.encode())
        elif name == "error":
            _raw.error(rid, int(args.get("code", -32000)), str(args.get("message", "generic server error")))
        else:
            _raw.result(rid, text("ok"))


if __name__ == "__main__":
    main()
