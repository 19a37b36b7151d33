"""The audit rows the gateway writes besides a forwarded call's ``call`` row (see ``pipeline.audit_layer``).

- :func:`search_event`: a ``search_tools`` query and the tools it returned;
- :func:`refused_call_event`: a request for something the principal may not reach, or that does not
  exist, answered as unknown (``rule`` names what decided: a policy rule id, ``quarantine``,
  ``unknown``, or ``not-loaded`` for a tool called by name before ``search_tools`` loaded it);
- :func:`refused_auth_event`: a refused authentication at the guard (no principal; the remote address
  and the reason in ``error``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from toolcrib.gateway.audit.events import auth_refused
from toolcrib.gateway.audit.log import AuditEvent

if TYPE_CHECKING:
    from aiohttp import web

    from toolcrib.gateway.pipeline import UpstreamCall


def search_event(call: UpstreamCall, results: Sequence[str]) -> AuditEvent:
    from toolcrib.gateway.pipeline import call_fields

    query = call.arguments.get("query")
    text = query if isinstance(query, str) else json.dumps(query, ensure_ascii=False)
    return AuditEvent(kind="search", query=text, results=list(results), **{**call_fields(call), "tool": None})


def refused_call_event(call: UpstreamCall, rule: str, reason: str) -> AuditEvent:
    from toolcrib.gateway.pipeline import call_fields

    why = {
        "hidden": "not reachable for this principal (policy or quarantine); answered as unknown",
        "unknown": "no such target on any upstream",
        "not_loaded": "callable by name only once search_tools loaded it into this session (or via invoke)",
    }.get(reason, reason)
    return AuditEvent(
        kind="outcome",
        arguments=call.arguments,
        decision="deny",
        rule=rule,
        outcome="denied",
        error=why,
        **call_fields(call),
    )


def refused_auth_event(request: web.Request, detail: str, status: int) -> AuditEvent:
    return auth_refused(f"HTTP {status}: {detail}", remote=request.remote, method=f"{request.method} {request.path}")
