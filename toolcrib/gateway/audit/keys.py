"""The audit key and the 0600 files around the audit log.

One secret, kept outside the database, authenticates everything the audit log can authenticate:
``secret:toolcrib/audit-hmac`` from the credential store (environment, OS keyring or the secrets
file) if set, else a random 32-byte file ``<db>.key`` created 0600 next to the database; with the
PostgreSQL backend only the secret (:func:`load_shared_hmac_key`: every replica must share it). Keys
are derived from it (HMAC-SHA256 of a label, so one leaked derived key reveals nothing of the
others): the arguments HMAC uses the secret itself (unchanged since the first release), the anchor,
the prune checkpoints, the PostgreSQL head row and the completion seals use :func:`derive` with
their own labels.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

from toolcrib.errors import AuditError
from toolcrib.gateway.audit.text import utf8

if TYPE_CHECKING:
    from toolcrib.gateway.trust.secrets import CredentialStore

HMAC_KEY_REF = "toolcrib/audit-hmac"
ANCHOR_LABEL = b"toolcrib audit anchor v1"
CHECKPOINT_LABEL = b"toolcrib audit checkpoint v1"
SEAL_LABEL = b"toolcrib audit seal v1"
"""Derives the key of a ``call`` row's ``seal`` (its completion in place) and of a ``tally`` row's."""
HEAD_LABEL = b"toolcrib audit head v1"
"""Derives the key of the PostgreSQL log's keyed head row (``audit_head.mac``)."""
PRIVATE = 0o600


def key_file(db_path: str | os.PathLike[str]) -> Path:
    """Where the key lives when the credential store has none: ``<db>.key``."""
    return Path(f"{db_path}.key")


@overload
def load_hmac_key(
    db_path: str | os.PathLike[str], store: CredentialStore | None = None, *, create: Literal[True] = True
) -> bytes: ...


@overload
def load_hmac_key(
    db_path: str | os.PathLike[str], store: CredentialStore | None = None, *, create: bool
) -> bytes | None: ...


def load_hmac_key(
    db_path: str | os.PathLike[str], store: CredentialStore | None = None, *, create: bool = True
) -> bytes | None:
    """The audit key: ``secret:toolcrib/audit-hmac`` if set, else the 0600 file ``<db>.key``.

    With ``create`` (the server) a missing file is made with 32 random bytes; without it (readers
    such as ``toolcrib audit verify``) a missing key gives None. Raises :class:`AuditError` when the
    file is readable by group or others.
    """
    if store is not None and (value := store.get(HMAC_KEY_REF)):
        return value.encode()
    path = key_file(db_path)
    if not create:
        if not path.exists():
            return None
        return _read_private(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    except FileExistsError:
        return _read_private(path)
    with os.fdopen(fd, "wb") as fp:
        key = secrets.token_bytes(32)
        fp.write(key)
    return key


def load_shared_hmac_key(store: CredentialStore | None) -> bytes:
    """The audit key every replica of a PostgreSQL-backed gateway shares: ``secret:toolcrib/audit-hmac``.

    There is no file fallback (a key file per replica would give every replica its own key, and
    their rows would not verify under one). Raises :class:`AuditError` (one line, with the command
    to run) when the secret is not set."""
    value = store.get(HMAC_KEY_REF) if store is not None else None
    if not value:
        raise AuditError(
            f"with [storage] url set, every replica needs the same audit key secret:{HMAC_KEY_REF}; generate one "
            "with `python3 -c 'import secrets; print(secrets.token_hex(32))'` and store it on each replica with "
            "`toolcrib creds set toolcrib audit-hmac` (or TOOLCRIB_SECRET_TOOLCRIB_AUDIT_HMAC)"
        )
    return value.encode()


def _read_private(path: Path) -> bytes:
    if path.stat().st_mode & 0o077:
        raise AuditError(f"audit key file {path} is readable by group or others; run `chmod 600 {path}`")
    return path.read_bytes()


def derive(key: bytes, label: bytes) -> bytes:
    """A sub-key for one purpose: HMAC-SHA256(key, label)."""
    return hmac.new(key, label, hashlib.sha256).digest()


def mac(key: bytes, message: str) -> str:
    """Hex HMAC-SHA256 of ``message`` under ``key``: its UTF-8 with lone surrogates written as
    ``\\udxxx`` (:func:`~toolcrib.gateway.audit.text.utf8`), so it never raises."""
    return hmac.new(key, utf8(message), hashlib.sha256).hexdigest()


def make_private(*paths: str | os.PathLike[str]) -> None:
    """``chmod 600`` each existing file (files this process does not own are left alone)."""
    for path in paths:
        with contextlib.suppress(OSError):
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, PRIVATE)


def create_private(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (so SQLite opens it, not creates it)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))
