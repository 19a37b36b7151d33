"""A stdio server that completes the handshake, lists one tool, and never answers a call.

    python -m tests.servers.hang [--hang-at call|initialize]

`--hang-at call` (default): `initialize` and `tools/list` (one tool, `hang`) and `ping` are
answered; `tools/call` and every other request are read and never answered, and
`notifications/cancelled` is ignored (unlike echo's `sleep`, which honours cancellation).
`--hang-at initialize`: not even `initialize` is answered.
The process stays alive until stdin closes or it is killed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tests.servers import _raw

TOOL = {
    "name": "hang",
    "description": "Never returns",
    "inputSchema": {"type": "object", "properties": {}},
}


def run(hang_at: str) -> None:
    for _raw_line, message in _raw.messages():
        if hang_at == "initialize" or not isinstance(message, dict):
            continue
        if _raw.handshake(message, "toolcrib-hang", {"tools": {"listChanged": False}}):
            continue
        if message.get("method") == "tools/list" and "id" in message:
            _raw.result(message["id"], {"tools": [TOOL]})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="stdio server that never answers tools/call")
    parser.add_argument("--hang-at", choices=["call", "initialize"], default="call")
    run(parser.parse_args(argv).hang_at)


if __name__ == "__main__":
    main()
