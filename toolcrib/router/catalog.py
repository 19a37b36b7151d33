"""The aggregated catalog: every upstream's tools, resources and prompts under namespaced names.

Naming scheme (documented in README):

- tools and prompts: ``<server><sep><name>`` (``sep`` defaults to ``__``), a pure function of
  ``(server, name)`` (:func:`exposed_name`): it never depends on listing order or on which other
  tools exist, so a policy rule written for a name always means the same tool. When the plain
  form would not do (the name has characters outside ``[A-Za-z0-9_-]``, which become ``_``; the
  result is over 64 characters; it ends like a hash suffix; or the name starts with part of the
  separator, which could make ``server + sep + name`` of two servers equal) the key is the
  sanitised, shortened form plus ``_`` and 8 hex digits of SHA-256 over ``server\0name``. Plain
  keys never end in ``_<8 hex>`` and hashed ones always do, so two tools can only clash by a
  hash collision: then the tool whose ``(server, name)`` sorts later is refused (error log).
  Renamed tools are logged once (with the original name) when they first appear.
- resources and resource templates: the URI's scheme is prefixed with ``<server>+``, e.g.
  ``echo://info`` of server ``demo`` becomes ``demo+echo://info``. A URI without a scheme becomes
  ``<server>+:<uri>``.
- with ``keep_names`` (exactly one upstream) names and URIs are passed through unchanged.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types

from toolcrib.config import ServerConfig
from toolcrib.router.pins import tool_hash

_INVALID = re.compile(r"[^A-Za-z0-9_-]")
_HASHED = re.compile(r"_[0-9a-f]{8}$")
MAX_NAME = 64
log = logging.getLogger("toolcrib.catalog")


def exposed_name(server: str, name: str, separator: str = "__") -> str:
    """The client-visible key of upstream tool (or prompt) ``name`` of ``server``: see the module docstring.

    A pure function: the same ``(server, name, separator)`` always gives the same key, at most
    :data:`MAX_NAME` characters of ``[A-Za-z0-9_-]`` plus the separator's own characters.
    """
    clean = _INVALID.sub("_", name)
    plain = f"{server}{separator}{name}"
    risky = any(name.startswith(separator[i:]) for i in range(1, len(separator)))
    if clean == name and len(plain) <= MAX_NAME and not _HASHED.search(plain) and not risky:
        return plain
    digest = hashlib.sha256(f"{server}\0{name}".encode()).hexdigest()[:8]
    return f"{server}{separator}{clean}"[: MAX_NAME - 9] + f"_{digest}"


@dataclass(frozen=True)
class Entry:
    """A tool (or prompt) as clients see it, with where it really lives."""

    key: str
    server: str
    name: str
    tool: types.Tool
    hash: str = ""
    """The pin hash of the upstream's own definition (see :func:`toolcrib.router.pins.tool_hash`)."""


@dataclass(frozen=True)
class PromptEntry:
    key: str
    server: str
    name: str
    prompt: types.Prompt


def included(name: str, cfg: ServerConfig) -> bool:
    """Apply a server's include/exclude globs to an upstream tool name."""
    if cfg.include and not any(fnmatch.fnmatchcase(name, g) for g in cfg.include):
        return False
    return not any(fnmatch.fnmatchcase(name, g) for g in cfg.exclude)


class Catalog:
    """An immutable snapshot; rebuilt whenever an upstream's listing changes."""

    def __init__(self, separator: str = "__", keep_names: bool = False) -> None:
        self.separator = separator
        self.keep_names = keep_names
        self.tools: dict[str, Entry] = {}
        self.prompts: dict[str, PromptEntry] = {}
        self.resources: list[tuple[str, types.Resource]] = []
        self.templates: list[tuple[str, types.ResourceTemplate]] = []
        self.renamed: dict[tuple[str, str, str], str] = {}
        """``(kind, server, upstream name) -> key`` for every tool or prompt whose key is not the plain form."""

    def tool_key(self, server: str, name: str) -> str:
        """``name`` unchanged with ``keep_names``, else :func:`exposed_name`."""
        return name if self.keep_names else exposed_name(server, name, self.separator)

    def resource_uri(self, server: str, uri: str) -> str:
        if self.keep_names:
            return uri
        return f"{server}+{uri}" if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) else f"{server}+:{uri}"

    def split_uri(self, uri: str, servers: Iterable[str]) -> tuple[str, str] | None:
        """Map a client-visible URI back to ``(server, upstream uri)``."""
        if self.keep_names:
            only = list(servers)
            return (only[0], uri) if only else None
        server, plus, rest = uri.partition("+")
        if not plus or server not in set(servers):
            return None
        return server, rest[1:] if rest.startswith(":") else rest

    def _claim(
        self,
        kind: str,
        taken: dict[str, Any],
        server: str,
        name: str,
        seen: Mapping[tuple[str, str, str], str],
    ) -> str | None:
        """The key for ``(server, name)``, or None when it is refused (a duplicate or a hash collision).

        A clash keeps the ``(server, name)`` that sorts first, whatever the listing order."""
        key = self.tool_key(server, name)
        held = taken.get(key)
        if held is not None:
            if (held.server, held.name) == (server, name):
                return None  # the upstream listed it twice: one entry
            if (held.server, held.name) < (server, name):
                self._refuse(kind, server, name, key, (held.server, held.name), seen)
                return None
            self._refuse(kind, held.server, held.name, key, (server, name), seen)
            del taken[key]
        if not self.keep_names and key != f"{server}{self.separator}{name}":
            self.renamed[(kind, server, name)] = key
        return key

    def _refuse(
        self,
        kind: str,
        server: str,
        name: str,
        key: str,
        winner: tuple[str, str],
        seen: Mapping[tuple[str, str, str], str],
    ) -> None:
        self.renamed.pop((kind, server, name), None)
        self.renamed[("refused-" + kind, server, name)] = key
        if seen.get(("refused-" + kind, server, name)) != key:
            log.error(
                "%s %r of server %r is not exposed: its name %r clashes with %r of server %r; rename one upstream",
                kind,
                name,
                server,
                key,
                winner[1],
                winner[0],
            )

    def _report(self, seen: Mapping[tuple[str, str, str], str]) -> None:
        """One warning per server for the renames not in ``seen`` (the previous snapshot's)."""
        fresh: dict[str, list[str]] = {}
        for (kind, server, name), key in sorted(self.renamed.items()):
            if not kind.startswith("refused-") and seen.get((kind, server, name)) != key:
                fresh.setdefault(server, []).append(f"{kind} {name!r} as {key!r}")
        for server, items in fresh.items():
            log.warning(
                "server %r: %d name(s) changed for clients (write policy rules with the new names): %s",
                server, len(items), ", ".join(items),
            )  # fmt: skip

    @classmethod
    def build(
        cls,
        listings: Mapping[str, tuple[ServerConfig, Iterable[types.Tool], Iterable[types.Prompt]]],
        resources: Mapping[str, tuple[Iterable[types.Resource], Iterable[types.ResourceTemplate]]],
        *,
        separator: str = "__",
        keep_names: bool = False,
        previous: Catalog | None = None,
    ) -> Catalog:
        """Build a snapshot. ``previous`` (the snapshot this one replaces) only quiets the logs: a
        rename or a refused clash is logged when it first appears, not on every rebuild."""
        cat = cls(separator, keep_names)
        seen = previous.renamed if previous is not None else {}
        for server in sorted(listings):
            cfg, tools, prompts = listings[server]
            for tool in tools:
                if included(tool.name, cfg):
                    key = cat._claim("tool", cat.tools, server, tool.name, seen)
                    if key is not None:
                        copy = tool.model_copy(update={"name": key})
                        cat.tools[key] = Entry(key, server, tool.name, copy, tool_hash(tool))
            for prompt in prompts:
                key = cat._claim("prompt", cat.prompts, server, prompt.name, seen)
                if key is not None:
                    cat.prompts[key] = PromptEntry(key, server, prompt.name, prompt.model_copy(update={"name": key}))
        cat._report(seen)
        for server in sorted(resources):
            res, tmpl = resources[server]
            for r in res:
                uri = cat.resource_uri(server, str(r.uri))
                cat.resources.append((server, r.model_copy(update={"uri": uri})))
            for t in tmpl:
                uri = cat.resource_uri(server, t.uri_template)
                cat.templates.append((server, t.model_copy(update={"uri_template": uri})))
        return cat
