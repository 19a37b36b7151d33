"""Tool documents: what the index knows about a tool, and the text it embeds and matches."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_IDENT_SEPARATORS = re.compile(r"[_\-./:]+")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ToolDoc:
    """One tool as the index sees it.

    ``key`` is the namespaced name clients see (``time__get_current_time``) and is unique in an
    index; ``name`` is the upstream's own tool name.
    """

    key: str
    server: str
    name: str
    description: str
    input_schema: Mapping[str, Any]
    title: str | None = None

    def content_hash(self, model_fingerprint: str, style: TextStyle | None = None) -> str:
        """sha256 over the embedded text and the model fingerprint: equal hashes share a vector."""
        text = document_text(self, style or DEFAULT_STYLE)
        return hashlib.sha256(f"{model_fingerprint}\x00{text}".encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_json` turns back into an equal document."""
        return {
            "key": self.key,
            "server": self.server,
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "input_schema": dict(self.input_schema),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ToolDoc:
        """Rebuild a document written by :meth:`to_json`; raises ``KeyError``/``TypeError`` if malformed."""
        schema = data["input_schema"]
        title = data.get("title")
        if not isinstance(schema, Mapping) or not (title is None or isinstance(title, str)):
            raise TypeError("malformed tool record")
        return cls(
            key=str(data["key"]),
            server=str(data["server"]),
            name=str(data["name"]),
            description=str(data["description"]),
            input_schema=schema,
            title=title,
        )


def humanize_identifier(name: str) -> str:
    """``get_current_time`` / ``getCurrentTime`` / ``get-current-time`` -> ``get current time``."""
    spaced = _IDENT_SEPARATORS.sub(" ", _CAMEL_BOUNDARY.sub(" ", name))
    return _WHITESPACE.sub(" ", spaced).strip().lower()


def iter_parameters(schema: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Top-level ``(name, description)`` pairs of an input schema; tolerant of odd schemas."""
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return
    for pname, spec in props.items():
        desc = spec.get("description") if isinstance(spec, Mapping) else None
        yield str(pname), desc if isinstance(desc, str) else ""


def _clean(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class TextStyle:
    """Which fields go into the embedded text (the benchmark compares styles; see DEFAULT_STYLE)."""

    server: bool = True
    humanize: bool = True
    title: bool = True
    param_names: bool = True
    param_descriptions: bool = False
    max_chars: int = 1200


#: Measured best on the benchmark datasets (benchmarks/results/retrieval.md).
DEFAULT_STYLE = TextStyle()


def document_text(doc: ToolDoc, style: TextStyle = DEFAULT_STYLE) -> str:
    """The text embedded for ``doc``: ``server: name (title) - description. Parameters: p1, p2``.

    Names are humanized (``get_current_time`` -> ``get current time``) and the text is clipped,
    since the model reads at most 256 word pieces anyway.
    """
    name = humanize_identifier(doc.name) if style.humanize else doc.name
    head = f"{humanize_identifier(doc.server) if style.humanize else doc.server}: {name}"
    if not style.server:
        head = name
    if style.title and doc.title and doc.title.strip().lower() != name.lower():
        head += f" ({_clean(doc.title)})"
    text = head
    description = _clean(doc.description)
    if description:
        text += f" - {description}"
    params: list[str] = []
    for pname, pdesc in iter_parameters(doc.input_schema):
        label = humanize_identifier(pname) if style.humanize else pname
        if style.param_descriptions and pdesc:
            params.append(f"{label} ({_clean(pdesc)})")
        elif style.param_names or style.param_descriptions:
            params.append(label)
    if params:
        text += f". Parameters: {', '.join(params)}"
    return text[: style.max_chars]


_EXAMPLES = re.compile(r"\((?:e\.g\.|eg\b|for example|example)[^)]*\)", re.IGNORECASE)


def lexical_text(doc: ToolDoc, *, max_chars: int = 4000) -> str:
    """The text the BM25 index matches: identifiers, title, description and parameter docs.

    Parenthesised examples in parameter docs ("(e.g., 'Asia/Tokyo')") are left out: they are
    sample values, not capabilities, and made a query about Tokyo match whichever tool happened
    to use Tokyo as its example (measured: neutral on the three datasets, fixes that case).
    """
    parts = [doc.server, doc.name]
    if doc.title:
        parts.append(doc.title)
    parts.append(doc.description)
    for pname, pdesc in iter_parameters(doc.input_schema):
        parts.append(pname)
        if pdesc:
            parts.append(_EXAMPLES.sub(" ", pdesc))
    return _clean(" ".join(parts))[:max_chars]


@dataclass(frozen=True)
class ServerDoc:
    """What the index knows about a server beyond its tools (issue 14, "servers as well as tools").

    ``server``: the configured name (``ToolDoc.server``). ``title`` / ``description``: the MCP
    ``serverInfo.title`` / ``serverInfo.description`` of the ``initialize`` result (MCP 2025-11-25
    ``Implementation``), or a dataset's ``server_title`` / ``server_description``; ``instructions``:
    the ``initialize`` result's ``instructions``. All optional: a server with none of them is still
    described by its name and its tools.
    """

    server: str
    title: str | None = None
    description: str | None = None
    instructions: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_json` turns back into an equal document."""
        return {
            "server": self.server,
            "title": self.title,
            "description": self.description,
            "instructions": self.instructions,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerDoc:
        """Rebuild a document written by :meth:`to_json`; raises ``KeyError``/``TypeError`` if malformed."""
        fields = [data.get(k) for k in ("title", "description", "instructions")]
        if not all(f is None or isinstance(f, str) for f in fields):
            raise TypeError("malformed server record")
        return cls(str(data["server"]), *fields)


_FIRST_SENTENCE = re.compile(r"(?<=[.!?])\s|[\u3002\uff01\uff1f\n]")


def first_sentence(text: str, max_chars: int = 160) -> str:
    """The first sentence of ``text`` (whitespace collapsed, at most ``max_chars`` characters)."""
    return _clean(_FIRST_SENTENCE.split(text.strip(), maxsplit=1)[0])[:max_chars]


#: Characters of :func:`server_text` (the model reads at most 128 word pieces anyway).
SERVER_TEXT_CHARS = 1500


def server_text(server: ServerDoc, tools: Sequence[ToolDoc], max_chars: int = SERVER_TEXT_CHARS) -> str:
    """The text embedded for a server: its name, title, description, instructions, then the union of
    its tools' names and the first sentence of each tool's description, clipped to ``max_chars``.

    ``my-calendar`` with description "Google Calendar access" and tools ``list_events``,
    ``create_event`` -> ``my calendar (Calendar): Google Calendar access. Tools: list events, create
    event. List upcoming events. Create an event.`` Deterministic for a given tool order (callers pass
    tools sorted by name).
    """
    head = humanize_identifier(server.server)
    if server.title and server.title.strip().lower() != head:
        head += f" ({_clean(server.title)})"
    pieces = [head + ":"]
    for extra in (server.description, server.instructions):
        if extra and extra.strip():
            pieces.append(_clean(extra)[:max_chars])
    names = ", ".join(dict.fromkeys(humanize_identifier(t.name) for t in tools))
    if names:
        pieces.append(f"Tools: {names}.")
    for tool in tools:
        sentence = first_sentence(tool.description)
        if sentence:
            pieces.append(sentence)
    return " ".join(pieces)[:max_chars]


#: Verb -> a few synonyms (both directions are listed where they are true synonyms). Small by
#: design: generated text paraphrases a tool's name, it does not describe it.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "get": ("fetch", "read", "retrieve"),
    "fetch": ("get", "retrieve", "download"),
    "read": ("get", "open", "view"),
    "retrieve": ("get", "fetch"),
    "load": ("read", "open"),
    "open": ("read", "view"),
    "view": ("show", "read"),
    "create": ("add", "new", "make"),
    "add": ("create", "insert", "new"),
    "new": ("create", "add"),
    "make": ("create",),
    "insert": ("add",),
    "delete": ("remove", "erase"),
    "remove": ("delete",),
    "erase": ("delete",),
    "clear": ("reset", "delete"),
    "list": ("show", "enumerate"),
    "show": ("list", "display"),
    "search": ("find", "query", "look up"),
    "find": ("search", "look up"),
    "query": ("search", "look up"),
    "lookup": ("search", "find"),
    "send": ("post", "deliver"),
    "post": ("send", "publish"),
    "publish": ("post",),
    "update": ("edit", "modify", "change"),
    "edit": ("update", "modify"),
    "modify": ("update", "edit"),
    "set": ("configure", "change"),
    "write": ("save", "store"),
    "save": ("write", "store"),
    "store": ("save",),
    "run": ("execute", "start"),
    "execute": ("run",),
    "start": ("run", "begin"),
    "stop": ("end", "cancel"),
    "convert": ("transform", "translate"),
    "translate": ("convert",),
    "download": ("fetch", "get"),
    "upload": ("send", "put"),
    "generate": ("create", "produce"),
    "analyze": ("inspect", "examine"),
    "check": ("verify", "test"),
    "calculate": ("compute",),
    "compute": ("calculate",),
    "move": ("rename",),
    "rename": ("move",),
    "copy": ("duplicate",),
    "summarize": ("summary",),
}
_VERB_FORMS = {f"{v}s": v for v in SYNONYMS} | {f"{v}es": v for v in SYNONYMS} | {"gets": "get", "lists": "list"}
_WORD = re.compile(r"[A-Za-z]+")
#: Upper bound of :func:`generated_text`'s length in characters.
GENERATED_CHARS = 400


def _verb(word: str) -> str | None:
    w = word.lower()
    return w if w in SYNONYMS else _VERB_FORMS.get(w)


def generated_text(doc: ToolDoc, max_chars: int = GENERATED_CHARS) -> str:
    """Text generated once per tool from its name, description and schema, without a model:
    the actions it performs (verbs of its name and of its description's first sentence, with
    synonyms from :data:`SYNONYMS`), the objects it takes (parameter names split into words,
    required ones first) and paraphrases of its name (each verb swapped for a synonym).

    ``get_current_time`` with parameter ``timezone`` -> ``get current time. Actions: get, fetch,
    read, retrieve. Takes: timezone. Also: fetch current time; read current time; retrieve current
    time``. Deterministic, never raises on odd names or schemas, at most ``max_chars`` characters.
    """
    words = humanize_identifier(doc.name).split()
    verbs: list[str] = []
    for word in words[:3]:
        v = _verb(word)
        if v is not None:
            verbs.append(v)
    for word in _WORD.findall(first_sentence(doc.description))[:3]:
        v = _verb(word)
        if v is not None:
            verbs.append(v)
    verbs = list(dict.fromkeys(verbs))
    actions = list(dict.fromkeys(v2 for v in verbs for v2 in (v, *SYNONYMS[v])))
    schema = doc.input_schema if isinstance(doc.input_schema, Mapping) else {}
    required = schema.get("required")
    required_names = [str(r) for r in required] if isinstance(required, list) else []
    params = [p for p, _ in iter_parameters(schema)]
    ordered = [p for p in required_names if p in params] + [p for p in params if p not in required_names]
    objects = list(dict.fromkeys(humanize_identifier(p) for p in ordered if humanize_identifier(p)))
    paraphrases: list[str] = []
    for i, word in enumerate(words):
        v = _verb(word)
        if v is None:
            continue
        for syn in SYNONYMS[v]:
            paraphrases.append(" ".join([*words[:i], syn, *words[i + 1 :]]))
    pieces = [" ".join(words) or doc.name.strip()]
    if actions:
        pieces.append("Actions: " + ", ".join(actions))
    if objects:
        pieces.append("Takes: " + ", ".join(objects[:8]))
    if paraphrases:
        pieces.append("Also: " + "; ".join(dict.fromkeys(paraphrases)))
    return _clean(". ".join(p for p in pieces if p))[:max_chars]
