"""Tool pinning, the rug-pull defence: a tool's definition is hashed when trusted, and a change
quarantines it (neither searchable nor callable) until an operator looks at the diff and approves.

:func:`tool_hash` covers the name, title, description, input and output schemas and annotations:
everything a model reads when it decides to call a tool (``_meta`` is left out: it is not shown to
the model and some servers put volatile data there).

First sight of a *server* is trust on first use: its tools are pinned, since the operator has just
configured it. After that, a tool that the server did not have before follows ``new_tools``
(``trust`` pins it, ``quarantine`` holds it), and a pinned tool whose hash changes is quarantined.
A definition that changes back to the pinned one is trusted again. Tools named like the
dispatcher's own (:data:`RESERVED_NAMES`) are refused outright and cannot be approved.

The store is one :class:`~toolcrib.storage.documents.Document` shared with the CLI (a JSON file, or
the ``pins`` row in PostgreSQL): each method re-reads it when it changed, and every change happens
under an exclusive lock (``flock``, or ``SELECT ... FOR UPDATE``) and is written atomically.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import mcp_types as types

from toolcrib.errors import ToolcribError
from toolcrib.storage.documents import Document, FileDocument, open_document

if TYPE_CHECKING:
    from toolcrib.storage.postgres import Database

RESERVED_NAMES = frozenset({"search_tools", "invoke"})
"""The dispatcher's own tool names; an upstream tool with one of these names is refused."""
_HASHED = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


class PinError(ToolcribError):
    """A pin cannot be approved or shown (unknown key, reserved name, nothing pending)."""


def tool_definition(tool: types.Tool | Mapping[str, Any]) -> dict[str, Any]:
    """The hashed part of a tool, in wire (camelCase) form, omitting absent fields."""
    if isinstance(tool, types.Tool):
        data = tool.model_dump(by_alias=True, exclude_none=True, mode="json")
    else:
        data = dict(tool)
        for snake, camel in (("input_schema", "inputSchema"), ("output_schema", "outputSchema")):
            if snake in data and camel not in data:
                data[camel] = data.pop(snake)
    return {k: data[k] for k in _HASHED if data.get(k) is not None}


def tool_hash(tool: types.Tool | Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of :func:`tool_definition`."""
    text = json.dumps(tool_definition(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class PinReport:
    """What :meth:`PinStore.check` found for one server's tools (keys are namespaced names)."""

    trusted: list[str] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)
    """key -> why (changed definition, new tool under ``new_tools = "quarantine"``)."""
    new: list[str] = field(default_factory=list)
    """Tools seen for the first time (pinned or quarantined, by ``new_tools``)."""
    refused: dict[str, str] = field(default_factory=dict)
    """key -> why; reserved names. Never callable, never approvable."""


@dataclass(frozen=True)
class PinEntry:
    """One row of :meth:`PinStore.list`."""

    key: str
    status: Literal["trusted", "quarantined"]
    hash: str
    pinned_at: float | None
    reason: str | None


class PinStore:
    """Pinned tool hashes in a document (a JSON file or a PostgreSQL row):
    ``{"version": 1, "servers": [...], "pins": {key: ...}, "pending": {...}}``. Failures raise :class:`PinError`."""

    def __init__(self, source: str | os.PathLike[str] | Document, separator: str = "__") -> None:
        """``source``: the pin file's path, or a :class:`~toolcrib.storage.documents.Document`
        (see :func:`pin_document`)."""
        self.document = pin_document(None, source) if isinstance(source, (str, os.PathLike)) else source
        self.path: Path | None = self.document.path if isinstance(self.document, FileDocument) else None
        self.separator = separator

    def key(self, server: str, name: str) -> str:
        return f"{server}{self.separator}{name}"

    def check(
        self,
        server: str,
        tools: Iterable[types.Tool | Mapping[str, Any]],
        new_tools: Literal["trust", "quarantine"] = "trust",
    ) -> PinReport:
        """Compare ``server``'s current tools with their pins; pin, quarantine or refuse each."""
        report = PinReport()
        definitions = {}
        for tool in tools:
            definition = tool_definition(tool)
            key = self.key(server, str(definition.get("name", "")))
            if definition.get("name") in RESERVED_NAMES:
                report.refused[key] = f"tool name {definition['name']!r} clashes with the dispatcher's own"
            else:
                definitions[key] = definition
        with self._changing() as data:
            first_sight = server not in data["servers"]
            if first_sight:
                data["servers"].append(server)
            now = time.time()
            for key, definition in definitions.items():
                digest = tool_hash(definition)
                pin = data["pins"].get(key)
                if pin is not None and pin["hash"] == digest:
                    data["pending"].pop(key, None)
                    report.trusted.append(key)
                elif pin is None and (first_sight or new_tools == "trust"):
                    data["pins"][key] = {"hash": digest, "definition": definition, "pinned_at": now}
                    data["pending"].pop(key, None)
                    report.trusted.append(key)
                    report.new.append(key)
                else:
                    if pin is None:
                        reason = "new tool on a known server; `toolcrib tools approve KEY` to trust it"
                        report.new.append(key)
                    else:
                        reason = "definition changed since it was pinned; see `toolcrib tools diff KEY`"
                    previous = data["pending"].get(key)
                    if previous is None or previous["hash"] != digest:
                        data["pending"][key] = {"hash": digest, "definition": definition, "seen_at": now}
                    data["pending"][key]["reason"] = reason
                    report.quarantined[key] = reason.replace("KEY", key)
        return report

    def is_trusted(self, key: str, tool: types.Tool | Mapping[str, Any]) -> bool:
        """True when ``tool``'s current definition is exactly the pinned one (cheap per-call check)."""
        pin = self._load()["pins"].get(key)
        return pin is not None and pin["hash"] == tool_hash(tool)

    def approve(self, key: str) -> str:
        """Pin the pending definition of ``key``; return its hash."""
        with self._changing() as data:
            pending = data["pending"].pop(key, None)
            if pending is None:
                if key in data["pins"]:
                    raise PinError(f"{key} is already trusted; nothing to approve")
                raise PinError(f"no tool {key!r} is waiting for approval; see `toolcrib tools list`")
            data["pins"][key] = {"hash": pending["hash"], "definition": pending["definition"], "pinned_at": time.time()}
            return str(pending["hash"])

    def approve_server(self, server: str) -> list[str]:
        """Approve every pending tool of ``server``; return their keys."""
        prefix = self.key(server, "")
        keys = [k for k in self._load()["pending"] if k.startswith(prefix)]
        return [key for key in keys if self.approve(key)]

    def diff(self, key: str) -> str:
        """A unified diff of the pinned definition against the pending one (pretty JSON)."""
        data = self._load()
        pin, pending = data["pins"].get(key), data["pending"].get(key)
        if pin is None and pending is None:
            raise PinError(f"no tool {key!r} is pinned or pending; see `toolcrib tools list`")
        if pending is None:
            return ""
        old = _pretty(pin["definition"]) if pin else []
        new = _pretty(pending["definition"])
        return "".join(difflib.unified_diff(old, new, f"{key} (pinned)", f"{key} (current)"))

    def list(self) -> list[PinEntry]:
        """Every pinned or quarantined tool, sorted by key; a quarantined pin is listed once."""
        data = self._load()
        entries = {
            key: PinEntry(key, "trusted", pin["hash"], pin.get("pinned_at"), None) for key, pin in data["pins"].items()
        }
        for key, pending in data["pending"].items():
            pinned_at = data["pins"].get(key, {}).get("pinned_at")
            entries[key] = PinEntry(key, "quarantined", pending["hash"], pinned_at, pending.get("reason"))
        return [entries[k] for k in sorted(entries)]

    def stamp(self) -> Hashable:
        """A value that changes whenever the pins change (in this process or another)."""
        return self.document.stamp()

    def _load(self) -> dict[str, Any]:
        return self.document.load()

    def _changing(self) -> contextlib.AbstractContextManager[dict[str, Any]]:
        return self.document.changing()


def pin_document(db: Database | None, path: str | os.PathLike[str]) -> Document:
    """The pins' document: the file at ``path``, or the row ``pins`` of ``db``'s ``documents``."""
    return open_document(
        db,
        path,
        "pins",
        _empty,
        PinError,
        what="pin file",
        remedy="restore it or delete it to re-pin",
        parse=_parse,
        sort_keys=True,
    )


def _parse(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    return {**_empty(), **data}


def _empty() -> dict[str, Any]:
    return {"version": 1, "servers": [], "pins": {}, "pending": {}}


def _pretty(definition: Mapping[str, Any]) -> list[str]:
    return [line + "\n" for line in json.dumps(definition, indent=2, sort_keys=True, ensure_ascii=False).splitlines()]
