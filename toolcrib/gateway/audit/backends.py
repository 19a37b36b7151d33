"""Choose the audit backend from the config: the SQLite file (embedded default) or PostgreSQL.

``[storage] url`` unset: :class:`~toolcrib.gateway.audit.log.SqliteAuditLog` at ``[audit] path``
with its keyed anchor file. Set: :class:`~toolcrib.gateway.audit.log_pg.PostgresAuditLog` in that
database, one chain shared by every replica. Both have the same public interface (:data:`AuditLog`)
and write rows with the same hash, so ``toolcrib audit export`` output verifies the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toolcrib.gateway.audit.keys import HMAC_KEY_REF, load_hmac_key, load_shared_hmac_key
from toolcrib.gateway.audit.log import SqliteAuditLog
from toolcrib.gateway.audit.log_pg import PostgresAuditLog

if TYPE_CHECKING:
    from toolcrib.config import Config
    from toolcrib.gateway.trust.secrets import CredentialStore, Redactor
    from toolcrib.storage.postgres import Database

AuditLog = SqliteAuditLog | PostgresAuditLog
"""Either backend: ``append``, ``append_many``, ``args_hmac``, ``query``, ``tail``, ``export_jsonl``,
``prune_count``, ``prune``, ``tally``, ``verify``, ``checkpoint``, ``close``, ``schema``, ``where``, ``blocking_io``."""

__all__ = ["AuditLog", "PostgresAuditLog", "SqliteAuditLog", "audit_key", "open_audit_log"]


def audit_key(
    config: Config, db: Database | None, store: CredentialStore | None, *, create: bool = True
) -> bytes | None:
    """The audit key for this backend.

    SQLite: ``secret:toolcrib/audit-hmac`` or the ``<path>.key`` file (made when ``create``).
    PostgreSQL: only the secret, which every replica must share; with ``create`` (a server) its
    absence raises a one-line :class:`~toolcrib.errors.AuditError` saying how to set it, without
    (a reader such as ``toolcrib audit verify``) it gives None and verify is unkeyed."""
    if db is None:
        return load_hmac_key(config.audit.path, store, create=create)
    if create:
        return load_shared_hmac_key(store)
    value = store.get(HMAC_KEY_REF) if store is not None else None
    return value.encode() if value else None


def open_audit_log(
    config: Config,
    db: Database | None,
    *,
    hmac_key: bytes | None,
    redactor: Redactor | None = None,
    create: bool = True,
) -> AuditLog:
    """The audit log ``config`` names: PostgreSQL when ``db`` is given (the open ``[storage]``
    database), else the SQLite file at ``[audit] path`` (anchor at ``[audit] anchor_path``).

    ``create`` makes the SQLite file or applies pending PostgreSQL migrations; without it a missing
    log or an old schema raises :class:`~toolcrib.errors.AuditError` /
    :class:`~toolcrib.errors.StorageError` (one line, with what to do)."""
    if db is not None:
        return PostgresAuditLog(db, hmac_key=hmac_key, redactor=redactor, create=create)
    return SqliteAuditLog(
        config.audit.path,
        hmac_key=hmac_key,
        anchor_path=config.audit.anchor_path,
        redactor=redactor,
        create=create,
    )
