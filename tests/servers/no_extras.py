"""A raw stdio server that declares completions and resource subscriptions but answers -32601 to both.

    FIXTURE_LOG=/path/file python -m tests.servers.no_extras

Serves tool ``echo(text)``, resource ``extras://one`` and prompt ``greet(name)``. Every
``completion/complete`` and ``resources/subscribe`` it receives is appended (the method, one a
line) to the file named by ``FIXTURE_LOG``, so a test can count what reached it.
"""

from __future__ import annotations

import os
from typing import Any

from tests.servers import _raw

CAPABILITIES: dict[str, dict[str, object]] = {
    "tools": {},
    "resources": {"subscribe": True},
    "prompts": {},
    "completions": {},
}
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}
RESULTS: dict[str, dict[str, Any]] = {
    "tools/list": {"tools": [{"name": "echo", "description": "Echo the text", "inputSchema": SCHEMA}]},
    "resources/list": {"resources": [{"uri": "extras://one", "name": "one"}]},
    "resources/templates/list": {"resourceTemplates": []},
    "prompts/list": {"prompts": [{"name": "greet", "arguments": [{"name": "name"}]}]},
    "resources/read": {"contents": [{"uri": "extras://one", "text": "one"}]},
}


def run() -> None:
    log = os.environ.get("FIXTURE_LOG")
    for _raw_line, message in _raw.messages():
        if _raw.handshake(message, "toolcrib-no-extras", CAPABILITIES) or not isinstance(message, dict):
            continue
        if "id" not in message:
            continue
        method = str(message.get("method"))
        params = message.get("params") or {}
        if method in RESULTS:
            _raw.result(message["id"], RESULTS[method])
        elif method == "tools/call":
            text = str((params.get("arguments") or {}).get("text", ""))
            _raw.result(message["id"], {"content": [{"type": "text", "text": text}], "isError": False})
        else:
            if log and method in ("completion/complete", "resources/subscribe"):
                with open(log, "a") as f:
                    f.write(method + "\n")
            _raw.error(message["id"], -32601, f"Method not found: {method}")


if __name__ == "__main__":
    run()
