"""PostgreSQL access for every store: a connection pool, NOTIFY, and one LISTEN connection.

:class:`Database` is synchronous (psycopg 3 with ``psycopg_pool``): the CLI calls it directly and the
gateway calls it from worker threads (``anyio.to_thread``), as it does with SQLite, so no store has
two implementations of its logic. :class:`Listener` is the gateway's one asynchronous connection:
it ``LISTEN``\\s on the channels stores subscribed to and calls their handlers on the event loop; a
lost connection is re-established with back-off, and every handler's ``on_reconnect`` runs then,
because notifications sent while it was away are lost (PostgreSQL does not queue them).

Channels (``NOTIFY`` payloads are at most 8000 bytes): see :data:`CHANNELS`.

U+0000: PostgreSQL's ``text`` cannot hold it and ``jsonb`` refuses its ``\\u0000`` escape, while JSON
(and so any client, upstream or identity provider) may send it. Every connection of the pool writes
it as U+FFFD REPLACEMENT CHARACTER instead, in ``str`` parameters and in ``Json``/``Jsonb`` values
(:func:`without_nul`), so no store fails on it; lookups go through the same replacement and stay
consistent. The audit log escapes it itself (``audit/text.py``) so that its hashes keep it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import psycopg
from psycopg.types.json import set_json_dumps
from psycopg.types.string import StrBinaryDumper, StrDumperUnknown
from psycopg_pool import ConnectionPool, PoolTimeout

from toolcrib.errors import StorageError

log = logging.getLogger("toolcrib.storage")
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # its per-attempt warnings span lines; ours say it once

CHANNELS = {
    "toolcrib_approvals": "an approval was decided; payload: its id",
    "toolcrib_documents": "a shared document changed (API keys, pins); payload: its name",
    "toolcrib_sessions": "a message for a 2025-11-25 session's GET stream; payload: JSON {session, message}",
    "toolcrib_upstreams": "a replica saw an upstream's list change; payload: JSON {replica, server, kind}",
}
"""Every channel toolcrib uses, with what its payload is."""

Handler = Callable[[str], Awaitable[None] | None]

NUL_REPLACEMENT = "\ufffd"
"""What U+0000 is stored as (see the module docstring)."""


def without_nul(value: Any) -> Any:
    """``value`` (a str or a JSON-like value) with U+0000 replaced by :data:`NUL_REPLACEMENT` in
    every string, keys included; ``value`` itself when it holds none."""
    if isinstance(value, str):
        return value.replace("\x00", NUL_REPLACEMENT) if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(v) for v in value]
    return value


def dumps_jsonb(value: Any) -> str:
    """JSON text of ``value`` that ``jsonb`` accepts: U+0000 written as :data:`NUL_REPLACEMENT`."""
    text = json.dumps(value)
    return json.dumps(without_nul(value)) if "\\u0000" in text else text


class _NulFreeStr(StrDumperUnknown):
    def dump(self, obj: str) -> Any:
        return super().dump(without_nul(obj))


class _NulFreeStrBinary(StrBinaryDumper):
    def dump(self, obj: str) -> Any:
        return super().dump(without_nul(obj))


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Every pooled connection: U+0000 stored as U+FFFD (module docstring)."""
    conn.adapters.register_dumper(str, _NulFreeStrBinary)
    conn.adapters.register_dumper(str, _NulFreeStr)
    set_json_dumps(dumps_jsonb, conn)


def describe(url: str) -> str:
    """``url`` without credentials, for messages and logs (``postgresql://user@host:port/db``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username + '@' if parts.username else ''}{host}{f':{parts.port}' if parts.port else ''}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Database:
    """A pool of synchronous connections to one PostgreSQL database (autocommit; use
    :meth:`transaction` for several statements). ``password`` is the resolved secret (never part of
    ``url``). Raises :class:`StorageError` (one line, with what to do) when the server is unreachable
    or refuses us; never a driver traceback."""

    def __init__(
        self, url: str, *, password: str | None = None, pool_size: int = 4, connect_timeout: float = 10.0
    ) -> None:
        self.url = url
        self.where = describe(url)
        self._kwargs: dict[str, Any] = {"autocommit": True, "application_name": "toolcrib"}
        if password is not None:
            self._kwargs["password"] = password
        self.connect_timeout = connect_timeout
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=self._kwargs,
            configure=_configure,
            open=False,
            timeout=connect_timeout,
            name="toolcrib",
        )
        self._opened = False

    def open(self) -> Database:
        """Connect (waiting up to ``connect_timeout`` seconds for the first connection)."""
        if not self._opened:
            try:  # one direct attempt first: its error says why (refused, bad password, no database)
                psycopg.connect(self.url, connect_timeout=max(1, int(self.connect_timeout)), **self._kwargs).close()
            except psycopg.Error as exc:
                raise StorageError(self._unreachable(exc)) from None
            try:
                self._pool.open(wait=True, timeout=self.connect_timeout)
            except PoolTimeout:
                self._pool.close()
                raise StorageError(self._unreachable()) from None
            self._opened = True
        return self

    def _unreachable(self, exc: BaseException | None = None) -> str:
        why = f" ({_first_line(exc)})" if exc is not None else f" within {self.connect_timeout:g} s"
        return (
            f"cannot reach PostgreSQL at {self.where}{why}; check [storage] url and password, "
            "and that the server runs and accepts this user"
        )

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in autocommit mode. Driver errors become :class:`StorageError`."""
        self.open()
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise StorageError(self._unreachable()) from None
        except psycopg.OperationalError as exc:
            raise StorageError(self._unreachable(exc)) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection inside one transaction (committed on exit, rolled back on error)."""
        with self.connection() as conn, conn.transaction():
            yield conn

    def notify(self, channel: str, payload: str, conn: psycopg.Connection[Any] | None = None) -> None:
        """``NOTIFY channel, payload``; inside ``conn``'s transaction when given (sent at commit)."""
        if conn is not None:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            return
        with self.connection() as own:
            own.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def ping(self) -> str | None:
        """None when a query round-trips; otherwise why not (for ``/readyz``)."""
        try:
            with self.connection() as conn:
                conn.execute("SELECT 1")
        except StorageError as exc:
            return exc.message
        except psycopg.Error as exc:
            return _first_line(exc)
        return None

    def connect_args(self) -> tuple[str, dict[str, Any]]:
        """What a dedicated connection (the :class:`Listener`) needs: the URL and keyword arguments."""
        return self.url, dict(self._kwargs)

    def close(self) -> None:
        if self._opened:
            self._pool.close()
            self._opened = False


@dataclass
class _Subscription:
    handler: Handler
    on_reconnect: Callable[[], Awaitable[None] | None] | None


@dataclass
class Listener:
    """The gateway's LISTEN connection. :meth:`subscribe` before :meth:`run`: a channel first
    subscribed while connected is LISTENed only from the next reconnect.
    ``connected`` says whether notifications are being received now (``/readyz``)."""

    db: Database
    retry_max: float = 5.0
    connected: bool = False
    _subs: dict[str, list[_Subscription]] = field(default_factory=dict)
    _conn: psycopg.AsyncConnection[Any] | None = None

    def subscribe(
        self, channel: str, handler: Handler, on_reconnect: Callable[[], Awaitable[None] | None] | None = None
    ) -> None:
        """Call ``handler(payload)`` for every NOTIFY on ``channel``; ``on_reconnect()`` after the
        connection was lost and re-made (state may have changed unseen meanwhile)."""
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; add it to CHANNELS")
        self._subs.setdefault(channel, []).append(_Subscription(handler, on_reconnect))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """LISTEN until cancelled, reconnecting with back-off (0.2 s doubling to ``retry_max``)."""
        started, delay, lost = False, 0.2, False
        while True:
            try:
                url, kwargs = self.db.connect_args()
                conn = await psycopg.AsyncConnection.connect(
                    url, connect_timeout=max(1, int(self.db.connect_timeout)), **kwargs
                )
                self._conn = conn
                try:
                    for channel in self._subs:
                        await conn.execute(f'LISTEN "{channel}"')
                    self.connected, delay = True, 0.2
                    if lost:
                        log.info("storage: LISTEN connection to %s re-established", self.db.where)
                        await self._reconnected()
                    if not started:
                        started = True
                        task_status.started()
                    async for note in conn.notifies():
                        await self._dispatch(note.channel, note.payload)
                finally:
                    with anyio.CancelScope(shield=True):  # closed even when cancelled (shutdown)
                        await conn.close()
            except (psycopg.Error, OSError) as exc:
                if not started:
                    started = True
                    task_status.started()
                if not lost:
                    log.warning("storage: LISTEN connection to %s lost (%s); retrying", self.db.where, _first_line(exc))
                lost = True
            finally:
                self.connected, self._conn = False, None
            await anyio.sleep(delay)
            delay = min(delay * 2, self.retry_max)

    async def _dispatch(self, channel: str, payload: str) -> None:
        for sub in self._subs.get(channel, ()):
            try:
                result = sub.handler(payload)
                if result is not None:
                    await result
            except Exception:
                log.exception("storage: handler for %s failed", channel)

    async def _reconnected(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                if sub.on_reconnect is not None:
                    try:
                        result = sub.on_reconnect()
                        if result is not None:
                            await result
                    except Exception:
                        log.exception("storage: reconnect handler failed")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
