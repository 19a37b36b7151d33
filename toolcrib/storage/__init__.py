"""The seam for shared state: the embedded default (SQLite and files) or PostgreSQL.

``[storage] url`` chooses. Unset, every store keeps its own file beside the config, as a single
process needs (:mod:`toolcrib.gateway.audit.log`, :mod:`toolcrib.gateway.trust.approvals`,
:mod:`toolcrib.gateway.trust.apikeys`, :mod:`toolcrib.router.pins`, the index directory). Set to a
``postgresql://`` URL, every store keeps its state in that database instead, so any number of
replicas share it: :mod:`~toolcrib.storage.postgres` (connections, NOTIFY, the LISTEN connection),
:mod:`~toolcrib.storage.migrations` (the versioned schema), :mod:`~toolcrib.storage.documents`
(named JSON documents: API keys, pins).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toolcrib.errors import StorageError

if TYPE_CHECKING:
    from toolcrib.config import Config
    from toolcrib.gateway.trust.secrets import CredentialStore
    from toolcrib.storage.postgres import Database


def open_database(config: Config, secrets: CredentialStore | None = None) -> Database | None:
    """The configured PostgreSQL database, connected, or None for the embedded default.

    ``secrets`` resolves ``[storage] password`` (default: the chain the gateway uses: keyring,
    ``[secrets] file``, environment). Raises :class:`StorageError` when it is unreachable and
    :class:`~toolcrib.errors.SecretError` when the password reference cannot be resolved."""
    storage = config.storage
    if storage.url is None:
        return None
    from toolcrib.storage.postgres import Database

    password = None
    if storage.password is not None:
        from toolcrib.gateway.trust.secrets import ChainStore, missing_secret, parse_ref

        parse_ref(storage.password)
        password = (secrets or ChainStore(config.secrets.file)).get(storage.password)
        if password is None:
            raise missing_secret(storage.password)
    db = Database(storage.url, password=password, pool_size=storage.pool_size, connect_timeout=storage.connect_timeout)
    return db.open()


__all__ = ["StorageError", "open_database"]
