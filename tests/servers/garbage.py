"""A stdio "server" that breaks the protocol, for the gateway's fault tests.

    python -m tests.servers.garbage [--mode MODE]

Modes:
  bytes (default)  every input line is answered with invalid bytes (not UTF-8, not JSON)
                   and a plain-text line; nothing valid is ever written
  after-init       answers `initialize` correctly (and `server/discover` with -32601, as a
                   legacy server does), then answers every other request with garbage bytes
  not-jsonrpc      after a correct `initialize`, answers requests with valid JSON that is
                   not JSON-RPC (`{"hello":"world"}`, `[]`, `42`, `"text"`)
  wrong-id         after a correct `initialize`, answers `tools/list` and `tools/call` with
                   well-formed results under an id the client never sent
The process keeps reading until stdin closes, so a client must give up on its own.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence

from tests.servers import _raw

GARBAGE = b"\xff\xfe\x00\x80garbage\x81\xc3\x28 {{{ not json\n"
TEXT = b"this line is not JSON-RPC at all\n"
NOT_JSONRPC = [b'{"hello":"world"}\n', b"[]\n", b"42\n", b'"text"\n']
CAPABILITIES = {"tools": {"listChanged": False}}
TOOL = {"name": "echo", "description": "echo", "inputSchema": {"type": "object", "properties": {}}}


def run(mode: str) -> None:
    not_jsonrpc = itertools.cycle(NOT_JSONRPC)
    for _raw_line, message in _raw.messages():
        if mode == "bytes":
            _raw.write_bytes(GARBAGE + TEXT)
            continue
        if _raw.handshake(message, "toolcrib-garbage", CAPABILITIES):
            continue
        if mode == "after-init":
            _raw.write_bytes(GARBAGE)
        elif mode == "not-jsonrpc":
            _raw.write_bytes(next(not_jsonrpc))
        elif mode == "wrong-id" and isinstance(message, dict):
            bogus = f"never-sent-{message.get('id')}"
            if message.get("method") == "tools/list":
                _raw.result(bogus, {"tools": [TOOL]})
            else:
                _raw.result(bogus, {"content": [{"type": "text", "text": "wrong id"}], "isError": False})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="stdio server that writes garbage")
    parser.add_argument("--mode", choices=["bytes", "after-init", "not-jsonrpc", "wrong-id"], default="bytes")
    run(parser.parse_args(argv).mode)


if __name__ == "__main__":
    main()
