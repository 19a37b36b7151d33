"""The environment a stdio upstream's child process starts with.

A child inherits exactly (from toolcrib's own environment, where set):

- the MCP SDK's safe default set (``mcp.client.stdio.DEFAULT_INHERITED_ENV_VARS``: ``HOME``,
  ``LOGNAME``, ``PATH``, ``SHELL``, ``TERM``, ``USER`` on POSIX);
- locale and time zone: ``LANG``, ``LANGUAGE``, every ``LC_*``, ``TZ``;
- temporary directories: ``TMPDIR``, ``TEMP``, ``TMP``;
- proxies, in both cases: ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``;
- CA bundles: ``SSL_CERT_FILE``, ``SSL_CERT_DIR``, ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``,
  ``NODE_EXTRA_CA_CERTS``;
- XDG base directories: ``XDG_CONFIG_HOME``, ``XDG_DATA_HOME``, ``XDG_CACHE_HOME``,
  ``XDG_STATE_HOME``, ``XDG_RUNTIME_DIR``;
- whatever ``[servers.NAME] inherit_env`` adds (exact names or ``PREFIX_*``);

then the server's own ``env`` table is applied over that. Never inherited, whatever is asked:
any variable whose name starts with ``TOOLCRIB_`` (``TOOLCRIB_SECRET_*`` hold credentials,
``TOOLCRIB_API_KEY`` a gateway key); ``inherit_env`` patterns that could match one are refused when
the config is loaded. Values that look like exported shell functions (``()...``) are skipped, as the
SDK does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from mcp.client.stdio import DEFAULT_INHERITED_ENV_VARS

_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
INHERITED: tuple[str, ...] = (
    *DEFAULT_INHERITED_ENV_VARS,
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    *_PROXIES,
    *(p.lower() for p in _PROXIES),
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    "XDG_STATE_HOME",
    "XDG_RUNTIME_DIR",
)
"""Variables every stdio child inherits when set."""
INHERITED_PREFIXES: tuple[str, ...] = ("LC_",)
"""Prefixes whose variables every stdio child inherits."""
FORBIDDEN_PREFIX = "TOOLCRIB_"

_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?")


def check_inherit_pattern(pattern: str) -> None:
    """Accept ``NAME`` or ``PREFIX*``; raise :class:`ValueError` (one line) for anything else or for a
    pattern that could match a ``TOOLCRIB_*`` variable."""
    if not _PATTERN.fullmatch(pattern):
        raise ValueError(
            f"inherit_env entry {pattern!r}: use an exact variable name or a prefix ending in * (e.g. AWS_*)"
        )
    upper = pattern.upper()
    if upper.startswith(FORBIDDEN_PREFIX) or (upper.endswith("*") and FORBIDDEN_PREFIX.startswith(upper[:-1])):
        raise ValueError(
            f"inherit_env entry {pattern!r} could pass toolcrib's own secrets (TOOLCRIB_*) to a server; "
            "remove it and give the server what it needs in its `env` table"
        )


def _matches(name: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern.endswith("*") and name.startswith(pattern[:-1]):
            return True
        if name == pattern:
            return True
    return False


def child_environment(inherit: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The inherited part of a child's environment (see the module docstring); ``inherit`` are
    ``inherit_env`` patterns (already checked by :func:`check_inherit_pattern`)."""
    environ = os.environ if environ is None else environ
    wanted = set(INHERITED)
    extra = list(inherit)
    env: dict[str, str] = {}
    for name, value in environ.items():
        if name.upper().startswith(FORBIDDEN_PREFIX) or value.startswith("()"):
            continue
        if name in wanted or name.startswith(INHERITED_PREFIXES) or _matches(name, extra):
            env[name] = value
    return env
