"""API keys: ``tcb_`` + 43 random URL-safe characters, shown once; only SHA-256 digests are stored.

The store is a :class:`~toolcrib.storage.documents.Document` shared by the server and the CLI: a
0600 JSON file whose identity (inode, mtime, size) every lookup checks, or the ``keys`` row in
PostgreSQL, which a running gateway re-reads when notified. Either way ``toolcrib keys revoke``
takes effect on the next request of a running server. SHA-256 is enough here: the keys carry 256 bits
of entropy, so there is nothing to brute-force. An unreadable store raises
:class:`~toolcrib.gateway.trust.auth.AuthUnavailable` (fail closed).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolcrib.errors import AuthError, ToolcribError
from toolcrib.gateway.trust.identity import Principal
from toolcrib.storage.documents import Document, FileDocument, open_document

if TYPE_CHECKING:
    from toolcrib.storage.postgres import Database

KEY_PREFIX = "tcb_"
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class AuthUnavailable(AuthError):
    """The key store or the issuer's JWKS cannot be read: refuse, never let through (HTTP 503)."""

    status = 503
    error: str | None = None


@dataclass(frozen=True)
class ApiKeyInfo:
    """One stored key, as :meth:`ApiKeyStore.list` shows it (never the key itself)."""

    name: str
    groups: tuple[str, ...]
    created: float
    prefix: str


class ApiKeyStore:
    """API keys (only their SHA-256 digests) in a document: ``{"version": 1, "keys": [{name, sha256,
    groups, created, prefix}]}``; re-read whenever it changes. Failures raise :class:`AuthUnavailable`."""

    def __init__(self, source: str | os.PathLike[str] | Document) -> None:
        """``source``: the key file's path, or a :class:`~toolcrib.storage.documents.Document`
        (see :func:`key_document`)."""
        self.document = key_document(None, source) if isinstance(source, (str, os.PathLike)) else source
        self.path: Path | None = self.document.path if isinstance(self.document, FileDocument) else None

    def add(self, name: str, groups: Iterable[str] = ()) -> str:
        """Create a key for ``name``; return it (this is the only time it is shown)."""
        if not _KEY_NAME.fullmatch(name):
            raise ToolcribError(f"key name {name!r}: use 1-64 letters, digits or _.@- (starting alphanumeric)")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._changing() as keys:
            if any(k["name"] == name for k in keys):
                raise ToolcribError(f"a key named {name!r} exists; revoke it first or pick another name")
            keys.append(
                {
                    "name": name,
                    "sha256": _digest(key),
                    "groups": sorted(set(groups)),
                    "created": time.time(),
                    "prefix": key[: len(KEY_PREFIX) + 4],
                }
            )
        return key

    def list(self) -> list[ApiKeyInfo]:
        """Every key's name, groups, creation time and first characters."""
        return [
            ApiKeyInfo(k["name"], tuple(k.get("groups", ())), float(k.get("created", 0)), k.get("prefix", ""))
            for k in self._load()
        ]

    def revoke(self, name: str) -> None:
        """Delete ``name``'s key; requests using it fail from the next request on."""
        with self._changing() as keys:
            kept = [k for k in keys if k["name"] != name]
            if len(kept) == len(keys):
                raise ToolcribError(f"no key named {name!r}; see `toolcrib keys list`")
            keys[:] = kept

    def lookup(self, key: str) -> Principal | None:
        """The principal whose key this is, comparing every digest in constant time; None if none."""
        digest = _digest(key)
        found = None
        for entry in self._load():
            if hmac.compare_digest(str(entry.get("sha256", "")), digest):
                found = entry
        if found is None:
            return None
        return Principal("key", found["name"], frozenset(found.get("groups", ())))

    def _load(self) -> builtins.list[dict[str, Any]]:
        keys: builtins.list[dict[str, Any]] = self.document.load()["keys"]
        return keys

    @contextlib.contextmanager
    def _changing(self) -> Iterator[builtins.list[dict[str, Any]]]:
        with self.document.changing() as data:
            yield data["keys"]


def key_document(db: Database | None, path: str | os.PathLike[str]) -> Document:
    """The API keys' document: the file at ``path``, or the row ``keys`` of ``db``'s ``documents``."""
    return open_document(
        db, path, "keys", _empty, AuthUnavailable, what="the API key store", remedy="restore it", parse=_parse
    )


def _empty() -> dict[str, Any]:
    return {"version": 1, "keys": []}


def _parse(data: Any) -> dict[str, Any]:
    keys = data["keys"]
    if not isinstance(keys, list) or not all(isinstance(k, dict) and "name" in k for k in keys):
        raise ValueError("bad key list")
    return dict(data)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
