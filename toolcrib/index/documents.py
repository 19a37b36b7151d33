"""Tool documents: what the index knows about a tool, and the text it embeds and matches."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
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
