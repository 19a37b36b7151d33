"""The token-savings ledger: what clients would have loaded with the full tool list vs what they loaded.

Per UTC day and per principal (``kind`` + ``subject`` of :class:`~toolcrib.gateway.trust.identity.Principal`,
never a display string) the ledger keeps three counters:

- ``full_tokens``: for each ``tools/list`` answered, the tokens of every tool this principal may see
  by policy (not quarantined), each as its JSON definition (:func:`tool_json`), counted with
  :func:`toolcrib.tokens.count_tokens` (``o200k_base``, or the bytes/4 estimate offline);
- ``loaded_tokens``: the tokens of the ``tools/list`` it really got (dispatcher mode: ``search_tools``,
  ``invoke`` and the loaded / ``always_expose`` tools) plus the text of every ``search_tools`` result;
- ``lists``: how many ``tools/list`` answers.

Saved = full - loaded (a day can be negative when a client searches much and lists little). In
passthrough mode a client loads the full list, so full == loaded and saved is 0: recorded anyway.

Hot path: counts are cached per tool definition (key + pin hash) and the full-list total per
(catalog snapshot, policy, quarantine, visible set), so a ``tools/list`` costs a dict lookup and an
in-memory add. A background thread flushes the rows every :data:`FLUSH_SECONDS` and on
:meth:`SavingsLedger.close` to the store: the SQLite file ``savings.db`` beside ``[audit] path``
(embedded default), or the ``token_savings`` table (migration 2) when ``[storage] url`` is set,
where every replica adds into the same rows (``INSERT ... ON CONFLICT DO UPDATE SET x = x + EXCLUDED.x``).
Queries add the counts not flushed yet.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import mcp_types as types

from toolcrib.errors import StorageError, ToolcribError
from toolcrib.gateway.trust.identity import Principal
from toolcrib.tokens import count_tokens, tokenizer_info

if TYPE_CHECKING:
    from toolcrib.config import Config
    from toolcrib.router.catalog import Catalog
    from toolcrib.storage.postgres import Database

log = logging.getLogger("toolcrib.savings")

FLUSH_SECONDS = 5.0
"""How often the background thread writes the in-memory rows to the store."""
ENCODING = "o200k_base"

Key = tuple[str, str, str]
"""``(day as YYYY-MM-DD, principal kind, principal subject)``."""


@dataclass
class Counts:
    """``full`` and ``loaded`` in tokens, ``lists`` = tools/list answers."""

    full: int = 0
    loaded: int = 0
    lists: int = 0

    def add(self, full: int, loaded: int, lists: int) -> None:
        self.full += full
        self.loaded += loaded
        self.lists += lists


@dataclass(frozen=True)
class DayRow:
    """One UTC day summed over principals. Tokens; ``saved = full - loaded``."""

    day: dt.date
    full: int
    loaded: int
    saved: int
    lists: int


@dataclass(frozen=True)
class PrincipalRow:
    """One principal summed over a range of days. Tokens; ``saved = full - loaded``."""

    kind: str
    subject: str
    full: int
    loaded: int
    saved: int
    lists: int

    @property
    def id(self) -> str:
        """``KIND:SUBJECT`` (as :attr:`Principal.id`)."""
        return f"{self.kind}:{self.subject}"


def utc_day(ts: float) -> dt.date:
    """The UTC calendar day of a Unix time in seconds."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).date()


def tool_json(tool: types.Tool) -> str:
    """A tool's definition as a client receives it in ``tools/list``: compact JSON of its wire form
    (camelCase keys, unset fields left out). What ``full_tokens`` and ``loaded_tokens`` count."""
    return json.dumps(
        tool.model_dump(mode="json", by_alias=True, exclude_none=True), ensure_ascii=False, separators=(",", ":")
    )


# ---- stores ------------------------------------------------------------------------------------


class SavingsStore(Protocol):
    """Where flushed rows live. ``add`` sums into existing rows; queries are inclusive day ranges."""

    where: str

    def add(self, rows: Mapping[Key, Counts]) -> None: ...

    def days(self, since: dt.date, until: dt.date) -> dict[dt.date, Counts]: ...

    def by_principal(self, since: dt.date, until: dt.date) -> dict[tuple[str, str], Counts]: ...

    def close(self) -> None: ...


class SqliteSavingsStore:
    """The embedded store: one SQLite file (WAL), safe to share with a CLI reading it.

    ``create=False`` raises :class:`ToolcribError` when the file does not exist (nothing recorded yet)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        if not create and not self.path.exists():
            raise ToolcribError(
                f"no token savings recorded yet: {self.path} does not exist (a gateway writes it while it serves)"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS token_savings (day text NOT NULL, principal_kind text NOT NULL, "
                "principal_subject text NOT NULL, full_tokens integer NOT NULL DEFAULT 0, "
                "loaded_tokens integer NOT NULL DEFAULT 0, lists integer NOT NULL DEFAULT 0, "
                "PRIMARY KEY (day, principal_kind, principal_subject))"
            )
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the savings file {self.path}: {exc}; check the directory") from None
        self._lock = threading.Lock()

    def add(self, rows: Mapping[Key, Counts]) -> None:
        values = [(d, k, s, c.full, c.loaded, c.lists) for (d, k, s), c in sorted(rows.items())]
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT INTO token_savings VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (day, principal_kind, principal_subject) DO UPDATE SET "
                    "full_tokens = full_tokens + excluded.full_tokens, "
                    "loaded_tokens = loaded_tokens + excluded.loaded_tokens, lists = lists + excluded.lists",
                    values,
                )
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                raise StorageError(f"cannot write token savings to {self.path}: {exc}") from None

    def _select(self, sql: str, since: dt.date, until: dt.date) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, (since.isoformat(), until.isoformat())).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read token savings from {self.path}: {exc}") from None

    def days(self, since: dt.date, until: dt.date) -> dict[dt.date, Counts]:
        rows = self._select(
            "SELECT day, sum(full_tokens), sum(loaded_tokens), sum(lists) FROM token_savings "
            "WHERE day BETWEEN ? AND ? GROUP BY day",
            since,
            until,
        )
        return {dt.date.fromisoformat(d): Counts(int(f), int(lo), int(n)) for d, f, lo, n in rows}

    def by_principal(self, since: dt.date, until: dt.date) -> dict[tuple[str, str], Counts]:
        rows = self._select(
            "SELECT principal_kind, principal_subject, sum(full_tokens), sum(loaded_tokens), sum(lists) "
            "FROM token_savings WHERE day BETWEEN ? AND ? GROUP BY principal_kind, principal_subject",
            since,
            until,
        )
        return {(k, s): Counts(int(f), int(lo), int(n)) for k, s, f, lo, n in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PgSavingsStore:
    """The ``token_savings`` table of the shared database (migration 2). Replicas add into the same
    rows; keys are written in sorted order so two replicas' flushes never deadlock. The database is
    the caller's to close."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.where = db.where

    def add(self, rows: Mapping[Key, Counts]) -> None:
        values = [(dt.date.fromisoformat(d), k, s, c.full, c.loaded, c.lists) for (d, k, s), c in sorted(rows.items())]
        with self.db.transaction() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO token_savings AS t (day, principal_kind, principal_subject, full_tokens, "
                "loaded_tokens, lists) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (day, principal_kind, principal_subject) DO UPDATE SET "
                "full_tokens = t.full_tokens + EXCLUDED.full_tokens, "
                "loaded_tokens = t.loaded_tokens + EXCLUDED.loaded_tokens, lists = t.lists + EXCLUDED.lists",
                values,
            )

    def days(self, since: dt.date, until: dt.date) -> dict[dt.date, Counts]:
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT day, sum(full_tokens), sum(loaded_tokens), sum(lists) FROM token_savings "
                "WHERE day BETWEEN %s AND %s GROUP BY day",
                (since, until),
            ).fetchall()
        return {d: Counts(int(f), int(lo), int(n)) for d, f, lo, n in rows}

    def by_principal(self, since: dt.date, until: dt.date) -> dict[tuple[str, str], Counts]:
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT principal_kind, principal_subject, sum(full_tokens), sum(loaded_tokens), sum(lists) "
                "FROM token_savings WHERE day BETWEEN %s AND %s GROUP BY principal_kind, principal_subject",
                (since, until),
            ).fetchall()
        return {(k, s): Counts(int(f), int(lo), int(n)) for k, s, f, lo, n in rows}

    def close(self) -> None:
        pass


def savings_path(config: Config) -> Path:
    """The embedded store's file: ``savings.db`` in the directory of ``[audit] path`` (by default
    ``.toolcrib/savings.db`` beside the config file, as :func:`toolcrib.config.resolve_paths` anchors it)."""
    return Path(config.audit.path).expanduser().parent / "savings.db"


def open_savings_store(config: Config, db: Database | None, *, create: bool = True) -> SavingsStore:
    """PostgreSQL's ``token_savings`` when ``db`` is given (``[storage] url``), else :func:`savings_path`."""
    if db is not None:
        return PgSavingsStore(db)
    return SqliteSavingsStore(savings_path(config), create=create)


# ---- the ledger ----------------------------------------------------------------------------------


class SavingsLedger:
    """Per-day, per-principal counters: added in memory (:meth:`record`), flushed in the background.

    ``clock``: Unix seconds (the day of a record is its UTC day at record time). ``on_record``: called
    with each record's ``(full, loaded)`` tokens (both >= 0, so each can feed a Prometheus counter;
    saved = full - loaded); an exception it raises is logged, never passed to the caller.
    ``flush_every``: seconds between background flushes (None: no thread; call :meth:`flush`). A flush
    that fails keeps the rows for the next one.
    """

    def __init__(
        self,
        store: SavingsStore,
        *,
        clock: Callable[[], float] = time.time,
        on_record: Callable[[int, int], None] | None = None,
        flush_every: float | None = FLUSH_SECONDS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_record = on_record
        self._pending: dict[Key, Counts] = {}
        self._inflight: dict[Key, Counts] = {}
        self._lock = threading.Lock()
        """Guards ``_pending`` (held only for a dict update)."""
        self._flushing = threading.Lock()
        """One flush at a time; queries hold it so a row is never counted twice or missed."""
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        if flush_every is not None:
            self._thread = threading.Thread(target=self._run, args=(flush_every,), name="toolcrib-savings", daemon=True)
            self._thread.start()

    @property
    def where(self) -> str:
        return self.store.where

    def record(self, principal: Principal, *, full: int, loaded: int, lists: int = 0) -> None:
        """Add one observation (tokens; ``lists`` = tools/list answers) to today's row of ``principal``."""
        key = (utc_day(self.clock()).isoformat(), principal.kind, principal.subject)
        with self._lock:
            row = self._pending.get(key)
            if row is None:
                row = self._pending[key] = Counts()
            row.add(full, loaded, lists)
        if self.on_record is not None:
            try:
                self.on_record(full, loaded)
            except Exception:
                log.exception("token savings: the on_record callback failed")

    def flush(self) -> int:
        """Write every row recorded so far; return how many rows were written. Raises
        :class:`StorageError` (the rows stay in memory for the next flush)."""
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            self._inflight = batch
            try:
                self.store.add(batch)
            except BaseException:
                with self._lock:
                    for key, c in batch.items():
                        self._pending.setdefault(key, Counts()).add(c.full, c.loaded, c.lists)
                raise
            finally:
                self._inflight = {}
            return len(batch)

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.flush()
            except Exception as exc:
                message = exc.message if isinstance(exc, ToolcribError) else repr(exc)
                log.warning("token savings: flush failed, will retry: %s", message)

    def close(self) -> None:
        """Stop the background thread, flush what is left and close the store (idempotent). A final
        flush that fails is logged with the rows it loses."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.flush()
        except Exception as exc:
            message = exc.message if isinstance(exc, ToolcribError) else repr(exc)
            log.error("token savings: the last %d rows were not written: %s", len(self._pending), message)
        self.store.close()

    def _unflushed(self) -> list[tuple[Key, Counts]]:
        with self._lock:
            return [(k, Counts(c.full, c.loaded, c.lists)) for k, c in self._pending.items()]

    def days(self, since_day: dt.date, until_day: dt.date) -> list[DayRow]:
        """Each day in ``[since_day, until_day]`` (UTC, inclusive) that has rows, oldest first, summed over
        principals, unflushed counts included. Raises :class:`StorageError`."""
        with self._flushing:
            sums = self.store.days(since_day, until_day)
            for (d, _, _), c in self._unflushed():
                day = dt.date.fromisoformat(d)
                if since_day <= day <= until_day:
                    sums.setdefault(day, Counts()).add(c.full, c.loaded, c.lists)
        return [DayRow(d, c.full, c.loaded, c.full - c.loaded, c.lists) for d, c in sorted(sums.items())]

    def by_principal(self, day_from: dt.date, day_to: dt.date) -> list[PrincipalRow]:
        """Each principal with rows in ``[day_from, day_to]`` (inclusive), summed over those days,
        most saved first. Raises :class:`StorageError`."""
        with self._flushing:
            sums = self.store.by_principal(day_from, day_to)
            for (d, kind, subject), c in self._unflushed():
                if day_from <= dt.date.fromisoformat(d) <= day_to:
                    sums.setdefault((kind, subject), Counts()).add(c.full, c.loaded, c.lists)
        rows = [PrincipalRow(k, s, c.full, c.loaded, c.full - c.loaded, c.lists) for (k, s), c in sums.items()]
        return sorted(rows, key=lambda r: (-r.saved, r.kind, r.subject))

    def today(self) -> dt.date:
        """The current UTC day by this ledger's clock."""
        return utc_day(self.clock())

    def saved_today(self) -> int:
        """Tokens saved today (UTC) over every principal, unflushed counts included."""
        day = self.today()
        return sum(r.saved for r in self.days(day, day))


# ---- the meter: what the gateway calls on its hot path -------------------------------------------


class _TrustView(Protocol):
    @property
    def rules(self) -> object: ...

    @property
    def default(self) -> object: ...

    @property
    def quarantined(self) -> Mapping[str, str]: ...

    def may_use(self, principal: Principal, target: str) -> bool: ...

    def is_quarantined(self, key: str) -> bool: ...


class _PoolView(Protocol):
    @property
    def catalog(self) -> Catalog: ...


class GatewayView(Protocol):
    """What :class:`SavingsMeter` reads of :class:`toolcrib.gateway.server.Gateway`."""

    @property
    def mode(self) -> str: ...

    @property
    def pool(self) -> _PoolView: ...

    @property
    def trust(self) -> _TrustView: ...


CACHE_MAX = 10_000
"""Entries per cache (tool definitions, principals, visible sets) before it is cleared."""


class SavingsMeter:
    """Counts what a ``tools/list`` or a ``search_tools`` answer costs and records it in a ledger.

    Caches: tokens per tool definition (key + pin hash); per principal its visible set and per
    visible set the full-list total, both dropped when the catalog snapshot, the policy rules or
    the quarantine set is replaced."""

    def __init__(self, ledger: SavingsLedger, encoding: str = ENCODING, *, warm: bool = True) -> None:
        """``warm``: load the tokenizer in a background thread now (about a second, once per process)
        rather than on the event loop at the first ``tools/list``."""
        self.ledger = ledger
        self.encoding = encoding
        if warm:
            threading.Thread(target=tokenizer_info, args=(encoding,), name="toolcrib-tokenizer", daemon=True).start()
        self._tokens: dict[tuple[str, str], int] = {}
        self._visible: dict[Principal, frozenset[str]] = {}
        self._totals: dict[frozenset[str], int] = {}
        self._stamp: tuple[object, ...] = ()

    def tool_tokens(self, tool: types.Tool, hash_: str = "") -> int:
        """Tokens of :func:`tool_json` of ``tool``, cached by ``(name, hash_)``."""
        key = (tool.name, hash_)
        n = self._tokens.get(key)
        if n is None:
            if len(self._tokens) >= CACHE_MAX:
                self._tokens.clear()
            n = self._tokens[key] = count_tokens(tool_json(tool), self.encoding)
        return n

    def _check_stamp(self, gateway: GatewayView) -> Catalog:
        trust = gateway.trust
        trust.is_quarantined("")  # lets the pin store reload (at most once a second)
        catalog = gateway.pool.catalog
        stamp = (catalog, trust.rules, trust.quarantined, trust.default)
        if len(stamp) != len(self._stamp) or any(a is not b for a, b in zip(stamp, self._stamp, strict=True)):
            self._stamp = stamp
            self._visible.clear()
            self._totals.clear()
        return catalog

    def full_tokens(self, gateway: GatewayView, principal: Principal) -> int:
        """Tokens of every tool ``principal`` may see (the passthrough ``tools/list``)."""
        catalog = self._check_stamp(gateway)
        visible = self._visible.get(principal)
        if visible is None:
            if len(self._visible) >= CACHE_MAX:
                self._visible.clear()
            visible = frozenset(k for k in catalog.tools if gateway.trust.may_use(principal, k))
            self._visible[principal] = visible
        total = self._totals.get(visible)
        if total is None:
            if len(self._totals) >= CACHE_MAX:
                self._totals.clear()
            entries = catalog.tools
            total = self._totals[visible] = sum(self.tool_tokens(entries[k].tool, entries[k].hash) for k in visible)
        return total

    def listed_tokens(self, gateway: GatewayView, tools: Iterable[types.Tool]) -> int:
        """Tokens of a ``tools/list`` answer."""
        entries = gateway.pool.catalog.tools
        total = 0
        for tool in tools:
            entry = entries.get(tool.name)
            total += self.tool_tokens(tool, entry.hash if entry is not None and entry.tool is tool else "")
        return total

    def listed(self, gateway: GatewayView, principal: Principal, tools: Sequence[types.Tool]) -> None:
        """Record one ``tools/list`` answer of ``tools`` to ``principal``."""
        full = self.full_tokens(gateway, principal)
        loaded = full if gateway.mode == "passthrough" else self.listed_tokens(gateway, tools)
        self.ledger.record(principal, full=full, loaded=loaded, lists=1)

    def searched(self, principal: Principal, result: types.CallToolResult) -> None:
        """Record the text of one ``search_tools`` result as loaded by ``principal``."""
        text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
        self.ledger.record(principal, full=0, loaded=count_tokens(text, self.encoding))
