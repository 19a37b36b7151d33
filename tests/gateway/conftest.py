"""Gateway fixtures: an in-memory keyring backend (a real ``KeyringBackend``), a headless one, and the
audit log on both storage backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backend
import keyring.backends.fail
import keyring.errors
import pytest

from toolcrib.gateway.audit.backends import AuditLog
from toolcrib.gateway.audit.log import SqliteAuditLog
from toolcrib.gateway.audit.log_pg import PostgresAuditLog
from toolcrib.storage import migrations
from toolcrib.storage.postgres import Database


class MemoryKeyring(keyring.backend.KeyringBackend):
    """A complete keyring backend that keeps passwords in a dict."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.passwords.pop((service, username), None) is None:
            raise keyring.errors.PasswordDeleteError(username)


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


@pytest.fixture
def no_keyring() -> Iterator[None]:
    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())
    try:
        yield
    finally:
        keyring.set_keyring(previous)


AUDIT_KEY = b"k" * 32
"""The audit key of :func:`backend`."""


@pytest.fixture(params=["sqlite", "pg"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditLog]:
    """The audit log on both backends, keyed with :data:`AUDIT_KEY`: a SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        log: AuditLog = SqliteAuditLog(tmp_path / "audit.db", hmac_key=AUDIT_KEY)
        yield log
        log.close()
        return
    db = Database(request.getfixturevalue("pg_url")).open()
    migrations.upgrade(db)
    yield PostgresAuditLog(db, hmac_key=AUDIT_KEY)
    db.close()
