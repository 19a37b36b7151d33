"""Raw MCP clients for benchmarks: Streamable HTTP JSON-RPC on aiohttp, and newline JSON over stdio.

Deliberately thin (no SDK, no pydantic) so the client is never the bottleneck. Both speak the
2025-11-25 handshake era (``initialize`` then ``notifications/initialized``), which every server
measured here accepts; the HTTP client follows the version the server negotiates.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

PROTOCOL = "2025-11-25"
CLIENT_INFO = {"name": "toolcrib-bench", "version": "1.0"}
ROOT = Path(__file__).resolve().parents[1]


class RpcError(Exception):
    pass


def _init_params() -> dict[str, Any]:
    return {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": CLIENT_INFO}


def _check(reply: dict[str, Any]) -> dict[str, Any]:
    if "error" in reply:
        raise RpcError(json.dumps(reply["error"])[:300])
    result: dict[str, Any] = reply["result"]
    if result.get("isError"):
        raise RpcError("tool error: " + json.dumps(result.get("content"))[:300])
    return result


class HttpClient:
    """One MCP session over Streamable HTTP on a shared :class:`aiohttp.ClientSession`."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        self._ids = itertools.count(1)

    async def open(self) -> HttpClient:
        reply, headers = await self._post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": _init_params()})
        result = _check(reply)
        sid = headers.get("Mcp-Session-Id")
        if sid:
            self.headers["Mcp-Session-Id"] = sid
        self.headers["MCP-Protocol-Version"] = result.get("protocolVersion", PROTOCOL)
        await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        msg = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params or {}}
        reply, _ = await self._post(msg)
        return _check(reply)

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return await self.request("tools/call", {"name": name, "arguments": arguments})

    async def close(self) -> None:
        if "Mcp-Session-Id" in self.headers:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.http.delete(self.url, headers=self.headers) as resp:
                    await resp.read()

    async def _post(self, msg: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        try:
            return await self._post_once(msg)
        except aiohttp.ServerDisconnectedError:
            # A pooled keep-alive connection the server closed while idle (a known race between
            # aiohttp's client pool and any server's idle timeout): the request never left; resend once.
            return await self._post_once(msg)

    async def _post_once(self, msg: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        async with self.http.post(self.url, data=json.dumps(msg), headers=self.headers) as resp:
            if resp.status == 202:
                return {}, resp.headers
            if resp.status >= 400:
                raise RpcError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
            ctype = resp.headers.get("Content-Type", "")
            if ctype.startswith("application/json"):
                return json.loads(await resp.read()), resp.headers
            rid = msg.get("id")
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    data = json.loads(line[5:])
                    if data.get("id") == rid and ("result" in data or "error" in data):
                        return data, resp.headers
            raise RpcError("SSE stream ended without a response")


class StdioClient:
    """One MCP server process driven over newline-delimited JSON-RPC; requests are multiplexed by id."""

    def __init__(self, argv: Sequence[str], cwd: Path = ROOT) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> StdioClient:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=self.cwd,
            limit=1 << 24,
        )
        self._reader = asyncio.create_task(self._read())
        await self.request("initialize", _init_params())
        await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def _send(self, msg: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        await self.proc.stdin.drain()

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            fut = self._waiting.pop(msg.get("id"), None) if "method" not in msg else None
            if fut is not None and not fut.done():
                fut.set_result(msg)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RpcError("server closed stdout"))

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        await self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})
        return _check(await fut)

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return await self.request("tools/call", {"name": name, "arguments": arguments})

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 3)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


# ---- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process we started and will stop (SIGTERM, then SIGKILL), by its own pid only."""

    def __init__(self, argv: Sequence[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.stderr = tempfile.TemporaryFile(mode="w+", prefix="bench-stderr-")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self._drain: threading.Thread | None = None

    def stderr_tail(self, n: int = 2000) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-n:]

    def wait_line(self, prefix: str, timeout: float = 60.0) -> str:
        """Read stdout until a line starting with ``prefix``; return the rest of it."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                break
            if line.startswith(prefix):
                self._drain = threading.Thread(target=self._discard, daemon=True)
                self._drain.start()
                return line[len(prefix) :].strip()
        raise RuntimeError(f"{self.argv[:4]} did not print {prefix!r} within {timeout}s: {self.stderr_tail()}")

    def _discard(self) -> None:
        assert self.popen.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for _ in self.popen.stdout:
                pass

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)  # its own process group: it and its stdio upstreams
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait()
        if self._drain is not None:
            self._drain.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self.stderr.close()

    def cpu_seconds(self) -> float:
        """utime + stime of this process (not its children) from /proc/PID/stat."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0


async def wait_http(url: str, timeout: float = 30.0) -> None:
    """Wait until something accepts TCP connections at the URL's port."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection(parts.hostname, parts.port)
            w.close()
            await w.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


PY = sys.executable

UPSTREAM_SECRET = "bench-upstream-token-7c1f9e2a"
"""The credential of the benchmarks' upstream ``up``: the gateway resolves ``secret:up/token`` from the
environment (``TOOLCRIB_SECRET_UP_TOKEN``, set on every gateway started with :class:`Proc`), injects it
at the upstream edge and registers it with its redactor, so every result is scanned for a secret as in
any deployment with credentials (with no secret registered, redaction is skipped)."""
os.environ.setdefault("TOOLCRIB_SECRET_UP_TOKEN", UPSTREAM_SECRET)


def upstream_credential(transport: str) -> str:
    """The TOML line of server ``up`` that carries its credential: a header over HTTP, an
    environment variable of the child over stdio."""
    if transport == "http":
        return 'headers = { Authorization = "Bearer secret:up/token" }\n'
    return 'env = { UP_TOKEN = "secret:up/token" }\n'
