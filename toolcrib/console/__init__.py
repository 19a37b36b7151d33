"""The operator's web console at ``/console``: server-rendered pages (Jinja2) with a little htmx.

Served by the gateway behind the same guard as every route (:mod:`toolcrib.gateway.edge.guard`):
operator login by sealed cookie (:mod:`toolcrib.console.session`), same-origin + CSRF token on every
form, a strict Content-Security-Policy. Every asset is a file in this package (``static/``); the page
never contacts another origin. :class:`toolcrib.console.app.Console` adds the routes.
"""
