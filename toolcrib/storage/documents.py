"""Named JSON documents shared by the gateway and the CLI: API keys (``keys``) and tool pins (``pins``).

One seam, two backends, chosen by ``[storage] url`` (:func:`open_document`):

- :class:`FileDocument`: a 0600 JSON file. Changes happen under an exclusive ``flock`` on
  ``<path>.lock`` and are written to a temporary file then ``os.replace``\\d over it, so a reader
  never sees half a file; :meth:`~FileDocument.load` re-reads when the file's identity
  ``(inode, mtime_ns, size)`` changed (one ``stat`` per call).
- :class:`PgDocument`: a row of the ``documents`` table (:mod:`toolcrib.storage.migrations`). A change
  is one transaction (``SELECT ... FOR UPDATE``, ``UPDATE`` with ``version + 1`` only when the body
  changed, ``NOTIFY toolcrib_documents, name`` sent at commit). Without a listener (the CLI)
  :meth:`~PgDocument.load` asks for the version with one query per call; once
  :func:`subscribe_documents` made it ``live`` (the gateway), it trusts its cache until
  :meth:`~PgDocument.invalidate`, so a per-request lookup costs no query.

Documents raise only what the owner's ``error`` factory makes (one line, with what to do), so this
module knows nothing of the gateway's or the router's error types.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from toolcrib.errors import StorageError

if TYPE_CHECKING:
    from toolcrib.storage.postgres import Database, Listener

log = logging.getLogger("toolcrib.storage")

CHANNEL = "toolcrib_documents"
"""The NOTIFY channel; the payload is the changed document's name."""

Body = dict[str, Any]
Empty = Callable[[], Body]
ErrorFactory = Callable[[str], Exception]
Parse = Callable[[Any], Body]
"""Checks and normalises a decoded body; raises ``ValueError``/``KeyError``/``TypeError`` when bad."""


@runtime_checkable
class Document(Protocol):
    """A named JSON object that several processes read and change.

    ``load()`` returns the current body (a cached object: do not mutate it); ``changing()`` yields a
    deep copy to mutate, written atomically on exit when it differs (nothing is written when the
    block raises); ``stamp()`` is a value that changes whenever the document changes;
    ``invalidate()`` drops the cache so the next ``load()`` reads again. Every failure raises the
    owner's ``error(message)``.
    """

    name: str

    def load(self) -> Body: ...

    def changing(self) -> contextlib.AbstractContextManager[Body]: ...

    def stamp(self) -> Hashable: ...

    def invalidate(self) -> None: ...


def _identity(parse: Any) -> Body:
    if not isinstance(parse, dict):
        raise TypeError("not a JSON object")
    return parse


def _copy(body: Body) -> Body:
    copied: Body = json.loads(json.dumps(body))
    return copied


class FileDocument:
    """A document in a 0600 JSON file at ``path`` (created with its directory on first change).

    ``what`` names it in messages (``"the API key store"``) and ``remedy`` says what to do when it
    is unreadable; a corrupt file raises ``error(f"{what} {path} is unreadable ({why}); {remedy}")``
    and an unreadable directory ``error(f"cannot read {what} {path} ({strerror})")``. A missing
    file is ``empty()``. ``indent``/``sort_keys`` fix the written JSON's layout.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: str,
        empty: Empty,
        error: ErrorFactory,
        *,
        what: str | None = None,
        remedy: str = "restore it",
        parse: Parse = _identity,
        indent: int = 1,
        sort_keys: bool = False,
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.empty = empty
        self.error = error
        self.what = what or f"document {name!r}"
        self.remedy = remedy
        self.parse = parse
        self.indent = indent
        self.sort_keys = sort_keys
        self._cache: tuple[tuple[int, int, int] | None, Body] | None = None

    def stamp(self) -> tuple[int, int, int] | None:
        """The file's ``(inode, mtime_ns, size)``, or None when it does not exist."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self.error(f"cannot read {self.what} {self.path} ({exc.strerror})") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def load(self) -> Body:
        """The body, re-read only when the file's identity changed since the last read."""
        stamp = self.stamp()
        cache = self._cache
        if stamp is None:
            if cache is None or cache[0] is not None:
                cache = self._cache = (None, self.empty())
            return cache[1]
        if cache is None or cache[0] != stamp:
            try:
                body = self.parse(json.loads(self.path.read_text("utf-8")))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise self.error(f"{self.what} {self.path} is unreadable ({exc}); {self.remedy}") from None
            cache = self._cache = (stamp, body)
        return cache[1]

    def invalidate(self) -> None:
        self._cache = None

    @contextlib.contextmanager
    def changing(self) -> Iterator[Body]:
        """A deep copy of the body under an exclusive lock; written (tmp + ``os.replace``) when changed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            current = self.load()
            data = _copy(current)
            yield data
            if data != current:
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as fp:
                    json.dump(data, fp, indent=self.indent, sort_keys=self.sort_keys)
                os.replace(tmp, self.path)
                self._cache = (self.stamp(), data)
        finally:
            os.close(lock_fd)


class PgDocument:
    """A document in the ``documents`` table of ``db`` (row ``name``; a missing row is ``empty()``).

    ``live`` is False for a process without a :class:`~toolcrib.storage.postgres.Listener`: each
    :meth:`load` then runs one query (the body travels only when the version moved). When True
    (set by :func:`subscribe_documents`) the cache is trusted until :meth:`invalidate`, and only
    while the listener is connected: with it down, changes would go unseen (a revoked key still
    accepted), so each load queries again until it is back. Thread-safe.
    An unreachable database or a missing table raises ``error(message)`` (fail closed).
    """

    def __init__(
        self,
        db: Database,
        name: str,
        empty: Empty,
        error: ErrorFactory,
        *,
        what: str | None = None,
        remedy: str = "restore it",
        parse: Parse = _identity,
    ) -> None:
        self.db = db
        self.name = name
        self.empty = empty
        self.error = error
        self.what = what or f"document {name!r}"
        self.remedy = remedy
        self.parse = parse
        self.live = False
        self.listening: Callable[[], bool] = lambda: True
        """Whether notifications arrive now (set by :func:`subscribe_documents`)."""
        self._lock = threading.Lock()
        self._cache: tuple[int | None, Body] | None = None
        self._stale = True

    def load(self) -> Body:
        """The body: from the cache when live and not invalidated, else after one version query."""
        if self.live and not self._stale and self._cache is not None and self.listening():
            return self._cache[1]
        with self._lock:
            self._stale = False  # an invalidate() from now on makes the next load read again
            cache = self._cache
        known = cache[0] if cache is not None else -1
        with self._guard(), self.db.connection() as conn:
            row = conn.execute(
                "SELECT version, CASE WHEN version IS DISTINCT FROM %s::bigint THEN body END "
                "FROM documents WHERE name = %s",
                (known, self.name),
            ).fetchone()
        if row is None:
            return self._store(None, self.empty(), replace=True)
        version, body = int(row[0]), row[1]
        if body is None and cache is not None:
            return cache[1]
        return self._store(version, self._parse(body), replace=False)

    def stamp(self) -> int | None:
        """The document's version (None before its first change)."""
        self.load()
        cache = self._cache
        return cache[0] if cache is not None else None

    def invalidate(self) -> None:
        self._stale = True

    @contextlib.contextmanager
    def changing(self) -> Iterator[Body]:
        """One transaction: the row locked ``FOR UPDATE``; ``UPDATE`` + ``NOTIFY`` only when changed."""
        from psycopg.types.json import Jsonb

        inside = False
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO documents (name, version, body, updated) VALUES (%s, 0, %s, %s) "
                    "ON CONFLICT (name) DO NOTHING",
                    (self.name, Jsonb(self.empty()), time.time()),
                )
                row = conn.execute(
                    "SELECT version, body FROM documents WHERE name = %s FOR UPDATE", (self.name,)
                ).fetchone()
                assert row is not None
                version, current = int(row[0]), self._parse(row[1])
                data = _copy(current)
                inside = True
                yield data
                inside = False
                if data != current:
                    version += 1
                    conn.execute(
                        "UPDATE documents SET version = %s, body = %s, updated = %s WHERE name = %s",
                        (version, Jsonb(data), time.time(), self.name),
                    )
                    self.db.notify(CHANNEL, self.name, conn)
                else:
                    data = current
        except Exception as exc:
            if inside or not _is_storage_failure(exc):
                raise
            raise self._failure(exc) from None
        self._store(version, data, replace=False)

    def _parse(self, body: Any) -> Body:
        try:
            return self.parse(body)
        except (ValueError, KeyError, TypeError) as exc:
            raise self.error(
                f"{self.what} (document {self.name!r} at {self.db.where}) is unreadable ({exc}); {self.remedy}"
            ) from None

    def _store(self, version: int | None, body: Body, *, replace: bool) -> Body:
        """Cache ``(version, body)`` unless the cache already holds a newer version; return the cached body."""
        with self._lock:
            cache = self._cache
            if replace or cache is None or cache[0] is None or (version is not None and version >= cache[0]):
                self._cache = cache = (version, body)
            return cache[1]

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if not _is_storage_failure(exc):
                raise
            raise self._failure(exc) from None

    def _failure(self, exc: Exception) -> Exception:
        if isinstance(exc, StorageError):
            return self.error(f"{self.what} is unavailable: {exc.message}")
        from psycopg import errors

        why = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        todo = (
            "run `toolcrib db upgrade`"
            if isinstance(exc, errors.UndefinedTable)
            else "check the PostgreSQL server's log"
        )
        return self.error(f"{self.what} at {self.db.where} cannot be read ({why}); {todo}")


def _is_storage_failure(exc: BaseException) -> bool:
    if isinstance(exc, StorageError):
        return True
    import psycopg

    return isinstance(exc, psycopg.Error)


def open_document(
    db: Database | None,
    path: str | os.PathLike[str],
    name: str,
    empty: Empty,
    error: ErrorFactory,
    **options: Any,
) -> Document:
    """A :class:`PgDocument` named ``name`` when ``db`` is given, else a :class:`FileDocument` at ``path``.

    ``options``: ``what``, ``remedy``, ``parse`` for both; ``indent``, ``sort_keys`` for the file
    (ignored for PostgreSQL, whose ``jsonb`` has no layout)."""
    if db is None:
        return FileDocument(path, name, empty, error, **options)
    options.pop("indent", None)
    options.pop("sort_keys", None)
    return PgDocument(db, name, empty, error, **options)


def subscribe_documents(listener: Listener, docs: Iterable[PgDocument]) -> None:
    """Make ``docs`` live: a NOTIFY on ``toolcrib_documents`` invalidates the document it names (and
    re-reads it in a worker thread, so the next request finds it warm); a reconnect invalidates all
    (notifications sent while the connection was down are lost)."""
    import anyio

    by_name = {doc.name: doc for doc in docs}
    for doc in by_name.values():
        doc.live = True
        doc.listening = lambda: listener.connected

    async def changed(payload: str) -> None:
        doc = by_name.get(payload)
        if doc is None:
            return
        doc.invalidate()
        try:
            await anyio.to_thread.run_sync(doc.load)
        except Exception as exc:  # the next load() raises it to whoever needs the document
            log.debug("storage: re-reading document %s failed: %s", payload, exc)

    def reconnected() -> None:
        for doc in by_name.values():
            doc.invalidate()

    listener.subscribe(CHANNEL, changed, reconnected)
