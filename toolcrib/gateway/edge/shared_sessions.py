"""2025-11-25 sessions any replica can serve (``[storage] url`` set to PostgreSQL).

A session's state lives in the ``sessions`` table: the typed principal (kind, subject, groups), the
client's ``initialize`` params, whether it sent ``notifications/initialized``, the tools
``search_tools`` loaded into it, its resource subscriptions and log level, and a revision number.
A replica that receives a POST for a session it does not hold *adopts* it: it checks the row's
principal against the caller (``KIND:SUBJECT``; another principal gets 403 as on one replica),
starts a local server loop primed with the stored ``initialize``, and applies the stored state. A
request that changed the state writes it back before its answer exists (``Peer.persist``) and
publishes ``{"session", "changed"}``; a replica holding a copy then re-reads the row (one indexed
query, off the event loop) before that session's next request there, and otherwise serves it from
memory with no query. Two requests of one session
racing on two replicas: the last write wins. A lost LISTEN connection marks every copy stale.

A session's GET stream is held by one replica. A message for that stream produced on another
replica (a ``tools/list_changed`` after ``search_tools`` loaded tools there, a resource update) is
published with ``NOTIFY toolcrib_sessions``; the replica holding the stream delivers it. A
``DELETE`` on any replica removes the row and tells every replica to drop its copy. Rows idle longer
than ``[gateway] session_ttl`` are deleted by any replica's reaper.

Payloads are JSON: ``{"session": ID, "message": JSON-RPC notification}``,
``{"session": ID, "changed": REPLICA}`` or ``{"session": ID, "close": true}`` (at most 8000 bytes;
a larger notification is dropped with a debug log, as a notification to a gone client is).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from psycopg.types.json import Jsonb

from toolcrib.gateway.trust.identity import Principal
from toolcrib.storage.postgres import Database, Listener

if TYPE_CHECKING:
    from toolcrib.gateway.edge.sessions import HttpSession

log = logging.getLogger("toolcrib.http")
CHANNEL = "toolcrib_sessions"
NOTIFY_MAX = 7900
TOUCH_EVERY = 30.0
"""Seconds between ``last_seen`` writes of a session whose state did not change (at most a quarter
of ``session_ttl``, so a session in use never looks idle to another replica's reaper)."""


@dataclass(frozen=True)
class StoredSession:
    """One row: the typed principal and the state (see :func:`snapshot`)."""

    id: str
    principal: Principal
    state: dict[str, Any]


def snapshot(sess: HttpSession) -> dict[str, Any]:
    """The shareable state of ``sess`` (JSON)."""
    peer = sess.peer
    return {
        "init": sess.init,
        "initialized": sess.initialized,
        "loaded": list(peer.loaded),
        "subscriptions": sorted(peer.subscriptions),
        "log_level": peer.log_level,
    }


def apply(sess: HttpSession, state: dict[str, Any]) -> None:
    """Make ``sess`` hold ``state`` (from another replica)."""
    peer = sess.peer
    sess.initialized = bool(state.get("initialized")) or sess.initialized
    peer.loaded.clear()
    for key in state.get("loaded") or ():
        peer.loaded[str(key)] = None
    peer.subscriptions = {str(uri) for uri in state.get("subscriptions") or ()}
    peer.log_level = state.get("log_level")


class SessionDirectory:
    """The ``sessions`` table and the ``toolcrib_sessions`` channel for one replica.

    ``deliver(session_id, message)`` is called for a notification published for a session this
    replica may hold; ``close(session_id)`` when another replica ended it."""

    def __init__(self, db: Database, *, ttl: float) -> None:
        self.db = db
        self.ttl = ttl
        self.replica = secrets.token_hex(6)
        self.touch_every = min(TOUCH_EVERY, ttl / 4)
        self._saved: dict[str, tuple[dict[str, Any], float]] = {}
        self._fresh: set[str] = set()
        """Sessions whose local copy is known to match the row (no other replica changed it since)."""
        self.live = False
        """Set once :meth:`listen` subscribed: without notifications no copy is ever fresh."""

    def listen(
        self, listener: Listener, deliver: Callable[[str, dict[str, Any]], None], close: Callable[[str], None]
    ) -> None:
        def on_note(payload: str) -> None:
            try:
                note = json.loads(payload)
                sid = str(note["session"])
            except (ValueError, KeyError, TypeError):
                log.debug("sessions: ignored a malformed notification")
                return
            if note.get("close"):
                self._fresh.discard(sid)
                close(sid)
            elif "changed" in note:
                if note["changed"] != self.replica:
                    self._fresh.discard(sid)
            elif isinstance(note.get("message"), dict):
                deliver(sid, note["message"])

        self.live = True
        listener.subscribe(CHANNEL, on_note, self._fresh.clear)

    def fresh(self, sid: str) -> bool:
        """True when this replica's copy of ``sid`` needs no re-read before serving a request."""
        return sid in self._fresh

    async def create(self, sess: HttpSession) -> None:
        """Record a new session (right after its ``initialize`` was answered)."""
        principal, state, now = sess.peer.principal, snapshot(sess), time.time()
        await anyio.to_thread.run_sync(self._insert, sess.peer.id, principal, state, now)
        self._saved[sess.peer.id] = (state, now)
        self._mark(sess.peer.id)

    def _mark(self, sid: str) -> None:
        if self.live:
            self._fresh.add(sid)

    def _insert(self, sid: str, principal: Principal, state: dict[str, Any], now: float) -> None:
        with self.db.connection() as conn:
            conn.execute(
                "INSERT INTO sessions (id, principal_kind, principal_subject, principal_groups, state, created, "
                "last_seen) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (sid, principal.kind, principal.subject, sorted(principal.groups), Jsonb(state), now, now),
            )

    async def load(self, sid: str) -> StoredSession | None:
        """The stored session, or None when there is none (never created, deleted, or expired)."""
        return await anyio.to_thread.run_sync(self._select, sid)

    def _select(self, sid: str) -> StoredSession | None:
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT principal_kind, principal_subject, principal_groups, state, last_seen FROM sessions "
                "WHERE id = %s",
                (sid,),
            ).fetchone()
        if row is None or time.time() - float(row[4]) > self.ttl:
            return None
        kind, subject, groups, state, _ = row
        return StoredSession(sid, Principal(kind, subject, frozenset(groups or ())), dict(state))

    async def save(self, sess: HttpSession) -> None:
        """Write ``sess``'s state back when it changed (or its ``last_seen`` is older than 30 s)."""
        sid, state, now = sess.peer.id, snapshot(sess), time.time()
        last = self._saved.get(sid)
        if last is not None and last[0] == state and now - last[1] < self.touch_every:
            return
        changed = last is None or last[0] != state
        self._saved[sid] = (state, now)
        await anyio.to_thread.run_sync(self._update, sid, state, now, changed)

    def _update(self, sid: str, state: dict[str, Any], now: float, changed: bool) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE sessions SET state = %s, last_seen = %s WHERE id = %s", (Jsonb(state), now, sid))
            if changed:
                self.db.notify(CHANNEL, json.dumps({"session": sid, "changed": self.replica}), conn)

    def seen(self, sid: str, state: dict[str, Any]) -> None:
        """Remember ``state`` as what the row holds (after adopting or refreshing from it)."""
        self._saved[sid] = (state, 0.0)  # the row's last_seen is not ours: the next save touches it
        self._mark(sid)

    async def delete(self, sid: str) -> None:
        """Remove the session everywhere (``DELETE /mcp`` on any replica)."""
        self._saved.pop(sid, None)
        self._fresh.discard(sid)
        await anyio.to_thread.run_sync(self._delete, sid)

    def _delete(self, sid: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE id = %s", (sid,))
            self.db.notify(CHANNEL, json.dumps({"session": sid, "close": True}), conn)

    def forget(self, sid: str) -> None:
        """This replica dropped its copy (idle, evicted): the row stays for the others."""
        self._saved.pop(sid, None)
        self._fresh.discard(sid)

    async def publish(self, sid: str, message: dict[str, Any]) -> None:
        """Send a notification to whichever replica holds ``sid``'s GET stream."""
        payload = json.dumps({"session": sid, "message": message}, separators=(",", ":"))
        if len(payload.encode()) > NOTIFY_MAX:
            log.debug("session %s: a %d-byte notification is too large to relay; dropped", sid[:8], len(payload))
            return
        await anyio.to_thread.run_sync(self.db.notify, CHANNEL, payload)

    async def reap(self, busy: Callable[[], list[str]]) -> None:
        """Every ``min(60 s, ttl/4)``: touch the sessions this replica is busy with (``busy()``: a call
        in flight or a GET stream open, so never idle) and delete rows idle longer than ``ttl``;
        runs until cancelled."""
        while True:
            await anyio.sleep(min(60.0, max(0.05, self.ttl / 4)))
            try:
                await anyio.to_thread.run_sync(self._reap, busy())
            except Exception as exc:  # the database being away must not end the replica
                log.warning("sessions: could not expire idle sessions (%s)", str(exc).splitlines()[0])

    def _reap(self, busy: list[str]) -> None:
        now = time.time()
        with self.db.transaction() as conn:
            if busy:
                conn.execute("UPDATE sessions SET last_seen = %s WHERE id = ANY(%s)", (now, busy))
            conn.execute("DELETE FROM sessions WHERE last_seen < %s", (now - self.ttl,))
