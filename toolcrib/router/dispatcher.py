"""The dispatcher meta-tools: ``search_tools`` finds tools by meaning, ``invoke`` calls one.

A client in dispatcher mode sees these two tools instead of every upstream tool. Their
descriptions are written to teach a model the two-step protocol in as few tokens as possible;
``benchmarks.tokens`` measures them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import mcp_types as types

from toolcrib.errors import InvalidArguments
from toolcrib.index.steps import step_queries
from toolcrib.router.catalog import Catalog, Entry

SEARCH = "search_tools"
INVOKE = "invoke"
RESERVED_NAMES = frozenset({SEARCH, INVOKE})
MAX_LIMIT = 20
DESCRIPTION_CHARS = 400
"""A search result's tool description is clipped to this many characters (a session that loads the
tool sees the full description in ``tools/list``)."""
PARAM_DESCRIPTION_CHARS = 200

SEARCH_TOOL = types.Tool(
    name=SEARCH,
    description=(
        "Find tools for a task among all connected servers. Returns each match's name, description and "
        "input schema. Then call one with invoke (or by name, if it appears in your tool list). "
        "For a multi-step task pass one query per step."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "query": {
                "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 10}],
                "description": "What you want to do, in plain words; or a list, one per step.",
            },
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 5},
            "server": {"type": "string", "description": "Only tools of this server."},
        },
        "required": ["query"],
    },
    annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
)

INVOKE_TOOL = types.Tool(
    name=INVOKE,
    description=(
        "Call a tool found with search_tools, by its exact name, with arguments matching its input schema. "
        "If it answers input_required, retry this same invoke call with inputResponses and requestState."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "tool": {"type": "string", "description": "Exact tool name from search_tools."},
            "arguments": {"type": "object", "description": "Arguments for that tool."},
        },
        "required": ["tool"],
    },
)

DISPATCHER_TOOLS = (SEARCH_TOOL, INVOKE_TOOL)


class Searcher(Protocol):
    """What the dispatcher needs from the index (see :class:`toolcrib.index.search.ToolIndex`)."""

    def search(
        self,
        query: str | Sequence[str],
        *,
        limit: int = 5,
        server: str | None = None,
        allowed: Callable[[str], bool] | None = None,
    ) -> Sequence[Any]: ...

    def needs_model(self, query: str | Sequence[str]) -> bool:
        """Whether :meth:`search` would run the embedding model (else it is cheap numpy/FAISS work)."""
        ...


@dataclass(frozen=True)
class SearchArgs:
    queries: tuple[str, ...]
    limit: int
    server: str | None


def parse_search_args(arguments: dict[str, Any]) -> SearchArgs:
    """Validate ``search_tools`` arguments; raise :class:`InvalidArguments` with the fix."""
    query = arguments.get("query")
    if isinstance(query, str):
        queries: tuple[str, ...] = (query,)
    elif isinstance(query, list) and all(isinstance(q, str) for q in query):
        queries = tuple(query[:10])
    else:
        raise InvalidArguments("search_tools needs `query`: a string, or a list of strings (one per step)")
    queries = tuple(q.strip()[:1000] for q in queries if q.strip())
    if not queries:
        raise InvalidArguments("search_tools needs a non-empty `query` describing what you want to do")
    limit = arguments.get("limit", 5)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArguments(f"search_tools `limit` must be an integer from 1 to {MAX_LIMIT}")
    server = arguments.get("server")
    if server is not None and not isinstance(server, str):
        raise InvalidArguments("search_tools `server` must be a server name (string)")
    return SearchArgs(queries, limit, server or None)


def parse_invoke_args(arguments: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    tool = arguments.get("tool")
    if not isinstance(tool, str) or not tool:
        raise InvalidArguments("invoke needs `tool`: the exact name returned by search_tools")
    args = arguments.get("arguments", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InvalidArguments("invoke `arguments` must be an object matching the tool's input schema")
    return tool, args


def search_queries(args: SearchArgs) -> list[str]:
    """The queries :func:`search` runs: one query naming several actions ("download the report, then
    email it to Bob") becomes the task plus one query per step (:func:`toolcrib.index.steps.step_queries`);
    several queries are run as given."""
    return step_queries(args.queries[0]) if len(args.queries) == 1 else list(args.queries)


def search(
    index: Searcher,
    catalog: Catalog,
    args: SearchArgs,
    allowed: Callable[[str], bool],
) -> list[tuple[Entry, float]]:
    """Run the search over :func:`search_queries` (rankings merged) and map hits to live catalog
    entries the caller may use."""

    def visible(key: str) -> bool:
        return key in catalog.tools and allowed(key)

    queries = search_queries(args)
    query: str | Sequence[str] = queries[0] if len(queries) == 1 else queries
    hits = index.search(query, limit=args.limit, server=args.server, allowed=visible)
    return [(catalog.tools[h.key], float(h.score)) for h in hits if h.key in catalog.tools]


_MAPS_OF_SCHEMAS = frozenset({"properties", "$defs", "definitions", "patternProperties", "dependentSchemas"})
_LITERALS = frozenset({"enum", "const", "default", "examples", "required"})


def compact_schema(schema: Any) -> Any:
    """The schema without what a model does not need to call the tool.

    Dropped: ``title`` annotations, ``$schema``, ``additionalProperties: false`` (toolcrib validates
    the arguments itself); parameter descriptions are clipped to ``PARAM_DESCRIPTION_CHARS``.
    """
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("title", "$schema") or (key == "additionalProperties" and value is False):
            continue
        if key == "description" and isinstance(value, str) and len(value) > PARAM_DESCRIPTION_CHARS:
            out[key] = value[: PARAM_DESCRIPTION_CHARS - 1].rstrip() + "…"
            continue
        if key in _LITERALS:
            out[key] = value
        elif key in _MAPS_OF_SCHEMAS and isinstance(value, dict):
            out[key] = {name: compact_schema(sub) for name, sub in value.items()}
        elif isinstance(value, dict):
            out[key] = compact_schema(value)
        elif isinstance(value, list):
            out[key] = [compact_schema(v) for v in value]
        else:
            out[key] = value
    return out


NOT_CONNECTED_ADVICE = (
    "Tell the user: the operator must fix this (the reason is in the `toolcrib serve` output, the console "
    "and `toolcrib check`); the tools appear once the server connects"
)


def not_connected_text(down: Sequence[tuple[str, str]]) -> str:
    """``not connected: S (status); ...`` for ``[(server, status)]`` (see
    :meth:`toolcrib.router.pool.Pool.not_connected`), then :data:`NOT_CONNECTED_ADVICE`: a model
    cannot fix this by rephrasing a query or renaming a tool."""
    listed = "; ".join(f"{server} ({status})" for server, status in down)
    return f"not connected: {listed}. {NOT_CONNECTED_ADVICE}"


def empty_search_text(server: str | None, down: Sequence[tuple[str, str]], any_tools: bool) -> str:
    """Why a search found nothing: the query (when every server is connected), or the servers that are
    not (``down``), so a model is not told to rephrase when nothing it could write would help.
    ``any_tools``: whether the caller can see any tool at all."""
    mine = [d for d in down if d[0] == server]
    if mine:
        return f"no tools of server {server!r}, rephrasing will not help; {not_connected_text(mine)}"
    if not down:
        return "no matching tools; rephrase the query or drop the server filter"
    if not any_tools:
        return f"no tools to search, rephrasing will not help; {not_connected_text(down)}"
    return f"no matching tools; rephrase the query, or the tool may be on a server that is {not_connected_text(down)}"


def render_results(
    results: Sequence[tuple[Entry, float]],
    empty: str = "no matching tools; rephrase the query or drop the server filter",
) -> types.CallToolResult:
    """Compact JSON a model can read: ``[{"name", "description", "inputSchema"?, "outputSchema"?, "score"}]``.

    Schema keys are spelled as in MCP's ``Tool`` (2025-11-25 schema: ``inputSchema``, ``outputSchema``);
    ``inputSchema`` is left out when the tool takes no parameters, ``outputSchema`` when it declares none.
    No results read ``[] (EMPTY)``, ``empty`` saying why (see :func:`empty_search_text`).
    """
    items = []
    for entry, score in results:
        description = entry.tool.description or ""
        if len(description) > DESCRIPTION_CHARS:
            description = description[: DESCRIPTION_CHARS - 1].rstrip() + "…"
        item: dict[str, Any] = {"name": entry.key, "description": description}
        schema = entry.tool.input_schema
        if schema and schema.get("properties"):
            item["inputSchema"] = compact_schema(schema)
        if entry.tool.output_schema:
            item["outputSchema"] = compact_schema(entry.tool.output_schema)
        item["score"] = round(score, 3)
        items.append(item)
    text = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
    if not items:
        text = f"[] ({empty})"
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content={"tools": items}
    )
