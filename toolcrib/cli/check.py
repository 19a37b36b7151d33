"""``toolcrib check``: validate the config file and report what would go wrong, without starting anything.

Problems (exit 1): an enabled stdio server's command that cannot be found, with ``[storage] url`` its
password reference or the shared audit key not stored anywhere, a malformed ``secret:``
reference or one whose name is cut short (``secret:c/api key`` is ``secret:c/api`` then `` key``:
see :func:`cut_refs`) in a server's ``env``, ``headers``, ``args`` or ``url``, a ``secret:``
reference that is not stored anywhere, a bind refused by :func:`check_bind` (raised as a one-line
error). Warnings (exit 0): no enabled servers, a number or boolean written as a string (pydantic
accepts ``port = "8765"``; the file should say ``port = 8765``), a ``${VAR}`` in a server's ``env``,
``headers``, ``args`` or ``url`` (toolcrib never expands them), a literal that looks like an API key
or password in a server's ``env``, ``headers``, ``args`` or URL query (masked when the command line
is printed; the advised reference keeps an auth scheme prefix: ``Bearer secret:NS/NAME``).
The last line is the summary, and it agrees with the exit code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from toolcrib.cli.words import counted
from toolcrib.config import STATE_PATHS, Config, ServerConfig, shared_state, shared_state_warning

_SECRET_NAME = re.compile(r"(token|secret|passw|api[_-]?key|apikey|auth|credential|private|access[_-]?key)", re.I)
_TOKEN_PREFIX = re.compile(
    r"^(Bearer\s+|Basic\s+|Token\s+)?(sk-|sk_|ghp_|gho_|ghs_|github_pat_|xox[abpr]-|glpat-|AKIA)"
)


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())


def looks_like_literal_secret(key: str, value: str) -> bool:
    """True for a literal credential: a well-known token prefix, a credential-like key name with a
    literal value, or a long high-entropy word. ``secret:`` references and ``${VAR}`` are not literals."""
    if not value or "secret:" in value or value.startswith("${"):
        return False
    if _TOKEN_PREFIX.match(value):
        return True
    if _SECRET_NAME.search(key):
        return True
    return len(value) >= 20 and " " not in value and "/" not in value and _entropy(value) > 3.5


def malformed_refs(value: str) -> list[str]:
    """Each ``secret:...`` occurrence in ``value`` that is not a valid ``secret:NS/NAME`` reference."""
    from toolcrib.gateway.trust.secrets import REF_RE

    bad = []
    for m in re.finditer(r"secret:", value):
        if REF_RE.match(value, m.start()) is None:
            bad.append(value[m.start() : m.start() + 40].split()[0] if value[m.start() :].strip() else "secret:")
    return bad


_CUT = re.compile(r"\s*\w|[+~!$%^*|\\]")
"""What, right after a ``secret:NS/NAME`` match, says the name was meant to go on: a space and a word
(``secret:c/api key``), a non-ASCII letter (``secret:c/clé``) or a symbol names do not hold."""


_SEPARATE = re.compile(r"\s+\S*[=:]")
"""A word after a reference's whitespace that stands on its own: a ``key=value`` pair (a libpq
connection string ``password=secret:pg/pw user=app``), another reference, a URL."""


def cut_refs(value: str) -> list[tuple[str, str]]:
    """``(reference, as written)`` for each ``secret:NS/NAME`` in ``value`` whose name is cut short:
    followed by text the name cannot hold (see :data:`_CUT`), unless that is a separate word (see
    :data:`_SEPARATE`); ``as written`` runs to the end of that
    word, e.g. ``("secret:c/api", "secret:c/api key")``. A name is ``[A-Za-z0-9_.-]`` only, so such a
    value would send the secret followed by the rest."""
    from toolcrib.gateway.trust.secrets import REF_RE

    cut = []
    for m in REF_RE.finditer(value):
        if _CUT.match(value, m.end()) and not _SEPARATE.match(value, m.end()):
            word = re.match(r"\s*\S*", value[m.end() :])
            cut.append((m.group(0), m.group(0) + (word.group(0) if word else "")))
    return cut


_VAR = re.compile(r"\$\{[^}]*\}")


def unexpanded_vars(value: str) -> list[str]:
    """Each ``${...}`` in ``value``: toolcrib never expands them (a server gets the text as written)."""
    return _VAR.findall(value)


_SCHEME = re.compile(r"^(Bearer|Basic|Token)\s+", re.I)


def ref_name(key: str) -> str:
    """A secret name for ``key`` (``Authorization`` -> ``authorization``, ``${GH TOKEN}`` -> ``gh_token``)."""
    return re.sub(r"[^a-z0-9_.-]+", "_", key.lower()).strip("_.-") or "secret"


def advised_reference(server: str, key: str, value: str) -> tuple[str, str, str]:
    """``(name to store, value to write, scheme)`` for a literal secret ``value`` of ``key``: the
    reference ``secret:SERVER/NAME``, after the auth scheme prefix the value had (``Bearer sk-...`` ->
    ``("authorization", "Bearer secret:SERVER/authorization", "Bearer")``: store only what follows it)."""
    name = ref_name(key)
    scheme = _SCHEME.match(value)
    return name, f"{scheme.group(0) if scheme else ''}secret:{server}/{name}", scheme.group(1) if scheme else ""


_DSN_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]+:([^@\s]+)@")
_QUERY_SECRET = re.compile(r"[?&]([^=&#]*(?:key|token|secret|passw|auth|sig)[^=&#]*)=([^&#]+)", re.I)


def _literal_secrets_in_args_and_url(s: ServerConfig) -> Iterator[str]:
    """Where a server's ``args`` or ``url`` hold a literal credential: a token-like argument (also the
    value after ``--api-key``-style flags), a password in a DSN, a key-like URL query parameter."""
    previous = ""
    for i, arg in enumerate(s.args):
        if "secret:" not in arg:
            flag_value = previous.startswith("-") and bool(_SECRET_NAME.search(previous))
            value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
            named = arg.startswith("-") and "=" in arg and bool(_SECRET_NAME.search(arg.split("=", 1)[0]))
            dsn = _DSN_PASSWORD.match(arg)
            if (
                _TOKEN_PREFIX.match(value)
                or (flag_value and value)
                or (named and value)
                or (dsn and not dsn.group(1).startswith("$"))
            ):
                yield f"args[{i}]"
        previous = arg
    if s.url and "secret:" not in s.url:
        for m in _QUERY_SECRET.finditer(s.url):
            yield f"url query parameter {m.group(1)!r}"


def _shown(s: ServerConfig, flagged: list[str]) -> str:
    """The server's command line or URL as printed by ``check``, flagged literal secrets masked."""
    if s.command is None:
        url = s.url or ""
        if any(w.startswith("url ") for w in flagged):
            url = _QUERY_SECRET.sub(lambda m: m.group(0).split("=", 1)[0] + "=***", url)
        return url
    args = list(s.args)
    for where in flagged:
        if where.startswith("args["):
            i = int(where[5:-1])
            args[i] = args[i].split("=", 1)[0] + "=***" if args[i].startswith("-") and "=" in args[i] else "***"
    return " ".join([s.command, *args])


def _stringly(raw: Any, model: Any, where: str) -> Iterator[str]:
    """Keys whose TOML value is a string but whose validated value is a number or boolean."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            if isinstance(model, BaseModel):
                sub = getattr(model, key, None)
            elif isinstance(model, dict):
                sub = model.get(key)
            else:
                continue
            yield from _stringly(value, sub, f"{where}.{key}" if where else str(key))
    elif isinstance(raw, str) and isinstance(model, (int, float, bool)):
        yield f"{where} = {raw!r} is a string; write it without quotes: {where.rsplit('.', 1)[-1]} = {raw}"


def _command_problem(name: str, s: ServerConfig, base: Path) -> str | None:
    assert s.command is not None
    command = os.path.expanduser(s.command)
    if os.sep in command:
        path = Path(command)
        if not path.is_absolute():  # load_config anchored it unless `cwd` is set: then it is relative to cwd
            path = Path(s.cwd or base) / path
        if path.is_file() and os.access(path, os.X_OK):
            return None
        return (
            f"{name}: command {str(path)!r} not found or not executable; fix `command` "
            "(a relative path starts at the config file's directory, or at `cwd` when set)"
        )
    if shutil.which(command) is None:
        return f"{name}: command {s.command!r} is not on PATH; install it or write its absolute path in `command`"
    return None


def run_check(args: argparse.Namespace, config: Config) -> int:
    """Print the report described in the module docstring; return 1 when there are problems."""
    from toolcrib.app import check_bind
    from toolcrib.gateway.trust.secrets import ChainStore, server_refs

    path = Path(args.config_path)
    check_bind(config)
    servers = config.enabled_servers
    problems: list[str] = []
    warnings: list[str] = []
    enabled = counted(len(servers), "enabled server")
    print(f"{path}: {enabled}, {config.gateway.mode} mode, auth = {config.gateway.auth!r}")
    print(f"  state files (relative paths resolve against {path.parent}):")
    for section, key in STATE_PATHS:
        value = getattr(getattr(config, section), key)
        if value is not None:
            print(f"    [{section}] {key}: {value}")
    store = ChainStore(config.secrets.file)
    if config.storage.url is not None:
        from toolcrib.storage.postgres import describe

        print(f"  storage: {describe(config.storage.url)} (PostgreSQL, shared by every replica; not contacted)")
        for ref, why in (
            (config.storage.password, "[storage] password"),
            ("secret:toolcrib/audit-hmac", "the audit key every replica must share"),
        ):
            if ref is None:
                continue
            if store.source(ref) is None:
                ns, _, key = ref.removeprefix("secret:").partition("/")
                problems.append(f"storage: {ref}: NOT SET ({why}); run `toolcrib creds set {ns} {key}`")
            else:
                print(f"    {ref}: set ({store.source(ref)})")
    if not servers:
        warnings.append("no enabled servers: clients will see no tools; add a [servers.NAME] table")
    warnings.extend(shared_state_warning(other, what) for other, what in shared_state(config, path))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        raw = {}
    warnings.extend(_stringly(raw, config, ""))
    for name, s in sorted(config.servers.items()):
        flagged = list(_literal_secrets_in_args_and_url(s))
        target = _shown(s, flagged)
        print(f"  {name}: {s.kind} {target}{'' if s.enabled else ' [disabled]'}")
        if not s.enabled:
            continue
        if s.command is not None and (problem := _command_problem(name, s, path.parent)):
            problems.append(problem)
        for field, values in (("env", s.env), ("headers", s.headers)):
            for key, value in values.items():
                if looks_like_literal_secret(key, value):
                    stored, written, scheme = advised_reference(name, key, value)
                    part = f" (only what follows {scheme!r})" if scheme else ""
                    warnings.append(
                        f"{name}: {field}.{key} looks like a literal secret; store it{part} with "
                        f"`toolcrib creds set {name} {stored}` and write {key} = {json.dumps(written)}"
                    )
        texts = [
            *((f"env.{k}", v) for k, v in s.env.items()),
            *((f"headers.{k}", v) for k, v in s.headers.items()),
            *((f"args[{i}]", v) for i, v in enumerate(s.args)),
            *([("url", s.url)] if s.url else []),
        ]
        cut_short = set()
        for where, value in texts:
            for bad in malformed_refs(value):
                problems.append(f"{name}: {where}: {bad!r} is not a reference; write secret:NAMESPACE/NAME")
            for ref, written in cut_refs(value):
                cut_short.add(ref.removeprefix("secret:"))
                meant = re.sub(r"[^A-Za-z0-9_.:/-]+", "_", written.strip())
                problems.append(
                    f"{name}: {where}: {written!r} is not one reference but {ref!r} and the text after it "
                    f"(a name holds only letters, digits, _ . -); store the secret as {meant} and write that"
                )
            for var in unexpanded_vars(value):
                stored = ref_name(var[2:-1].split(":")[0])
                advice = f"store the value with `toolcrib creds set {name} {stored}` and write secret:{name}/{stored}"
                if where == f"env.{var[2:-1]}" and s.command is not None:
                    advice += f', or drop it and pass toolcrib\'s own with inherit_env = ["{var[2:-1]}"]'
                warnings.append(f"{name}: {where}: {var} is not expanded (the server gets it as written); {advice}")
        for where in flagged:
            warnings.append(f"{name}: {where} looks like a literal secret; move it into a secret: reference")
        for ref in server_refs(s):
            if ref in cut_short:
                continue  # reported above: the reference is not what was meant
            source = store.source(ref)
            if source is None:
                ns, _, key = ref.partition("/")
                problems.append(f"{name}: secret:{ref}: NOT SET; run `toolcrib creds set {ns} {key}`")
            else:
                print(f"    secret:{ref}: set ({source})")
    for line in problems:
        print(f"  PROBLEM {line}", file=sys.stderr)
    for line in warnings:
        print(f"  warning {line}", file=sys.stderr)
    if problems:
        tally = f"{counted(len(problems), 'problem')}, {counted(len(warnings), 'warning')}"
        print(f"{path}: {tally}: fix the {'problem' if len(problems) == 1 else 'problems'} above (exit 1)")
        return 1
    print(f"{path}: ok" + (f" with {counted(len(warnings), 'warning')} (see above)" if warnings else ""))
    return 0
