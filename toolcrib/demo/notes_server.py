"""A small, real MCP server for the demo: notes kept in a JSON file.

Run with ``python -m toolcrib.demo.notes_server [--file PATH]`` (stdio).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer

app = MCPServer("notes", instructions="Keep short text notes: add, list, search, read, delete.")
_FILE = Path(os.environ.get("NOTES_FILE", ".toolcrib/demo-notes.json"))


def _load() -> dict[str, str]:
    try:
        data = json.loads(_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _save(notes: dict[str, str]) -> None:
    _FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = _FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(notes, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(_FILE)


@app.tool()
def add_note(title: str, text: str) -> str:
    """Save a note under a title (replaces a note with the same title)."""
    notes = _load()
    notes[title] = text
    _save(notes)
    return f"saved note {title!r} ({len(text)} characters)"


@app.tool()
def list_notes() -> list[str]:
    """List the titles of all saved notes."""
    return sorted(_load())


@app.tool()
def search_notes(query: str) -> list[str]:
    """Find notes whose title or text contains the query (case-insensitive)."""
    q = query.lower()
    return sorted(t for t, body in _load().items() if q in t.lower() or q in body.lower())


@app.tool()
def read_note(title: str) -> str:
    """Return the text of one note."""
    notes = _load()
    if title not in notes:
        raise ValueError(f"no note titled {title!r}; call list_notes to see the titles")
    return notes[title]


@app.tool()
def delete_note(title: str) -> str:
    """Delete a note by title."""
    notes = _load()
    if notes.pop(title, None) is None:
        raise ValueError(f"no note titled {title!r}")
    _save(notes)
    return f"deleted note {title!r}"


@app.resource("notes://{title}")
def note_resource(title: str) -> str:
    """A note as a resource."""
    return _load().get(title, "")


@app.prompt()
def summarize_notes() -> str:
    """Ask the model to summarise every saved note."""
    body = "\n\n".join(f"# {t}\n{b}" for t, b in sorted(_load().items())) or "(no notes yet)"
    return f"Summarise these notes in a few bullet points:\n\n{body}"


def main() -> None:
    global _FILE
    parser = argparse.ArgumentParser(description="notes MCP server (stdio)")
    parser.add_argument("--file", default=str(_FILE), help="JSON file holding the notes")
    _FILE = Path(parser.parse_args().file)
    app.run()


if __name__ == "__main__":
    main()
