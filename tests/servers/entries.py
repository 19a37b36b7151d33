"""A fixture whose domain is named only by its ``instructions`` (issue 14, servers as well as tools).

    python -m tests.servers.entries          # stdio

Instructions (the initialize result's ``instructions``): "Manages the user's calendar: meetings,
appointments and events." Its server name (``entries``) and its tools never say so:

  add_entry(title, when)  -> "added <title>"
  list_entries()          -> the titles, one a line
  remove_entry(title)     -> "removed <title>"

FIXTURE_NO_INSTRUCTIONS=1 serves the same tools without instructions, so a test can show that the
instructions are what made a query find them.
"""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

INSTRUCTIONS = (
    "Manages the user's calendar and schedule: meetings, appointments and events. Use it to schedule a "
    "meeting, book an appointment, see what is planned on a day, or cancel an event."
)

app = MCPServer("entries", instructions=None if os.environ.get("FIXTURE_NO_INSTRUCTIONS") else INSTRUCTIONS)
_entries: dict[str, str] = {}


@app.tool()
def add_entry(title: str, when: str) -> str:
    """Add an entry with a title and a value."""
    _entries[title] = when
    return f"added {title}"


@app.tool()
def list_entries() -> str:
    """List the stored entries."""
    return "\n".join(sorted(_entries))


@app.tool()
def remove_entry(title: str) -> str:
    """Remove the entry with the given title."""
    _entries.pop(title, None)
    return f"removed {title}"


if __name__ == "__main__":
    app.run()
