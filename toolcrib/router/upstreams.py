"""One managed connection to one downstream MCP server.

An :class:`Upstream` owns a supervisor task that connects (stdio, Streamable HTTP or legacy SSE,
either protocol era), fetches the server's tools, resources and prompts, and reconnects with
exponential backoff and jitter when the connection drops or the process dies. Calls go through
:meth:`Upstream.request`, which applies the bulkhead (a per-upstream concurrency limit), the
per-call deadline (expiry cancels the downstream request, which sends ``notifications/cancelled``)
and maps failures to :mod:`toolcrib.errors`.

Server-to-client requests (sampling, elicitation, roots) and log messages from the upstream are
relayed only to the :class:`Caller` whose call caused them, or refused / dropped when that cannot
be told: see :mod:`toolcrib.router.backchannel`.

Credentials are resolved here, at the upstream edge, and nowhere else.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.subscriptions import (
    ListenNotSupportedError,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    SubscriptionLost,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY

from toolcrib.config import ServerConfig
from toolcrib.errors import SecretError, UpstreamCrashed, UpstreamTimeout, UpstreamUnavailable
from toolcrib.router.backchannel import Backchannel, Caller, UpstreamError, current_caller
from toolcrib.router.http_transport import SESSION_GONE, _Conn, aiohttp_transport
from toolcrib.router.listing import MIN_TTL_REFRESH, Listing, changed_kinds, due, fetch_listing
from toolcrib.router.optional_caps import OptionalCaps
from toolcrib.router.stdio_env import child_environment
from toolcrib.router.stdio_noise import current_upstream
from toolcrib.router.stdio_transport import StdioConn, stdio_transport
from toolcrib.router.task_claim import TASKS_CLIENT
from toolcrib.router.upstream_state import UpstreamState, describe
from toolcrib.router.wire import Wire

log = logging.getLogger("toolcrib.upstream")
T = TypeVar("T")

MAX_BACKOFF = 30.0
CRASH_LOOP_LIMIT = 5
CRASH_LOOP_WINDOW = 60.0
CRASH_LOOP_PAUSE = 60.0
RECONNECT_GRACE = 10.0
"""Seconds a call waits for a reconnection in progress after a connection that worked was lost."""


__all__ = ["Caller", "Listing", "SecretExpander", "Upstream", "UpstreamState", "current_caller"]

SecretExpander = Callable[[str], str]


def _identity(value: str) -> str:
    return value


class Upstream:
    """A supervised client for one configured server."""

    def __init__(
        self,
        name: str,
        cfg: ServerConfig,
        *,
        expand_secret: SecretExpander = _identity,
        on_change: Callable[[Upstream, str], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.state = UpstreamState()
        self.listing = Listing()
        self._expand = expand_secret
        self._on_change = on_change
        self._client: Client | None = None
        self._conn: _Conn | StdioConn | None = None
        """toolcrib's Streamable HTTP connection of the current attempt (HTTP upstreams only)."""
        self._limiter = anyio.CapacityLimiter(cfg.max_concurrency)
        self._backchannel = Backchannel(name)
        self._stop = anyio.Event()
        self._closed = anyio.Event()
        self._refresh: set[str] = set()
        self._refresh_event = anyio.Event()
        self._expired: set[str] = set()
        """Kinds re-listed because their ttlMs ran out (SEP-2549), not because the server said they changed."""
        self._scope = anyio.CancelScope()
        self._resource_subs: set[str] = set()
        self._relisten = anyio.Event()
        self._connected = anyio.Event()
        self._warned: set[str] = set()
        self._optional = OptionalCaps(name)
        self._lost_at = -math.inf
        self.finished = anyio.Event()
        self.attempted = anyio.Event()
        """Set once the first connection attempt has succeeded or failed."""

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Supervise the connection until :meth:`stop`; never raises."""
        current_upstream.set(self.name)  # names this server in the stdio transport's log records
        attempt = 0
        while not self._stop.is_set():
            started = time.monotonic()
            permanent = False
            try:
                with self._scope:
                    await self._connect_once()
            except Exception as exc:  # a failing upstream must never take the others down
                error = describe(exc, self.cfg.url, self.cfg.command)
                # The same failure again is logged once; a setup problem (missing secret or
                # command) will not fix itself in seconds, so it is retried at the slowest pace.
                (log.warning if error != self.state.error else log.debug)("upstream %s: %s", self.name, error)
                self.state.error = error
                permanent = isinstance(exc, SecretError | FileNotFoundError | PermissionError)
            finally:
                if self._connected.is_set():
                    self._lost_at = time.monotonic()
                    self._connected = anyio.Event()
                self._client = None
                self._scope = anyio.CancelScope()
                self.attempted.set()
            if self._stop.is_set():
                break
            now = time.monotonic()
            self.state.crashes = [t for t in self.state.crashes if now - t < CRASH_LOOP_WINDOW] + [now]
            attempt = 0 if now - started > CRASH_LOOP_WINDOW else attempt + 1
            delay = min(MAX_BACKOFF, 0.25 * 2**attempt) * random.uniform(0.5, 1.0)
            if permanent:
                self.state.status = "reconnecting"
                delay = MAX_BACKOFF * random.uniform(0.8, 1.0)
            elif len(self.state.crashes) >= CRASH_LOOP_LIMIT:
                self.state.status = "crash-looping"
                delay = CRASH_LOOP_PAUSE
                log.error(
                    "upstream %s %s %d times in %.0f s; pausing restarts for %.0f s",
                    self.name,
                    "could not connect" if (self.state.error or "").startswith("cannot connect") else "crashed",
                    len(self.state.crashes),
                    CRASH_LOOP_WINDOW,
                    delay,
                )
                self.state.crashes.clear()
            else:
                self.state.status = "reconnecting"
            with anyio.move_on_after(delay):
                await self._stop.wait()
        self.state.status = "stopped"
        self.finished.set()

    async def stop(self) -> None:
        """Ask the supervisor to close the connection (stdio children: stdin closed, TERM, then KILL)."""
        self._stop.set()
        self._closed.set()
        if self._client is None:
            self._scope.cancel()

    async def wait_ready(self, timeout: float) -> bool:
        """Wait for the first attempt to finish (connected or failed); True if connected."""
        with anyio.move_on_after(timeout):
            await self.attempted.wait()
        return self._client is not None

    async def _connect_once(self) -> None:
        self._closed = anyio.Event()
        async with AsyncExitStack() as stack:
            client = Client(
                await self._transport(stack),
                mode="legacy" if self.cfg.kind == "sse" else "auto",
                message_handler=self._on_message,
                sampling_callback=self._backchannel.sampling,
                elicitation_callback=self._backchannel.elicitation,
                list_roots_callback=self._backchannel.roots,
                client_info=types.Implementation(name="toolcrib", version="0.1.0"),
                log_level="debug",
                cache=None,
                extensions=[TASKS_CLIENT],  # tasks (SEP-2663): router/task_claim.py
            )
            with anyio.CancelScope() as connecting:
                connecting.deadline = anyio.current_time() + self.cfg.connect_timeout
                async with client:
                    self.listing = await fetch_listing(
                        client, {"tools", "resources", "prompts"}, **self._listing_opts()
                    )
                    connecting.deadline = math.inf
                    await self._serve(client)
            if connecting.cancelled_caught and not self._stop.is_set():
                raise TimeoutError

    def _listing_opts(self) -> dict[str, Any]:
        """Optional listings get a third of the connect deadline; warnings are once per server."""
        return {"server": self.name, "warned": self._warned, "optional_timeout": self.cfg.connect_timeout / 3}

    async def _serve(self, client: Client) -> None:
        info = client.server_info
        self.state.protocol_version = client.protocol_version
        self.state.server_name = info.name if info else None
        self.state.server_title = info.title if info else None
        self.state.server_description = info.description if info else None
        self.state.instructions = client.instructions
        self.state.status = "connected"
        self.state.error = None
        self.state.connects += 1
        self._client = client
        stamp = getattr(client.session, "_stamp", None) if self.state.modern else None  # the SDK's per-era stamp
        if not self.state.modern or callable(stamp):  # toolcrib frames tools/call itself: router/wire.py
            Wire(self._backchannel, self._backchannel.transport_write, self._conn, stamp).attach(client)
        self._optional.refused.clear()  # a restarted server may have gained them
        self._connected.set()
        self.attempted.set()
        log.info(
            "upstream %s connected (%s, %d tools)",
            self.name,
            client.protocol_version,
            len(self.listing.tools),
        )
        await self._notify("connected")
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_closed, tg.cancel_scope)
            if self.state.modern:
                tg.start_soon(self._listen, client)
            tg.start_soon(self._expire_listings)
            while True:
                await self._refresh_event.wait()
                kinds, self._refresh = self._refresh, set()
                expired, self._expired = self._expired - kinds, set()  # an announced change wins
                kinds |= expired
                self._refresh_event = anyio.Event()
                old = self.listing
                with anyio.fail_after(self.cfg.connect_timeout):
                    self.listing = await fetch_listing(client, kinds, self.listing, **self._listing_opts())
                quiet = expired - changed_kinds(old, self.listing, expired)  # a TTL refresh that found no change
                for kind in sorted(kinds - quiet):
                    await self._notify(f"{kind}_changed")
        self._client = None
        if not self._stop.is_set():
            self.state.status = "reconnecting"
            self.state.error = "connection closed (server exited or dropped the connection)"
            log.warning("upstream %s: %s; restarting", self.name, self.state.error)
            await self._notify("disconnected")

    async def _expire_listings(self) -> None:
        """SEP-2549: re-list a kind when the ``ttlMs`` the server gave on it runs out (:func:`due`: never
        sooner than ``MIN_TTL_REFRESH`` s after the last listing; ``ttlMs`` 0 or absent: never)."""
        while True:
            kinds, wait = due(self.listing, time.monotonic())
            kinds -= self._expired | self._refresh
            if kinds:
                self._expired |= kinds
                self._refresh_event.set()
            await anyio.sleep(MIN_TTL_REFRESH if kinds else min(wait, MIN_TTL_REFRESH))

    def relist(self, kinds: Iterable[str]) -> None:
        """Re-list ``kinds`` (``tools``, ``resources``, ``prompts``) soon, telling listeners only if the
        listing changed: another replica's connection to this server saw a change this one may not."""
        wanted = set(kinds) & {"tools", "resources", "prompts"}
        if wanted and self._client is not None:
            self._expired |= wanted
            self._refresh_event.set()

    async def _watch_closed(self, scope: anyio.CancelScope) -> None:
        await self._closed.wait()
        scope.cancel()

    async def _listen(self, client: Client) -> None:
        """2026-07-28 servers announce changes on a ``subscriptions/listen`` stream.

        The stream carries list changes and updates of the resources clients subscribed to; it is
        reopened whenever that set of resources changes.
        """
        caps = client.server_capabilities
        wanted = {
            "tools": bool(caps.tools and caps.tools.list_changed),
            "prompts": bool(caps.prompts and caps.prompts.list_changed),
            "resources": bool(caps.resources and caps.resources.list_changed),
        }
        while True:
            subs = sorted(self._resource_subs)
            if not any(wanted.values()) and not subs:
                await self._relisten.wait()
                self._relisten = anyio.Event()
                continue
            try:
                async with anyio.create_task_group() as tg:

                    async def reopen(scope: anyio.CancelScope) -> None:
                        await self._relisten.wait()
                        self._relisten = anyio.Event()
                        scope.cancel()

                    tg.start_soon(reopen, tg.cancel_scope)
                    async with client.listen(
                        tools_list_changed=wanted["tools"],
                        prompts_list_changed=wanted["prompts"],
                        resources_list_changed=wanted["resources"],
                        resource_subscriptions=subs,
                    ) as sub:
                        async for event in sub:
                            await self._on_event(event)
                    tg.cancel_scope.cancel()
                    return
            except (ListenNotSupportedError, SubscriptionLost, MCPError) as exc:
                log.debug("upstream %s: no change subscription (%s)", self.name, exc)
                return

    async def _on_event(self, event: object) -> None:
        if isinstance(event, ResourceUpdated):
            await self._notify("resource_updated:" + event.uri)
            return
        kind = {ToolsListChanged: "tools", PromptsListChanged: "prompts", ResourcesListChanged: "resources"}.get(
            type(event)
        )
        if kind is not None:
            self._refresh.add(kind)
            self._refresh_event.set()

    async def subscribe(self, uri: str, on: bool) -> None:
        """Subscribe to (or unsubscribe from) updates of one upstream resource, in either era."""
        if self.state.modern:
            if on:
                self._resource_subs.add(uri)
            else:
                self._resource_subs.discard(uri)
            self._relisten.set()
            return
        if on:
            await self.request(lambda c: c.subscribe_resource(uri), what="resources/subscribe")
        else:
            await self.request(lambda c: c.unsubscribe_resource(uri), what="resources/unsubscribe")

    async def _notify(self, what: str) -> None:
        if self._on_change is not None:
            try:
                await self._on_change(self, what)
            except Exception:
                log.exception("catalog update after %s of %s failed", what, self.name)

    async def _transport(self, stack: AsyncExitStack) -> Any:
        cfg = self.cfg
        self._conn = None
        if cfg.kind == "stdio":
            assert cfg.command is not None
            env = child_environment(cfg.inherit_env) | {k: self._expand(v) for k, v in cfg.env.items()}
            args = [self._expand(a) for a in cfg.args]  # `secret:` references in args, e.g. from `toolcrib import`
            params = StdioServerParameters(command=cfg.command, args=args, env=env, cwd=cfg.cwd)
            return self._watched(stdio_transport(params, on_conn=self._on_conn))
        assert cfg.url is not None
        headers = {k: self._expand(v) for k, v in cfg.headers.items()}
        url = self._expand(cfg.url)  # a `secret:` reference may stand for a URL password or query token
        if cfg.kind == "sse":
            return self._watched(sse_client(url, headers=headers, timeout=cfg.connect_timeout))
        return self._watched(aiohttp_transport(url, headers, timeout=cfg.connect_timeout, on_conn=self._on_conn))

    def _on_conn(self, conn: _Conn | StdioConn) -> None:
        self._conn = conn

    @asynccontextmanager
    async def _watched(self, transport: Any) -> AsyncIterator[tuple[Any, Any]]:
        """The transport's streams, watched for EOF and routed by :class:`Backchannel`."""
        async with (
            transport as (read, write),
            self._backchannel.attach(read, write, self._closed) as ends,
        ):
            yield ends
        self._closed.set()

    # ---- upstream-initiated traffic ----------------------------------------------------------

    async def _on_message(self, message: Any) -> None:
        root = getattr(message, "root", message)
        kind = {
            "notifications/tools/list_changed": "tools",
            "notifications/resources/list_changed": "resources",
            "notifications/prompts/list_changed": "prompts",
        }.get(getattr(root, "method", ""))
        if kind is not None:
            self._refresh.add(kind)
            self._refresh_event.set()
        elif isinstance(root, types.ResourceUpdatedNotification) and SUBSCRIPTION_ID_META_KEY not in (
            root.params.meta or {}
        ):
            await self._notify("resource_updated:" + root.params.uri)  # a listen stream's copy came via _on_event

    # ---- calls -------------------------------------------------------------------------------

    async def request(self, op: Callable[[Client], Awaitable[T]], *, what: str) -> T:
        """Run ``op`` against the live client under the bulkhead and deadline.

        Raises :class:`UpstreamUnavailable`, :class:`UpstreamTimeout` or :class:`UpstreamCrashed`;
        an :class:`MCPError` from the server itself propagates unchanged, except -32601 to an optional
        kind (completion, subscribe): see :mod:`toolcrib.router.optional_caps`.
        """
        if self._optional.known_refused(what):
            answer: T = self._optional.answer(what)
            return answer
        deadline = self.cfg.timeout
        end = anyio.current_time() + deadline
        try:
            with self._backchannel.call() as call, anyio.fail_after(deadline):
                client = self._client or await self._reconnected(end)
                async with self._limiter:
                    try:
                        result = await op(client)
                    except MCPError as exc:
                        if (
                            isinstance(exc, UpstreamError)  # the server's own answer, whatever its code
                            or exc.error.code != types.CONNECTION_CLOSED
                            or not exc.error.message.startswith(SESSION_GONE)
                        ):
                            raise
                        # The server refused the session before processing the request (basic/transports,
                        # "Session Management"): nothing ran, so it is sent again once re-initialized.
                        self._closed.set()
                        log.info("upstream %s: session ended by the server; re-initializing", self.name)
                        await anyio.lowlevel.checkpoint()
                        result = await op(await self._reconnected(end, force=True))
        except TimeoutError:
            raise UpstreamTimeout(
                f"{self.name}: {what} exceeded the {deadline:g} s deadline and was cancelled; "
                f"raise [servers.{self.name}] timeout if it needs longer"
            ) from None
        except MCPError as exc:
            if self._optional.refuse(what, exc):
                degraded: T = self._optional.answer(what)
                return degraded
            if exc.error.code == types.CONNECTION_CLOSED and not isinstance(exc, UpstreamError):
                self._closed.set()
                raise UpstreamCrashed(
                    f"{self.name}: the server exited or dropped the connection during {what}; "
                    "toolcrib is restarting it, retry shortly"
                ) from None
            raise
        await call.flushed()
        return result

    async def _reconnected(self, end: float, *, force: bool = False) -> Client:
        """The live client, waiting for a reconnection in progress (the connection was lost less than
        :data:`RECONNECT_GRACE` seconds ago, or ``force``) until ``end``; else :class:`UpstreamUnavailable`."""
        recent = time.monotonic() - self._lost_at < RECONNECT_GRACE
        if (force or recent) and not self._stop.is_set():
            with anyio.move_on_after(min(end - anyio.current_time(), RECONNECT_GRACE)):
                while (self._client is None or self._closed.is_set()) and not self._stop.is_set():
                    await self._connected.wait()
                    if self._closed.is_set():
                        await anyio.sleep(0.05)
        if self._client is None or self._closed.is_set():
            raise UpstreamUnavailable(self._unavailable_reason())
        return self._client

    def _unavailable_reason(self) -> str:
        st = self.state
        detail = f" ({st.error})" if st.error else ""
        return f"{self.name}: server is {st.status}{detail}; check `toolcrib serve` output and retry"
