"""``search_tools`` results use MCP's own field names (issue 9 item 18): ``inputSchema``, ``outputSchema``."""

from __future__ import annotations

import json

import mcp_types as types

from toolcrib.router.catalog import Entry
from toolcrib.router.dispatcher import render_results

INPUT = {"type": "object", "title": "Args", "properties": {"city": {"type": "string"}}, "required": ["city"]}
OUTPUT = {"type": "object", "properties": {"celsius": {"type": "number", "title": "C"}}}


def _entry(name: str, **fields: object) -> Entry:
    tool = types.Tool(name=name, description=f"{name} tool", **fields)  # type: ignore[arg-type]
    return Entry(name, "s", name, tool)


def test_results_use_mcp_schema_names_and_carry_the_output_schema() -> None:
    with_output = _entry("s__weather", input_schema=INPUT, output_schema=OUTPUT)
    plain = _entry("s__ping", input_schema={"type": "object"})
    result = render_results([(with_output, 0.9), (plain, 0.5)])
    items = json.loads(result.content[0].text)  # type: ignore[union-attr]
    assert result.structured_content == {"tools": items}
    weather, ping = items
    assert weather["inputSchema"] == {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    assert weather["outputSchema"] == {"type": "object", "properties": {"celsius": {"type": "number"}}}
    assert "input_schema" not in json.dumps(items) and "output_schema" not in json.dumps(items)
    assert set(ping) == {"name", "description", "score"}  # no parameters, no output schema: nothing to show
