"""Retrieval that learns from use: the queries that led to a tool being used, kept as its anchors.

A *pair* is a ``search_tools`` query followed, by the same principal in the same session (for a
client without a session id, stdio or stateless HTTP: the same client name and transport) within
``window`` seconds (default 600), by a **successful** call of a tool that search returned: an audit
``outcome`` row with ``outcome = "ok"`` and ``decision`` ``allow`` or ``approve``. Denied, refused,
quarantined, failed, timed-out or cancelled calls never make a pair (:func:`pairs`).

Each pair adds a use to one *anchor* of the tool: the query text normalised
(:func:`~toolcrib.index.embedder.normalize_query`), embedded once with the index's query model.
An anchor's ``mass`` is its decayed use count: each use adds 1 and the whole mass halves every
``half_life`` (default 30 days). Its weight is ``1 - 2 ** -mass`` in ``[0, 1)``: 0.5 after one
fresh use, 0.75 after two, falling back toward 0 as uses age. A tool keeps at most ``cap``
anchors (default 32); beyond that the lightest one is dropped.

At search time (:class:`UsageSignal`) a tool's usage signal is ``max`` over its anchors of
``relu((cos(query, anchor) - threshold) / (1 - threshold)) * weight`` in ``[0, 1)``; the index adds
``blend * usage`` to the fused score as the ``usage_term`` part (:mod:`toolcrib.index.search`).
Anchors change rankings only: results are still filtered by the principal's ``allowed`` check,
so an anchor never makes a tool visible to a principal that may not use it.

Stored beside the index (:func:`usage_store`): ``usage.json`` under ``[index] path`` (a lock file
serialises writers), or with ``[storage] url`` the row ``"default"`` of ``index_usage`` (migration
3), shared by replicas: a mining pass locks the row, so replicas never mine the same rows twice.
Mining (:class:`UsageMiner`) reads the audit through ``AuditLog.query`` (either backend) from the last
mined ``seq`` on, in the gateway's background (:class:`UsageLearner`), never on a request path.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from toolcrib.errors import IndexError_, StorageError
from toolcrib.index.embedder import Embedder, embed_queries, normalize_query

if TYPE_CHECKING:
    from toolcrib.index.store import Snapshot
    from toolcrib.storage.postgres import Database

log = logging.getLogger(__name__)

FORMAT = "toolcrib-usage/1"
FILE = "usage.json"
HALF_LIFE_DAYS = 30.0
CAP = 32
WINDOW = 600.0
#: Cosine below which an anchor adds nothing (chosen on the tune split, benchmarks/usage_replay.py).
THRESHOLD = 0.3
#: Weight of the usage signal in the score (chosen on the tune split, benchmarks/usage_replay.py).
BLEND = 0.5
GOOD_DECISIONS = frozenset({"allow", "approve"})
#: Rows read from the audit per page and at most per mining pass.
PAGE = 1000
MAX_ROWS = 200_000
DAY = 86400.0


@dataclass
class Anchor:
    """One query that led to a tool: normalised ``text``, decayed use count ``mass`` as of ``at``
    (epoch seconds of the last use), ``count`` uses in all, ``first`` use (epoch seconds)."""

    text: str
    mass: float
    at: float
    count: int
    first: float

    def mass_at(self, now: float, half_life: float) -> float:
        """The decayed use count at ``now`` (never negative; never grows with time)."""
        return self.mass * decay(max(0.0, now - self.at), half_life)

    def weight(self, now: float, half_life: float) -> float:
        """``1 - 2 ** -mass_at(now)``: in ``[0, 1)``, grows with uses, decays with age."""
        return float(1.0 - 2.0 ** -self.mass_at(now, half_life))


def decay(age: float, half_life: float) -> float:
    """``0.5 ** (age / half_life)`` (``age``, ``half_life`` in seconds; 1 for ``age <= 0``)."""
    return 1.0 if age <= 0 else 0.5 ** (age / half_life)


@dataclass
class UsageState:
    """Every tool's anchors, their query vectors and the audit ``seq`` mined up to.

    ``vectors``: normalised text -> unit float32 vector of the query model ``fingerprint``."""

    anchors: dict[str, list[Anchor]] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    last_seq: int = 0
    fingerprint: str = ""

    def count(self) -> int:
        return sum(len(a) for a in self.anchors.values())

    def add_use(
        self, tool: str, text: str, ts: float, *, cap: int = CAP, half_life: float = HALF_LIFE_DAYS * DAY
    ) -> bool:
        """Record one use of ``tool`` after the query ``text`` at ``ts``; True when a new anchor was made
        (its vector is then missing from :attr:`vectors`). Keeps at most ``cap`` anchors per tool."""
        key = normalize_query(text)
        if not key:
            return False
        anchors = self.anchors.setdefault(tool, [])
        for a in anchors:
            if a.text == key:
                if ts >= a.at:
                    a.mass = a.mass * decay(ts - a.at, half_life) + 1.0
                    a.at = ts
                else:  # an older use mined late: it adds what is left of it today
                    a.mass += decay(a.at - ts, half_life)
                a.count += 1
                a.first = min(a.first, ts)
                return False
        anchors.append(Anchor(key, 1.0, ts, 1, ts))
        if len(anchors) > cap:
            anchors.sort(key=lambda a: (a.mass_at(ts, half_life), a.at), reverse=True)
            del anchors[cap:]
        self._drop_unused()
        return any(a.text == key for a in anchors)

    def reset(self, tool: str | None = None) -> int:
        """Forget every anchor (``tool`` None) or one tool's; returns how many anchors were dropped."""
        if tool is None:
            dropped = self.count()
            self.anchors.clear()
            self.vectors.clear()
            return dropped
        dropped = len(self.anchors.pop(tool, []))
        self._drop_unused()
        return dropped

    def _drop_unused(self) -> None:
        used = {a.text for anchors in self.anchors.values() for a in anchors}
        for text in [t for t in self.vectors if t not in used]:
            del self.vectors[text]

    def missing_vectors(self) -> list[str]:
        return sorted({a.text for anchors in self.anchors.values() for a in anchors} - set(self.vectors))

    # stored form --------------------------------------------------------------------------------

    def encode(self) -> tuple[dict[str, Any], bytes]:
        """``(meta JSON, vectors bytes)``: texts in order, anchors by text index, float32 rows."""
        texts = sorted(self.vectors)
        index = {t: i for i, t in enumerate(texts)}
        dim = len(next(iter(self.vectors.values()))) if self.vectors else 0
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "last_seq": self.last_seq,
            "dim": dim,
            "texts": texts,
            "tools": {
                tool: [[index.get(a.text, -1), a.text, a.mass, a.at, a.count, a.first] for a in anchors]
                for tool, anchors in sorted(self.anchors.items())
                if anchors
            },
        }
        raw = np.stack([self.vectors[t] for t in texts]).astype(np.float32).tobytes() if texts else b""
        return meta, raw

    @classmethod
    def decode(cls, meta: Any, raw: bytes) -> UsageState:
        """The state from :meth:`encode`'s form; :class:`IndexError_` when it is not one."""
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise IndexError_(
                f"the stored usage anchors are not {FORMAT}; reset them with `toolcrib index usage reset`"
            )
        try:
            texts = [str(t) for t in meta["texts"]]
            dim = int(meta["dim"])
            matrix = np.frombuffer(raw, dtype=np.float32).reshape(len(texts), dim) if texts else None
            vectors = {t: np.array(matrix[i]) for i, t in enumerate(texts)} if matrix is not None else {}
            anchors = {
                str(tool): [Anchor(str(r[1]), float(r[2]), float(r[3]), int(r[4]), float(r[5])) for r in rows]
                for tool, rows in meta["tools"].items()
            }
            return cls(anchors, vectors, int(meta["last_seq"]), str(meta["fingerprint"]))
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise IndexError_(
                f"the stored usage anchors are damaged ({type(exc).__name__}: {exc}); "
                "reset them with `toolcrib index usage reset`"
            ) from None


# Mining -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """A search and the successful call it led to: ``tool``, query ``text`` (as searched),
    ``ts`` of the call's outcome, and the audit ``seq`` of both rows."""

    tool: str
    text: str
    ts: float
    principal: str
    session: str | None
    search_seq: int
    outcome_seq: int


IN_FLIGHT = 600.0
"""Seconds a pending ``call`` row holds mining back (a call still running may yet end ``ok``);
an older one is taken as unfinished (the gateway stopped mid-call) and mined past."""


def good_call(row: Mapping[str, Any]) -> bool:
    """A call that may teach the index: a completed ``call`` row or an ``outcome`` row (logs written
    before ``call`` rows), ``ok``, decided ``allow`` or ``approve``, naming a tool and a principal."""
    return (
        row.get("kind") in ("call", "outcome")
        and row.get("outcome") == "ok"
        and row.get("decision") in GOOD_DECISIONS
        and bool(row.get("tool"))
        and bool(row.get("principal"))
    )


def _same_session(search: Mapping[str, Any], call: Mapping[str, Any]) -> bool:
    if search.get("principal") != call.get("principal"):
        return False
    if search.get("session") is not None:
        return bool(search.get("session") == call.get("session"))
    # no session id (stdio, or a stateless 2025-11-25 HTTP client): the same principal, client and transport
    return (
        call.get("session") is None
        and search.get("transport") == call.get("transport")
        and search.get("client_name") == call.get("client_name")
    )


def query_texts(query: Any) -> list[str]:
    """The query strings of a ``search`` row's ``query`` column (a string, or JSON of a list)."""
    if not isinstance(query, str) or not query.strip():
        return []
    if query.startswith("["):
        with contextlib.suppress(ValueError):
            items = json.loads(query)
            if isinstance(items, list):
                return [q for q in items if isinstance(q, str) and q.strip()]
    return [query]


def pairs(
    searches: Sequence[Mapping[str, Any]], calls: Sequence[Mapping[str, Any]], window: float = WINDOW
) -> list[Pair]:
    """The pairs in these audit rows: each good call (:func:`good_call`) with the latest earlier search
    by the same principal in the same session, at most ``window`` seconds before, whose results list
    the tool. Each good call is one pair (two calls after one search: two uses of its anchor); a
    multi-query search (a JSON list in ``query``) gives one pair per query of the list."""
    by_who: dict[tuple[Any, Any], list[Mapping[str, Any]]] = {}
    for s in sorted(searches, key=lambda r: int(r["seq"])):
        if s.get("kind") == "search" and s.get("principal"):
            by_who.setdefault((s.get("principal"), s.get("session")), []).append(s)
    out: list[Pair] = []
    for call in sorted(calls, key=lambda r: int(r["seq"])):
        if not good_call(call):
            continue
        tool, ts = str(call["tool"]), float(call["ts"])
        for s in reversed(by_who.get((call.get("principal"), call.get("session")), [])):
            if int(s["seq"]) >= int(call["seq"]) or not _same_session(s, call):
                continue
            if float(s["ts"]) < ts - window:
                break
            results = s.get("results")
            if not isinstance(results, list) or tool not in results:
                continue
            for text in query_texts(s.get("query")):
                out.append(
                    Pair(tool, text, ts, str(call["principal"]), call.get("session"), int(s["seq"]), int(call["seq"]))
                )
            break
    return out


class AuditReader(Protocol):
    """What mining needs of an ``AuditLog`` (either backend): its ``query``."""

    def query(
        self,
        *,
        principal: str | None = None,
        tool: str | None = None,
        since: float | None = None,
        outcome: str | None = None,
        kind: str | None = None,
        request_id: str | None = None,
        method: str | None = None,
        decision: str | None = None,
        until: float | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...


def _scan(
    audit: AuditReader, *, after: int, head: int, max_rows: int = MAX_ROWS, **filters: Any
) -> list[dict[str, Any]]:
    """Rows with ``after < seq <= head`` matching ``filters``, oldest first (paged back from ``head``)."""
    out: list[dict[str, Any]] = []
    before = head + 1
    while len(out) < max_rows:
        rows = audit.query(before=before, limit=PAGE, **filters)
        fresh = [r for r in rows if int(r["seq"]) > after]
        out.extend(fresh)
        if len(fresh) < len(rows) or len(rows) < PAGE:
            break
        before = int(rows[0]["seq"])
    out.sort(key=lambda r: int(r["seq"]))
    return out


def _settled(audit: AuditReader, head: int, clock: float) -> int:
    """The highest seq up to which no ``call`` row is still in flight (pending, written less than
    :data:`IN_FLIGHT` seconds ago): a call row is completed in place, after its seq was handed out."""
    pending = audit.query(kind="call", outcome="pending", since=clock - IN_FLIGHT, limit=PAGE)
    flying = [int(r["seq"]) for r in pending if r.get("completed") is None and int(r["seq"]) <= head]
    return min(flying) - 1 if flying else head


@dataclass(frozen=True)
class MineReport:
    """What a mining pass did: ``pairs`` found, ``new_anchors`` made, ``anchors`` now, audit rows
    mined up to ``last_seq``, in ``seconds``."""

    pairs: int
    new_anchors: int
    anchors: int
    last_seq: int
    seconds: float


# Storage ----------------------------------------------------------------------------------------


class UsageStore(Protocol):
    """Where the anchors live: :class:`FileUsage` or :class:`PgUsage`."""

    @property
    def where(self) -> str: ...

    def load(self) -> UsageState:
        """The stored state (empty when nothing is stored); :class:`IndexError_` if unreadable."""
        ...

    def update(self, change: Callable[[UsageState], None]) -> UsageState:
        """Load under an exclusive lock, apply ``change`` in place, save; returns the saved state."""
        ...


@dataclass(frozen=True)
class FileUsage:
    """``usage.json`` (meta with the vectors in base64) in the index directory, written atomically,
    writers serialised by ``flock`` on ``usage.lock``."""

    directory: Path

    @property
    def where(self) -> str:
        return str(self.directory / FILE)

    def load(self) -> UsageState:
        path = self.directory / FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return UsageState()
        except (OSError, ValueError) as exc:
            raise IndexError_(
                f"cannot read the usage anchors at {path} ({exc}); reset them with `toolcrib index usage reset`"
            ) from None
        raw = base64.b64decode(str(data.get("vectors", ""))) if isinstance(data, dict) else b""
        return UsageState.decode(data, raw)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / "usage.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise IndexError_(
                f"cannot write the usage anchors in {self.directory} ({exc.strerror or exc}); "
                "fix its permissions or set [index] path to a writable directory"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def update(self, change: Callable[[UsageState], None]) -> UsageState:
        with self._locked():
            state = self.load()
            change(state)
            meta, raw = state.encode()
            meta["vectors"] = base64.b64encode(raw).decode()
            data = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode()
            fd, tmp = tempfile.mkstemp(prefix=f".{FILE}.", suffix=".tmp", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.directory / FILE)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return state


class PgUsage:
    """The row ``name`` of ``index_usage`` (``meta`` jsonb, ``vectors`` bytea, ``updated``); an update
    holds ``SELECT ... FOR UPDATE`` on it, so replicas mine and reset one after another."""

    def __init__(self, db: Database, name: str = "default") -> None:
        self.db = db
        self.name = name

    @property
    def where(self) -> str:
        return f"{self.db.where} (index_usage {self.name!r})"

    def _fail(self, verb: str, exc: Exception) -> IndexError_:
        why = (
            exc.message
            if isinstance(exc, StorageError)
            else str(exc).strip().splitlines()[0]
            if str(exc).strip()
            else type(exc).__name__
        )
        return IndexError_(
            f"cannot {verb} the usage anchors at {self.where}: {why}; "
            "check that the database is reachable and its schema current (`toolcrib db upgrade`)"
        )

    def load(self) -> UsageState:
        import psycopg

        try:
            with self.db.connection() as conn:
                row = conn.execute("SELECT meta, vectors FROM index_usage WHERE name = %s", (self.name,)).fetchone()
        except (StorageError, psycopg.Error) as exc:
            raise self._fail("read", exc) from None
        return UsageState() if row is None else UsageState.decode(row[0], bytes(row[1]))

    def update(self, change: Callable[[UsageState], None]) -> UsageState:
        import psycopg
        from psycopg.types.json import Jsonb

        try:
            with self.db.transaction() as conn:
                empty, raw = UsageState().encode()
                conn.execute(
                    "INSERT INTO index_usage (name, meta, vectors, updated) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (name) DO NOTHING",
                    (self.name, Jsonb(empty), raw, time.time()),
                )
                row = conn.execute(
                    "SELECT meta, vectors FROM index_usage WHERE name = %s FOR UPDATE", (self.name,)
                ).fetchone()
                assert row is not None
                state = UsageState.decode(row[0], bytes(row[1]))
                change(state)
                meta, raw = state.encode()
                conn.execute(
                    "UPDATE index_usage SET meta = %s, vectors = %s, updated = %s WHERE name = %s",
                    (Jsonb(meta), raw, time.time(), self.name),
                )
                return state
        except (StorageError, psycopg.Error) as exc:
            raise self._fail("write", exc) from None


def usage_store(index_path: str | os.PathLike[str], db: Database | None) -> UsageStore:
    """Where the anchors of this index live: the ``index_usage`` row with a database, else
    ``usage.json`` in ``[index] path``."""
    return PgUsage(db) if db is not None else FileUsage(Path(index_path))


# Ranking ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _View:
    """Anchors ready to score: unit rows ``matrix``, each row's tool key and weight at build time."""

    matrix: np.ndarray
    owners: tuple[str, ...]
    weights: np.ndarray


class UsageSignal:
    """The usage signal of a :class:`~toolcrib.index.search.ToolIndex` (its ``usage`` attribute).

    ``blend``: the score gets ``blend * usage``; ``threshold``: the cosine below which an anchor adds
    nothing. :meth:`load` swaps in a new state atomically (searches see the old or the new anchors).
    ``enabled`` False turns blending off without dropping the anchors.
    """

    def __init__(
        self, *, blend: float = BLEND, threshold: float = THRESHOLD, half_life_days: float = HALF_LIFE_DAYS
    ) -> None:
        if not 0.0 <= threshold < 1.0:
            raise ValueError("the usage threshold must be within [0, 1)")
        self.blend = blend
        self.threshold = threshold
        self.half_life = half_life_days * DAY
        self.enabled = True
        self._view: _View | None = None
        self._rows: tuple[int, int, np.ndarray] | None = None  # (id(snapshot), id(view), owner rows)

    def load(self, state: UsageState, now: float | None = None) -> None:
        """Use ``state``'s anchors (only those with a vector) weighted as of ``now``."""
        now = time.time() if now is None else now
        owners: list[str] = []
        vectors: list[np.ndarray] = []
        weights: list[float] = []
        for tool, anchors in state.anchors.items():
            for a in anchors:
                vector = state.vectors.get(a.text)
                w = a.weight(now, self.half_life)
                if vector is not None and w > 0:
                    owners.append(tool)
                    vectors.append(vector)
                    weights.append(w)
        self._view = (
            _View(np.stack(vectors).astype(np.float32), tuple(owners), np.asarray(weights, dtype=np.float32))
            if owners
            else None
        )

    def __len__(self) -> int:
        view = self._view
        return 0 if view is None else len(view.owners)

    def scores(self, snap: Snapshot, qvec: np.ndarray) -> np.ndarray | None:
        """Per snapshot row, the usage signal for the query vector ``qvec`` (float32 in ``[0, 1)``);
        None when no anchor applies (nothing learned, disabled, or no anchor over the threshold)."""
        view = self._view
        if view is None or not self.enabled or self.blend <= 0:
            return None
        cached = self._rows
        if cached is not None and cached[0] == id(snap) and cached[1] == id(view):
            rows = cached[2]
        else:
            rows = np.asarray([snap.rows.get(k, -1) for k in view.owners], dtype=np.int64)
            self._rows = (id(snap), id(view), rows)
        sims = view.matrix @ qvec
        value = np.maximum(sims - self.threshold, 0.0) / (1.0 - self.threshold) * view.weights
        keep = (value > 0) & (rows >= 0)
        if not keep.any():
            return None
        out = np.zeros(len(snap), dtype=np.float32)
        np.maximum.at(out, rows[keep], value[keep].astype(np.float32))
        return out


# Mining into a store ----------------------------------------------------------------------------


class UsageMiner:
    """Mines the audit into a :class:`UsageStore` and refreshes a :class:`UsageSignal`.

    ``embedder``: the index's (queries are embedded with its query model, as searches are).
    :meth:`mine` is blocking (audit reads, embeddings, a store write): run it in a worker thread.
    """

    def __init__(
        self,
        audit: AuditReader,
        store: UsageStore,
        embedder: Embedder,
        signal: UsageSignal | None = None,
        *,
        window: float = WINDOW,
        half_life_days: float = HALF_LIFE_DAYS,
        cap: int = CAP,
    ) -> None:
        if cap < 1:
            raise ValueError("the anchor cap must be at least 1")
        self.audit = audit
        self.store = store
        self.embedder = embedder
        self.signal = signal
        self.window = window
        self.half_life = half_life_days * DAY
        self.cap = cap
        self._lock = threading.Lock()

    def _fingerprint(self) -> str:
        return str(getattr(self.embedder, "query_fingerprint", self.embedder.fingerprint))

    def refresh(self) -> UsageState:
        """Load the stored anchors into the signal (no mining)."""
        state = self.store.load()
        if self.signal is not None and state.fingerprint in ("", self._fingerprint()):
            self.signal.load(state)
        return state

    def mine(self, now: float | None = None) -> MineReport:
        """One pass: the audit rows after the stored ``last_seq`` become uses of anchors."""
        started = time.perf_counter()
        found: list[Pair] = []
        made = 0

        def change(state: UsageState) -> None:
            nonlocal made
            fingerprint = self._fingerprint()
            if state.fingerprint != fingerprint:
                state.vectors.clear()  # another query model: every anchor is re-embedded
                state.fingerprint = fingerprint
            tail = self.audit.query(limit=1)
            head = int(tail[-1]["seq"]) if tail else 0
            clock = time.time() if now is None else now
            head = min(head, _settled(self.audit, head, clock))
            if head > state.last_seq:
                since = max(0.0, clock - 8 * self.half_life) if state.last_seq == 0 else None
                calls = _scan(self.audit, after=state.last_seq, head=head, outcome="ok", since=since)
                calls = [c for c in calls if good_call(c)]
                if calls:
                    first = min(float(c["ts"]) for c in calls)
                    searches = _scan(
                        self.audit,
                        after=0,
                        head=head,
                        kind="search",
                        since=first - self.window,
                        until=max(float(c["ts"]) for c in calls) + 1,
                    )
                    found.extend(pairs(searches, calls, self.window))
                for p in found:
                    made += state.add_use(p.tool, p.text, p.ts, cap=self.cap, half_life=self.half_life)
                state.last_seq = head
            missing = state.missing_vectors()
            for start in range(0, len(missing), 64):
                chunk = missing[start : start + 64]
                vectors = embed_queries(self.embedder, chunk)
                for text, vector in zip(chunk, vectors, strict=True):
                    state.vectors[text] = np.asarray(vector, dtype=np.float32)

        with self._lock:
            state = self.store.update(change)
            if self.signal is not None:
                self.signal.load(state, now)
        return MineReport(len(found), made, state.count(), state.last_seq, time.perf_counter() - started)

    def reset(self, tool: str | None = None) -> int:
        """Drop the anchors (all, or ``tool``'s), keeping ``last_seq``; returns how many."""
        dropped = 0

        def change(state: UsageState) -> None:
            nonlocal dropped
            dropped = state.reset(tool)

        with self._lock:
            state = self.store.update(change)
            if self.signal is not None:
                self.signal.load(state)
        return dropped


def export_rows(
    state: UsageState, now: float | None = None, half_life_days: float = HALF_LIFE_DAYS
) -> list[dict[str, Any]]:
    """One JSON-able row per anchor (``tool``, ``query``, ``weight``, ``mass``, ``count``, ``first``,
    ``last`` epoch seconds), heaviest first per tool, tools sorted."""
    now = time.time() if now is None else now
    out = []
    for tool in sorted(state.anchors):
        anchors = sorted(state.anchors[tool], key=lambda a: -a.mass_at(now, half_life_days * DAY))
        for a in anchors:
            out.append(
                {
                    "tool": tool,
                    "query": a.text,
                    "weight": round(a.weight(now, half_life_days * DAY), 6),
                    "mass": round(a.mass_at(now, half_life_days * DAY), 6),
                    "count": a.count,
                    "first": a.first,
                    "last": a.at,
                }
            )
    return out


def replay(
    state: UsageState,
    uses: Sequence[tuple[str, str]],
    embed: Callable[[list[str]], np.ndarray],
    *,
    ts: float | None = None,
    cap: int = CAP,
) -> UsageState:
    """Record ``(tool, query)`` uses at ``ts`` and embed the new anchors with ``embed`` (benchmarks,
    tests): the same as mining pairs, without an audit log."""
    ts = time.time() if ts is None else ts
    for tool, text in uses:
        state.add_use(tool, text, ts, cap=cap)
    missing = state.missing_vectors()
    if missing:
        for text, vector in zip(missing, embed(missing), strict=True):
            state.vectors[text] = np.asarray(vector, dtype=np.float32)
    return state


__all__ = [
    "BLEND",
    "CAP",
    "HALF_LIFE_DAYS",
    "THRESHOLD",
    "WINDOW",
    "Anchor",
    "FileUsage",
    "MineReport",
    "Pair",
    "PgUsage",
    "UsageMiner",
    "UsageSignal",
    "UsageState",
    "UsageStore",
    "decay",
    "export_rows",
    "good_call",
    "pairs",
    "replay",
    "usage_store",
]
