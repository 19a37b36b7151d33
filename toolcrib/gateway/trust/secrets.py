"""Downstream secrets: ``secret:NS/NAME`` references, their resolution, and redaction.

A reference may appear anywhere inside a string value of the config (``"Bearer secret:linear/key"``).
It is resolved only at the upstream edge, in this order:

1. the environment variable ``TOOLCRIB_SECRET_<NS>_<NAME>`` (upper-cased, other characters -> ``_``);
2. the OS keyring, service ``toolcrib``, username ``NS/NAME`` (the ``fail``/``null`` backends of a
   headless machine count as absent);
3. the opt-in secrets file from ``[secrets] file``: TOML, ``[NS] NAME = "value"``, mode 0600 (a file
   readable by group or others is refused; a warning is logged whenever it is used).

When none has it, :class:`SecretError` names all three ways to provide it.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import keyring
import keyring.backends.fail
import keyring.backends.null
import keyring.errors
import tomli_w

from toolcrib.errors import SecretError

if TYPE_CHECKING:
    from toolcrib.config import ServerConfig

log = logging.getLogger(__name__)

KEYRING_SERVICE = "toolcrib"
ENV_PREFIX = "TOOLCRIB_SECRET_"
_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
REF_RE = re.compile(rf"secret:({_PART})/({_PART})")
"""A reference inside a string; the name ends at the first character outside ``[A-Za-z0-9_.-]``."""


class CredentialStore(Protocol):
    """Looks a secret up by ``NS/NAME`` (a ``secret:`` prefix is accepted); None when absent."""

    def get(self, ref: str) -> str | None: ...


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``NS/NAME`` or ``secret:NS/NAME`` into its parts; raise :class:`SecretError` if malformed."""
    text = ref if ref.startswith("secret:") else f"secret:{ref}"
    match = REF_RE.fullmatch(text)
    if match is None:
        raise SecretError(f"{ref!r} is not a secret reference; write secret:NAMESPACE/NAME (letters, digits, _.-)")
    return match.group(1), match.group(2)


def env_var_name(ref: str) -> str:
    """The environment variable consulted first for ``ref``."""
    ns, name = parse_ref(ref)
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", f"{ns}_{name}".upper())


class EnvStore:
    """Secrets from ``TOOLCRIB_SECRET_*`` environment variables."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def get(self, ref: str) -> str | None:
        return self._environ.get(env_var_name(ref)) or None


def keyring_available() -> bool:
    """False on a headless machine where keyring falls back to its ``fail`` or ``null`` backend."""
    backend = keyring.get_keyring()
    return not isinstance(backend, keyring.backends.fail.Keyring | keyring.backends.null.Keyring)


class KeyringStore:
    """Secrets from the OS keyring (service ``toolcrib``, username ``NS/NAME``)."""

    def get(self, ref: str) -> str | None:
        ns, name = parse_ref(ref)
        if not keyring_available():
            return None
        try:
            value = keyring.get_password(KEYRING_SERVICE, f"{ns}/{name}")
        except keyring.errors.KeyringError as exc:
            log.debug("keyring lookup of %s/%s failed: %s", ns, name, exc)
            return None
        return value or None


class FileStore:
    """Secrets from an opt-in TOML file (``[NS] NAME = "value"``) that must be mode 0600."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._warned = False

    def _load(self) -> dict[str, Any]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        if st.st_mode & 0o077:
            raise SecretError(
                f"secrets file {self.path} is readable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):o}); run `chmod 600 {self.path}`"
            )
        with self._lock:
            if self._cache is not None and self._cache[0] == st.st_mtime:
                return self._cache[1]
            try:
                data = tomllib.loads(self.path.read_text("utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise SecretError(f"secrets file {self.path} cannot be read ({exc}); fix or remove it") from None
            self._cache = (st.st_mtime, data)
            return data

    def get(self, ref: str) -> str | None:
        ns, name = parse_ref(ref)
        table = self._load().get(ns)
        value = table.get(name) if isinstance(table, dict) else None
        if not isinstance(value, str) or not value:
            return None
        if not self._warned:
            log.warning("using secrets from the plaintext file %s; prefer the OS keyring", self.path)
            self._warned = True
        return value

    def set(self, ref: str, value: str) -> None:
        """Write one secret, creating the file with mode 0600 and replacing it atomically."""
        ns, name = parse_ref(ref)
        data = dict(self._load())
        data[ns] = {**data.get(ns, {}), name: value}
        self._write(data)

    def delete(self, ref: str) -> bool:
        ns, name = parse_ref(ref)
        data = dict(self._load())
        table = dict(data.get(ns, {}))
        if table.pop(name, None) is None:
            return False
        data[ns] = table
        self._write({k: v for k, v in data.items() if v})
        return True

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fp:
            fp.write(tomli_w.dumps(data).encode())
        os.replace(tmp, self.path)


class ChainStore:
    """Environment, then keyring, then the optional secrets file: the first one that has it wins."""

    def __init__(
        self, secrets_file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.env = EnvStore(environ)
        self.keyring = KeyringStore()
        self.file = FileStore(secrets_file) if secrets_file else None

    def get(self, ref: str) -> str | None:
        return self.env.get(ref) or self.keyring.get(ref) or (self.file.get(ref) if self.file else None)

    def source(self, ref: str) -> str | None:
        """Where ``ref`` resolves from (``env``, ``keyring``, ``file``), without revealing the value."""
        if self.env.get(ref):
            return "env"
        if self.keyring.get(ref):
            return "keyring"
        if self.file is not None and self.file.get(ref):
            return "file"
        return None

    def require(self, ref: str) -> str:
        """The secret's value, or :class:`SecretError` naming every way to provide it."""
        value = self.get(ref)
        if value is None:
            raise missing_secret(ref)
        return value


def missing_secret(ref: str) -> SecretError:
    """The one-line error for an unresolvable reference."""
    ns, name = parse_ref(ref)
    return SecretError(
        f"secret:{ns}/{name} is not set; run `toolcrib creds set {ns} {name}` (OS keyring), "
        f"or export {env_var_name(ref)}, or add [{ns}] {name} to the 0600 file named by [secrets] file"
    )


def refs_in(value: str) -> list[str]:
    """Every ``NS/NAME`` referenced inside ``value``."""
    return [f"{m.group(1)}/{m.group(2)}" for m in REF_RE.finditer(value)]


def expand(value: str, resolver: CredentialStore, redactor: Redactor | None = None) -> str:
    """Replace every ``secret:NS/NAME`` in ``value``; register resolved values with ``redactor``."""

    def sub(match: re.Match[str]) -> str:
        ref = f"{match.group(1)}/{match.group(2)}"
        secret = resolver.get(ref)
        if secret is None:
            raise missing_secret(ref)
        if redactor is not None:
            redactor.add(secret)
        return secret

    return REF_RE.sub(sub, value)


def expander(resolver: CredentialStore, redactor: Redactor | None = None) -> Callable[[str], str]:
    """``expand`` bound to one resolver (and redactor): what the upstream edge calls on each value."""
    return lambda value: expand(value, resolver, redactor)


def resolve_server_env(
    server_cfg: ServerConfig, resolver: CredentialStore, redactor: Redactor | None = None
) -> dict[str, str]:
    """The ``env`` table of one stdio server with its references resolved (only that server's)."""
    return {key: expand(value, resolver, redactor) for key, value in server_cfg.env.items()}


def resolve_server_headers(
    server_cfg: ServerConfig, resolver: CredentialStore, redactor: Redactor | None = None
) -> dict[str, str]:
    """The ``headers`` table of one HTTP/SSE server with its references resolved."""
    return {key: expand(value, resolver, redactor) for key, value in server_cfg.headers.items()}


def server_refs(server_cfg: ServerConfig) -> list[str]:
    """Every reference a server's ``env``, ``headers``, ``args`` and ``url`` mention, in order, unique."""
    texts = [*server_cfg.env.values(), *server_cfg.headers.values(), *server_cfg.args, server_cfg.url or ""]
    return list(dict.fromkeys(ref for text in texts for ref in refs_in(text)))


def set_secret(ref: str, value: str, secrets_file: str | os.PathLike[str] | None = None) -> str:
    """Store a secret in the OS keyring (or the secrets file when no keyring exists); return where."""
    ns, name = parse_ref(ref)
    if not value:
        raise SecretError("an empty secret was entered; nothing stored")
    if keyring_available():
        try:
            keyring.set_password(KEYRING_SERVICE, f"{ns}/{name}", value)
            return "keyring"
        except keyring.errors.KeyringError as exc:
            if secrets_file is None:
                raise SecretError(f"the OS keyring refused to store secret:{ns}/{name} ({exc})") from None
    if secrets_file is None:
        raise SecretError(
            f"no OS keyring on this machine; export {env_var_name(ref)} or set [secrets] file "
            "to a 0600 TOML file and run this again"
        )
    FileStore(secrets_file).set(ref, value)
    return "file"


def delete_secret(ref: str, secrets_file: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove a secret from the keyring and the secrets file; return where it was removed from."""
    ns, name = parse_ref(ref)
    removed = []
    if keyring_available():
        try:
            keyring.delete_password(KEYRING_SERVICE, f"{ns}/{name}")
            removed.append("keyring")
        except keyring.errors.KeyringError:
            pass
    if secrets_file is not None and FileStore(secrets_file).delete(ref):
        removed.append("file")
    return removed


from toolcrib.gateway.trust.redaction import MIN_SECRET_LENGTH, REDACTED, Redactor, secret_forms  # noqa: E402

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "Redactor", "secret_forms"]
