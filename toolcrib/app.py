"""The composition root: builds pool, index, trust layers and transports from a Config, and runs them.

``toolcrib serve`` calls :func:`serve`; tests call :func:`running_gateway` to get a live gateway on
an ephemeral port.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from aiohttp import web

from toolcrib.config import Config
from toolcrib.console.app import Console
from toolcrib.console.session import ConsoleLogins
from toolcrib.errors import AuditError, ConfigError, ToolcribError
from toolcrib.gateway.approval import approval_layer
from toolcrib.gateway.audit.backends import AuditLog, audit_key, open_audit_log
from toolcrib.gateway.audit.rows import refused_auth_event, refused_call_event, search_event
from toolcrib.gateway.audit.writer import AuditWriter
from toolcrib.gateway.edge.admin import AdminApi
from toolcrib.gateway.edge.guard import Guard, access
from toolcrib.gateway.edge.http import HttpTransport
from toolcrib.gateway.edge.shared_sessions import SessionDirectory
from toolcrib.gateway.edge.slowclients import apply_client_timeouts
from toolcrib.gateway.pipeline import (
    UpstreamCall,
    audit_layer,
    limits_layer,
    policy_layer,
    quarantine_layer,
    redact_layer,
    validation_layer,
)
from toolcrib.gateway.server import Gateway
from toolcrib.gateway.trust import policy
from toolcrib.gateway.trust.apikeys import ApiKeyStore
from toolcrib.gateway.trust.approvals import AsyncApprovals, open_approvals
from toolcrib.gateway.trust.auth import (
    Authenticator,
    build_authenticator,
    challenger,
    protected_resource_metadata,
)
from toolcrib.gateway.trust.identity import LOCAL_OPERATOR
from toolcrib.gateway.trust.limits import Limiter
from toolcrib.gateway.trust.quarantine import Trust
from toolcrib.gateway.trust.redaction import Redactor, install_log_redaction
from toolcrib.gateway.trust.sealed import Sealer
from toolcrib.gateway.trust.secrets import ChainStore, expander
from toolcrib.observe.savings import SavingsLedger, SavingsMeter, open_savings_store
from toolcrib.observe.telemetry import Telemetry, TimedSearcher, open_telemetry
from toolcrib.router.pool import Pool
from toolcrib.startup import StartupInterrupted, bind_error, check_port_free, unless
from toolcrib.storage import open_database

if TYPE_CHECKING:
    from toolcrib.index.embedder import Embedder
    from toolcrib.router.reindex import Reindexer
    from toolcrib.storage.postgres import Database, Listener

log = logging.getLogger("toolcrib.serve")


@dataclass
class Running:
    """A live gateway: its address, parts and transport (for tests and the serve command)."""

    config: Config
    parts: Parts
    http: HttpTransport
    url: str
    port: int

    @property
    def pool(self) -> Pool:
        return self.parts.pool

    @property
    def gateway(self) -> Gateway:
        return self.parts.gateway

    @property
    def reindexer(self) -> Reindexer | None:
        return self.parts.reindexer


@dataclass
class Parts:
    pool: Pool
    gateway: Gateway
    reindexer: Reindexer | None
    audit: AuditLog
    writer: AuditWriter
    approvals: AsyncApprovals
    redactor: Redactor
    trust: Trust
    origin: dict[str, str] = field(default_factory=dict)
    """``{"url": public origin}`` once the endpoint is bound (what challenges and approval URLs name)."""
    db: Database | None = None
    """The shared PostgreSQL database (``[storage] url``); None for the embedded default."""
    listener: Listener | None = None
    """Its LISTEN connection (cross-replica signals), run by :func:`running_gateway`."""
    savings: SavingsLedger | None = None
    """Tokens of the full tool list vs what clients loaded, per day and principal (the console reads it)."""
    telemetry: Telemetry | None = None
    """Prometheus metrics (``/metrics``) and, with ``[telemetry] otlp_endpoint``, OpenTelemetry traces."""

    def close(self) -> None:
        self.writer.close()
        self.audit.close()
        self.approvals.close()
        if self.savings is not None:
            self.savings.close()  # its last flush, before the database it may write to closes
        if self.telemetry is not None:
            self.telemetry.close()  # flushes buffered spans to the collector
        if self.db is not None:
            self.db.close()


def build(config: Config, *, embedder: Embedder | None = None, db: Database | None = None) -> Parts:
    """Wire credentials, pool, index, audit, policy, approvals, pins and the dispatch pipeline.

    ``db``: the shared database (:func:`open_storage`), or None for the embedded default."""
    store = ChainStore(config.secrets.file)
    listener = None
    if db is not None:
        from toolcrib.storage.postgres import Listener

        listener = Listener(db)
    redactor = Redactor()
    pool = Pool(config, expand_secret=expander(store, redactor), scrub=redactor.scrub_model)
    install_log_redaction(redactor)
    pins = None
    if db is not None:
        from toolcrib.router.pins import PinStore, pin_document

        pins = PinStore(pin_document(db, config.policy.pins_path), separator=config.gateway.separator)
    trust = Trust(config, pool, pins)

    async def on_change(server: str, what: str) -> None:
        if what in ("connected", "tools_changed"):
            trust.refresh()

    pool.subscribe(on_change)  # before the gateway and the index: quarantine is settled first
    root_key = audit_key(config, db, store)
    assert root_key is not None  # with create (the default) a missing key is made or raises AuditError
    audit = open_audit_log(config, db, hmac_key=root_key, redactor=redactor)
    writer = AuditWriter(audit)
    approvals = AsyncApprovals(open_approvals(config, db, redactor), listener)
    sealer, origin = Sealer(root_key), dict[str, str]()  # origin["url"]: the public origin, known once bound
    telemetry = open_telemetry(config, store, redactor)

    layers = [
        telemetry.layer(),  # names the request's upstream call for /metrics and the trace
        audit_layer(writer),
        limits_layer(Limiter.from_config(config.limits)),  # per replica; a refusal is still audited
        redact_layer(redactor),
        quarantine_layer(trust.is_quarantined),
        telemetry.timed("policy", policy_layer(trust.decide)),
        validation_layer(lambda key: e.tool.input_schema if (e := pool.catalog.tools.get(key)) else None),
        telemetry.timed(
            "approval",
            approval_layer(
                approvals,
                mode=config.policy.approval_mode,
                timeout=config.policy.approval_timeout,
                sealer=sealer,
                base_url=lambda: origin.get("url", ""),
            ),
        ),
    ]
    if (upstream_span := telemetry.upstream_layer()) is not None:  # tracing on: the upstream CLIENT span
        layers.append(upstream_span)

    def searched(call: UpstreamCall, results: Sequence[str]) -> None:
        writer.submit(search_event(call, results))
        telemetry.search_results(results)

    def refused(call: UpstreamCall, rule: str, reason: str) -> None:
        writer.submit(refused_call_event(call, rule, reason))
        telemetry.refused(call, reason)

    reindexer: Reindexer | None = None
    if config.gateway.mode == "dispatcher":
        from toolcrib.router.reindex import Reindexer, open_index, server_docs_of

        try:
            index = open_index(config, embedder, db)
        except ToolcribError as exc:
            log.error("tool index unavailable, search_tools will fail: %s", exc.message)
        else:
            reindexer = Reindexer(
                index,
                lambda: pool.catalog,
                visible=trust.searchable,
                server_docs=lambda: server_docs_of({n: up.state for n, up in pool.upstreams.items()}),
            )
            reindexer.learn_from_use(config, audit, db)  # [index] learn_from_use: mined in the background
    gateway = Gateway(
        config,
        pool,
        trust,
        redactor,
        index=TimedSearcher(reindexer.index, telemetry) if reindexer else None,
        layers=layers,
        on_search=searched,
        on_refused=refused,
        sealer=sealer,
    )
    savings = SavingsLedger(open_savings_store(config, db), on_record=telemetry.metrics.tokens)
    gateway.savings = SavingsMeter(savings)
    gateway.mrtr.parking.ttl = config.gateway.input_wait  # [gateway] input_wait: parked calls' wait for a retry
    if reindexer is not None:
        _reindex_on_change(pool, reindexer)
    if db is not None and listener is not None:
        from toolcrib.router.replicas import share_list_changes

        share_list_changes(pool, db, listener)
    telemetry.attach(gateway, pool, writer, approvals)
    return Parts(
        pool, gateway, reindexer, audit, writer, approvals, redactor, trust, origin, db, listener, savings, telemetry
    )


def _reindex_on_change(pool: Pool, reindexer: Reindexer) -> None:
    async def listener(server: str, what: str) -> None:
        if what in ("connected", "tools_changed"):
            try:
                await reindexer.changed(server)  # held until the start-up sync in running_gateway
            except ToolcribError as exc:
                log.error("reindex of %s failed: %s", server, exc.message)

    pool.subscribe(listener)


def open_storage(config: Config) -> Database | None:
    """The shared database, connected and migrated to this version's schema; None when embedded.
    Raises :class:`~toolcrib.errors.StorageError` (unreachable, or newer than this toolcrib)."""
    db = open_database(config)
    if db is not None:
        from toolcrib.storage import migrations

        try:
            before, after = migrations.upgrade(db)
        except BaseException:
            db.close()
            raise
        if before != after:
            log.info("storage: %s schema upgraded from version %d to %d", db.where, before, after)
    return db


def keys_store(config: Config, db: Database | None) -> ApiKeyStore | None:
    """The API key store in ``db`` (None: the default file store)."""
    if db is None:
        return None
    from toolcrib.gateway.trust.apikeys import key_document

    return ApiKeyStore(key_document(db, config.auth.keys_path))


def _live_documents(listener: Listener, keys: ApiKeyStore | None, trust: Trust) -> None:
    """Keys and pins cached per replica, refreshed when any replica changes them (NOTIFY)."""
    from toolcrib.storage.documents import PgDocument, subscribe_documents

    docs = [trust.pins.document, *([keys.document] if keys is not None else [])]
    subscribe_documents(listener, [d for d in docs if isinstance(d, PgDocument)])


def check_bind(config: Config) -> None:
    if config.gateway.auth == "none" and not policy.is_loopback(config.gateway.host):
        raise ConfigError(
            f'[gateway] auth = "none" is only allowed on a loopback bind, not {config.gateway.host!r}; '
            'set auth = "keys" (and run `toolcrib keys add NAME`) or bind to 127.0.0.1'
        )


@asynccontextmanager
async def running_gateway(
    config: Config,
    *,
    connect_wait: float = 10.0,
    embedder: Embedder | None = None,
    abort: anyio.Event | None = None,
) -> AsyncIterator[Running]:
    """Start upstreams and the HTTP endpoint; on exit, drain and stop everything.

    Raises :class:`ConfigError` before starting anything when the bind is refused (see
    :func:`check_bind`) or the port is busy (:func:`check_port_free`). Setting ``abort`` before the
    endpoint listens stops the waiting for upstreams and the first index build, stops every upstream
    started so far and raises :class:`StartupInterrupted`."""
    check_bind(config)
    check_port_free(config.gateway.host, config.gateway.port)
    db = open_storage(config)
    try:
        keys = keys_store(config, db)
        authenticator = build_authenticator(config, keys)
        parts = build(config, embedder=embedder, db=db)
        if parts.reindexer is not None:
            parts.reindexer.hold()  # the start-up sync (_start_http) decides the model once: issue 14
        if parts.listener is not None:
            _live_documents(parts.listener, keys, parts.trust)
    except BaseException:
        if db is not None:
            db.close()
        raise
    try:
        async with AsyncExitStack() as stack:
            if hasattr(authenticator, "__aenter__"):
                await stack.enter_async_context(authenticator)  # type: ignore[arg-type]
            tg = await stack.enter_async_context(_serving(parts.pool))
            yield await _start_http(config, parts, authenticator, tg, stack, connect_wait, abort or anyio.Event())
    finally:
        parts.close()


@asynccontextmanager
async def _serving(pool: Pool) -> AsyncIterator[anyio.abc.TaskGroup]:
    async with pool.running(), anyio.create_task_group() as tg:
        try:
            yield tg
        finally:
            tg.cancel_scope.cancel()


async def _start_http(
    config: Config,
    parts: Parts,
    authenticator: Authenticator,
    tg: anyio.abc.TaskGroup,
    stack: AsyncExitStack,
    connect_wait: float,
    abort: anyio.Event,
) -> Running:
    pool = parts.pool
    base = parts.origin

    logins = None
    if config.console.enabled:
        logins = ConsoleLogins(parts.gateway.sealer, authenticator.authenticate, ttl=config.console.login_ttl)
    guard = Guard(
        config,
        authenticator.authenticate,
        on_refused=lambda request, detail, status: parts.writer.submit(refused_auth_event(request, detail, status)),
        challenge=challenger(config, lambda: base.get("url", "")),
        console=logins,
    )
    app = web.Application(middlewares=[guard.middleware], client_max_size=config.gateway.max_body_bytes + 1024)
    app.on_response_prepare.append(guard.on_prepare)
    directory = SessionDirectory(parts.db, ttl=config.gateway.session_ttl) if parts.db is not None else None
    transport = HttpTransport(parts.gateway, config, tg, directory)
    transport.add_routes(app)
    if parts.telemetry is not None:
        parts.telemetry.add_route(app, lambda: len(transport.sessions))  # GET /metrics, operators only
    if parts.listener is not None:
        if directory is not None:
            directory.listen(parts.listener, transport.deliver, transport.closed_elsewhere)
            tg.start_soon(directory.reap, transport.busy_sessions)
        await tg.start(parts.listener.run)
    reindex = None
    if parts.reindexer is not None:
        reindexer = parts.reindexer

        async def reindex(server: str | None, full: bool) -> Any:
            return await reindexer.sync({server} if server else None, full=full)

    AdminApi(
        config, pool, parts.audit, parts.writer, parts.approvals, reindex, ready_checks=_ready_checks(parts)
    ).add_routes(app)
    if logins is not None:
        Console(config, parts, logins).add_routes(app)
    if config.gateway.auth in ("oauth", "keys+oauth"):
        metadata = access("public", _metadata_handler(config, base))
        app.router.add_get("/.well-known/oauth-protected-resource", metadata)
        app.router.add_get("/.well-known/oauth-protected-resource/mcp", metadata)
    # Listen only once every upstream had its first attempt and the first index is built, so the
    # first client sees the whole catalog (an upstream still connecting after connect_wait joins later).
    await unless(abort, lambda: pool.wait_ready(connect_wait))  # catalog and quarantine follow by themselves
    if parts.reindexer is not None:
        connected = {name for name, up in pool.upstreams.items() if up.state.status == "connected"}
        try:
            await unless(abort, lambda: _sync(parts.reindexer, connected))
        except ToolcribError as exc:
            if isinstance(exc, StartupInterrupted):
                raise
            log.error("initial index build failed: %s", exc.message)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    apply_client_timeouts(
        runner, header_timeout=config.gateway.header_timeout, idle_timeout=config.gateway.idle_timeout
    )
    site = web.TCPSite(runner, config.gateway.host, config.gateway.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:  # taken while we were starting up
        await runner.cleanup()
        raise bind_error(config.gateway.host, config.gateway.port, exc) from None
    port = _bound_port(runner, config.gateway.port)
    host = config.gateway.host if ":" not in config.gateway.host else f"[{config.gateway.host}]"
    local = f"http://{host}:{port}"
    base["url"] = config.gateway.public_url or local  # what challenges and RFC 9728 metadata advertise
    tg.start_soon(transport.table.reap)

    async def shutdown() -> None:
        with anyio.CancelScope(shield=True):
            transport.accepting = False
            parts.gateway.listeners.close()  # subscriptions/listen streams end gracefully, then drain
            if transport.inflight:
                with anyio.move_on_after(config.gateway.drain_timeout):
                    await transport.idle.wait()
            transport.table.close_all()
            await runner.cleanup()

    stack.push_async_callback(shutdown)
    tg.start_soon(_audit_upkeep, parts.audit, config.audit.retention_days)
    if parts.reindexer is not None and parts.reindexer.learner is not None:
        tg.start_soon(parts.reindexer.learn_forever)
    settle_heap()
    return Running(config, parts, transport, f"{local}/mcp", port)


def _ready_checks(parts: Parts) -> dict[str, Callable[[], Any]]:
    """``/readyz`` with ``[storage] url``: the database answers a query and LISTEN is connected."""
    db, listener = parts.db, parts.listener
    if db is None or listener is None:
        return {}

    async def database() -> str | None:
        why = await anyio.to_thread.run_sync(db.ping)
        if why is None and not listener.connected:
            return "LISTEN connection down: approvals, key revocations and session messages from other replicas wait"
        return why

    return {"database": database}


GC_THRESHOLD = (20_000, 10, 10)
"""The cyclic collector's thresholds while calls are served (:func:`gc.set_threshold`; Python's
default is ``(700, 10, 10)``): a young collection every 20,000 net container allocations instead of
every 700. A passthrough call allocates hundreds, so at the default the collector ran several times
per call; each young collection touches every object the young ones refer to, wherever it lives in
the heap, and every 100th is a full one. Measured with ``benchmarks.load`` (200 sessions, 40 s):
7.6 s of collection at the default, 1.4 s at these; RSS flat either way."""


def settle_heap() -> None:
    """After start-up: collect once and move every surviving object (modules, models, the index,
    the catalog) to the collector's permanent generation, so the cyclic collector stops rescanning
    them on every full collection while calls are served (:func:`gc.freeze`); then collect young
    objects less often (:data:`GC_THRESHOLD`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


async def _sync(reindexer: Reindexer | None, servers: set[str]) -> None:
    if reindexer is not None:
        await reindexer.start(servers)


async def _audit_upkeep(audit: AuditLog, retention_days: int) -> None:
    """Every minute: fold the WAL and append a ``tally`` row (how many call rows older than 10
    minutes are completed, so verify can tell a completion removed); with retention set, prune old
    rows (behind a checkpoint) daily."""
    last_prune = 0.0
    while True:
        if retention_days and time.time() - last_prune > 86400:
            pruned = await anyio.to_thread.run_sync(audit.prune, time.time() - retention_days * 86400)
            if pruned:
                log.info("audit retention: pruned %d rows older than %d days", pruned, retention_days)
            last_prune = time.time()
        await anyio.sleep(60)
        await anyio.to_thread.run_sync(audit.checkpoint)
        try:
            await anyio.to_thread.run_sync(audit.tally)
        except AuditError as exc:  # tried again in a minute; verify reports what a missing tally leaves open
            log.warning("audit: no tally row this minute (%s)", exc.message)


def _metadata_handler(config: Config, base: dict[str, str]) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(protected_resource_metadata(config.auth, base.get("url", "")))

    return handler


def _bound_port(runner: web.AppRunner, default: int) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return default


__all__ = ["LOCAL_OPERATOR", "Running", "build", "check_bind", "running_gateway"]
