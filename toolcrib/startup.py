"""Start-up checks and interruption for ``toolcrib serve``: a busy port is refused before anything
starts, and a stop signal during start-up aborts it without leaving children or half-written state."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

import anyio

from toolcrib.errors import ConfigError, ToolcribError


class StartupInterrupted(ToolcribError):
    """A stop signal arrived before the gateway was listening; everything started so far was stopped."""

    exit_code = 130


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`ConfigError` (one line) when ``host:port`` cannot be bound, e.g. another toolcrib
    already listens there. Port 0 (pick a free one) is always fine. Called before any upstream starts
    or the index is built, so a busy port costs nothing."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot resolve bind address {host!r} ({exc.strerror}); fix [gateway] host or --host"
        ) from None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does: TIME_WAIT is no conflict
            try:
                sock.bind(addr)
            except OSError as exc:
                raise bind_error(host, port, exc) from None


def bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"port {port} on {host} is already in use (another toolcrib or `make run`?); stop it, "
            "or pass --port N (0 picks a free port) or set [gateway] port"
        )
    if exc.errno == errno.EACCES:
        return ConfigError(f"no permission to listen on {host}:{port}; use a port above 1023 (--port N)")
    return ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); fix [gateway] host/port or pass --port N")


async def unless(abort: anyio.Event, step: Callable[[], Any]) -> None:
    """Run the start-up ``step`` unless ``abort`` is (or becomes) set; then raise :class:`StartupInterrupted`.
    Only the step is cancelled: upstreams keep running until the caller's exit stack stops them in order."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await abort.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        if not abort.is_set():
            await step()
        tg.cancel_scope.cancel()
    if abort.is_set():
        raise StartupInterrupted("interrupted during start-up: stopped every upstream started so far; nothing listens")
