"""Upstream list changes shared between replicas (``[storage] url``).

Each replica has its own connection to every upstream, so a change one connection announces (a stdio
server whose tools changed because of a call made through replica A) may never reach replica B's
connection. When a replica's upstream reports ``tools``/``resources``/``prompts`` changed, it
publishes ``NOTIFY toolcrib_upstreams {replica, server, kind}``; every other replica re-lists that
kind on its own connection (:meth:`~toolcrib.router.upstreams.Upstream.relist`) and tells its clients
only if its listing changed, so sessions whose GET streams it holds hear of it and a change
echoes at most once.
"""

from __future__ import annotations

import json
import logging
import secrets

import anyio.to_thread

from toolcrib.router.pool import Pool
from toolcrib.storage.postgres import Database, Listener

log = logging.getLogger("toolcrib.pool")
CHANNEL = "toolcrib_upstreams"
KINDS = {"tools_changed": "tools", "resources_changed": "resources", "prompts_changed": "prompts"}


def share_list_changes(pool: Pool, db: Database, listener: Listener, replica: str | None = None) -> str:
    """Publish this replica's upstream list changes and re-list on others'; returns the replica id."""
    me = replica or secrets.token_hex(6)

    async def publish(server: str, what: str) -> None:
        kind = KINDS.get(what)
        if kind is None:
            return
        payload = json.dumps({"replica": me, "server": server, "kind": kind})
        try:
            await anyio.to_thread.run_sync(db.notify, CHANNEL, payload)
        except Exception as exc:
            log.warning("could not tell other replicas that %s's %s changed (%s)", server, kind, exc)

    def received(payload: str) -> None:
        try:
            note = json.loads(payload)
            replica_id, server, kind = str(note["replica"]), str(note["server"]), str(note["kind"])
        except (ValueError, KeyError, TypeError):
            return
        if replica_id == me:
            return
        upstream = pool.upstreams.get(server)
        if upstream is not None:
            upstream.relist([kind])

    pool.subscribe(publish)
    listener.subscribe(CHANNEL, received)
    return me
