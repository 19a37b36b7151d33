"""API keys: ``tcb_`` + 43 random URL-safe characters, shown once; only SHA-256 digests are stored.

The store is a 0600 JSON file shared by the server and the CLI. Every lookup checks the file's
identity (inode, mtime, size) and re-reads it when it changed, so ``toolcrib keys revoke`` takes
effect on the next request of a running server. SHA-256 is enough here: the keys carry 256 bits
of entropy, so there is nothing to brute-force. An unreadable store raises
:class:`~toolcrib.gateway.trust.auth.AuthUnavailable` (fail closed).
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolcrib.errors import AuthError, ToolcribError
from toolcrib.gateway.trust.identity import Principal

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
    """API keys in a 0600 JSON file holding only SHA-256 digests; re-read whenever the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._keys: builtins.list[dict[str, Any]] = []

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
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._keys = None, []
            return self._keys
        except OSError as exc:
            raise AuthUnavailable(f"cannot read the API key store {self.path} ({exc.strerror})") from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text("utf-8"))
                keys = data["keys"]
                if not isinstance(keys, list) or not all(isinstance(k, dict) and "name" in k for k in keys):
                    raise ValueError("bad key list")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise AuthUnavailable(f"the API key store {self.path} is unreadable ({exc}); restore it") from None
            self._keys, self._stamp = keys, stamp
        return self._keys

    @contextlib.contextmanager
    def _changing(self) -> Iterator[builtins.list[dict[str, Any]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            keys = [dict(k) for k in self._load()]
            yield keys
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fp:
                json.dump({"version": 1, "keys": keys}, fp, indent=1)
            os.replace(tmp, self.path)
        finally:
            os.close(lock_fd)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
