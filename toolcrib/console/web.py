"""Rendering for console pages: one Jinja2 environment, the shared page context, small formatters.

Templates live in ``toolcrib/console/templates`` (autoescaped: every value is HTML-escaped unless a
template marks it safe, which none does with user data; a value inside a URL path goes through
``| segment``). A page handler calls :func:`page` with its
template and values; fragments polled by htmx call :func:`fragment`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from toolcrib.gateway.edge.guard import CONSOLE, FORM

NAV = (
    ("overview", "/console", "Overview"),
    ("approvals", "/console/approvals", "Approvals"),
    ("catalog", "/console/catalog", "Catalog"),
    ("audit", "/console/audit", "Audit"),
    ("search", "/console/search", "Search"),
    ("savings", "/console/savings", "Savings"),
)
"""The console's pages: (id, path, title), in menu order."""


def when(ts: float | None) -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM:SS`` UTC; ``-`` for None."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: float) -> str:
    """A duration in seconds as ``12 s`` / ``3 min`` / ``2 h`` / ``4 d``."""
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def segment(value: Any) -> str:
    """``value`` as ONE URL path segment: every reserved character percent-encoded, ``/`` too.

    Jinja's ``urlencode`` keeps ``/``, so a tool an upstream named ``x/../../approvals`` made
    ``/console/catalog/{{ key | urlencode }}`` a link the browser resolves to another console page
    (and its approve form another route). Use ``| segment`` for every value inside a path."""
    return quote(str(value), safe="")


def pretty(value: Any) -> str:
    """Any JSON value, indented for a ``<pre>``."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("toolcrib.console", "templates"),
    autoescape=jinja2.select_autoescape(["html"], default=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(when=when, ago=ago, pretty=pretty, segment=segment)


def render(template: str, request: web.Request, **values: Any) -> str:
    """The HTML of ``template`` with the page context (``csrf``, ``principal``, ``nav``) added."""
    login = request.get(CONSOLE)
    context = {
        "csrf": login.csrf if login is not None else "",
        "principal": login.principal.id if login is not None else None,
        "can_logout": login is not None and login.cookie,
        "nav": NAV,
        **values,
    }
    return _env.get_template(template).render(context)


def page(template: str, request: web.Request, *, status: int = 200, **values: Any) -> web.Response:
    """A whole page (a template that extends ``base.html``)."""
    return web.Response(text=render(template, request, **values), status=status, content_type="text/html")


fragment = page
"""A part of a page that htmx swaps in (a template that does not extend ``base.html``)."""


def form(request: web.Request) -> dict[str, str]:
    """The urlencoded form fields the guard parsed (first value of each)."""
    fields: dict[str, str] = request.get(FORM, {})
    return fields


def notice(request: web.Request) -> str | None:
    """The ``done`` message a post/redirect/get redirect carries (``?done=...``), shown only when this
    console sent the browser here: a same-origin navigation, or a client without Fetch Metadata.
    From a link on another site it is left out (a page there could put any words on the console,
    "paste your key at ..." included)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return None
    return request.query.get("done")


def back(location: str) -> web.HTTPSeeOther:
    """Post/redirect/get: raise the result to send the browser to ``location`` (a path on /console)."""
    return web.HTTPSeeOther(location)
