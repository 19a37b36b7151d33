"""The aggregated catalog: every upstream's tools, resources and prompts under namespaced names.

Naming scheme (documented in README):

- tools and prompts: ``<server><sep><name>`` (``sep`` defaults to ``__``). Server names cannot
  contain the separator, so names from different servers never collide. Characters outside
  ``[A-Za-z0-9_-]`` become ``_`` and names longer than 64 characters are shortened with a hash
  suffix, so the result is valid for clients with strict name rules; a clash produced by that
  rewriting is resolved with a hash suffix too.
- resources and resource templates: the URI's scheme is prefixed with ``<server>+``, e.g.
  ``echo://info`` of server ``demo`` becomes ``demo+echo://info``. A URI without a scheme becomes
  ``<server>+:<uri>``.
- with ``keep_names`` (exactly one upstream) names and URIs are passed through unchanged.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import mcp_types as types

from toolcrib.config import ServerConfig
from toolcrib.router.pins import tool_hash

_INVALID = re.compile(r"[^A-Za-z0-9_-]")
MAX_NAME = 64


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


def _short(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}_{digest}"


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

    def tool_key(self, server: str, name: str, taken: Mapping[str, object]) -> str:
        if self.keep_names:
            return name
        base = _short(f"{server}{self.separator}{_INVALID.sub('_', name)}", MAX_NAME)
        if base not in taken:
            return base
        salt = 0
        while True:  # a clash key can itself be taken (a tool named like it): try the next salt
            digest = hashlib.sha256((f"{server}\0{name}" + "\0" * salt).encode()).hexdigest()[:8]
            key = f"{base[: MAX_NAME - 9]}_{digest}"
            if key not in taken:
                return key
            salt += 1

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

    @classmethod
    def build(
        cls,
        listings: Mapping[str, tuple[ServerConfig, Iterable[types.Tool], Iterable[types.Prompt]]],
        resources: Mapping[str, tuple[Iterable[types.Resource], Iterable[types.ResourceTemplate]]],
        *,
        separator: str = "__",
        keep_names: bool = False,
    ) -> Catalog:
        cat = cls(separator, keep_names)
        for server in sorted(listings):
            cfg, tools, prompts = listings[server]
            for tool in tools:
                if not included(tool.name, cfg):
                    continue
                key = cat.tool_key(server, tool.name, cat.tools)
                cat.tools[key] = Entry(key, server, tool.name, tool.model_copy(update={"name": key}), tool_hash(tool))
            for prompt in prompts:
                key = cat.tool_key(server, prompt.name, cat.prompts)
                cat.prompts[key] = PromptEntry(key, server, prompt.name, prompt.model_copy(update={"name": key}))
        for server in sorted(resources):
            res, tmpl = resources[server]
            for r in res:
                uri = cat.resource_uri(server, str(r.uri))
                cat.resources.append((server, r.model_copy(update={"uri": uri})))
            for t in tmpl:
                uri = cat.resource_uri(server, t.uri_template)
                cat.templates.append((server, t.model_copy(update={"uri_template": uri})))
        return cat
