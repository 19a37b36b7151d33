"""Property-based tests (hypothesis, 1000 examples each) of three small parsers outside the policy:
the catalog's name sanitiser, the client-config importer and the CLI's ``parse_time``."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.target_importer import WHOLE_FILE_ERRORS as IMPORT_FILE_ERRORS
from tests.fuzz.target_importer import account as account_for_servers
from toolcrib.cli.operator import parse_time
from toolcrib.client_import import import_client_config
from toolcrib.config import SERVER_NAME_RE, ServerConfig, parse_config
from toolcrib.errors import ConfigError, ToolcribError
from toolcrib.router.catalog import Catalog, exposed_name

PROPS = settings(max_examples=1000, deadline=None, database=None)
STRICT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

# -- catalog name sanitiser ---------------------------------------------------------------------

SEPARATORS = st.sampled_from(["__", "_", "-", "--", "x"]) | st.from_regex(r"[A-Za-z0-9_-]{1,4}", fullmatch=True)
SERVERS = st.from_regex(SERVER_NAME_RE, fullmatch=True) | st.sampled_from(["a", "a_", "a-b", "s" * 48])
TOOL_NAMES = st.text(max_size=70) | st.sampled_from(["a.b", "a_b", "a b", "_b__x", "", "é", "a" * 64, "a" * 65])


@st.composite
def catalogs(draw: st.DrawFn) -> tuple[str, dict[str, list[str]]]:
    sep = draw(SEPARATORS)
    servers = draw(st.lists(SERVERS.filter(lambda s: sep not in s), min_size=1, max_size=3, unique=True))
    listing: dict[str, list[str]] = {}
    for server in servers:
        names = draw(st.lists(TOOL_NAMES, max_size=6, unique=True))
        if names and draw(st.booleans()):  # a tool named after another's hashed key, listed first
            victim = draw(st.sampled_from(names))
            clash = exposed_name(server, victim, sep)
            names = list(dict.fromkeys([clash[len(server) + len(sep) :], *names, victim + "."]))
        listing[server] = names
    return sep, listing


def _build(sep: str, listing: dict[str, list[str]], order: list[str]) -> Catalog:
    tools: dict[str, Any] = {
        server: (
            ServerConfig(command="x"),
            [types.Tool(name=n, input_schema={"type": "object"}) for n in listing[server]],
            [types.Prompt(name=n) for n in listing[server]],
        )
        for server in order
    }
    return Catalog.build(tools, {}, separator=sep)


@PROPS
@given(catalogs(), st.randoms(use_true_random=False))
def test_catalog_names_are_strict_injective_and_stable(case: tuple[str, dict[str, list[str]]], rnd: Any) -> None:
    sep, listing = case
    cat = _build(sep, listing, list(listing))
    for entries in (cat.tools, cat.prompts):
        wanted = {(server, name) for server, names in listing.items() for name in names}
        assert {(e.server, e.name) for e in entries.values()} == wanted, "a distinct tool was shadowed"
        for key, entry in entries.items():
            assert STRICT_NAME.fullmatch(key), key
            assert entry.key == key == exposed_name(entry.server, entry.name, sep), "not a function of (server, name)"
    shuffled = list(listing)
    rnd.shuffle(shuffled)
    again = _build(sep, listing, shuffled)
    assert {k: (e.server, e.name) for k, e in again.tools.items()} == {
        k: (e.server, e.name) for k, e in cat.tools.items()
    }


# -- client-config importer ---------------------------------------------------------------------

# lone surrogates included: JSON's "\ud800" escape gives one
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12) | st.sampled_from(["\ud800", "a\udc80b"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)
TOKEN = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=20, max_size=30)
ENV = st.dictionaries(st.sampled_from(["API_KEY", "HOME", "Authorization"]) | ANY_TEXT, TOKEN | ANY_TEXT, max_size=3)
SPEC = st.fixed_dictionaries(
    {},
    optional={
        "command": ANY_TEXT | JSON_VALUES,
        "args": st.lists(ANY_TEXT, max_size=3) | JSON_VALUES,
        "cwd": ANY_TEXT | JSON_VALUES,
        "env": ENV | JSON_VALUES,
        "url": st.sampled_from(["http://127.0.0.1:9/mcp", "https://x.example/sse"]) | ANY_TEXT | JSON_VALUES,
        "serverUrl": ANY_TEXT,
        "type": st.sampled_from(["stdio", "sse", "http"]) | JSON_VALUES,
        "headers": ENV | JSON_VALUES,
        "disabled": st.booleans() | JSON_VALUES,
    },
)
CLASHING = st.sampled_from(["a b", "a-b", "a!b", "a__b", "a_b", "a", "-", "_", "time", "time!", "x" * 60])
SERVER_MAP = st.dictionaries(CLASHING | ANY_TEXT, st.just({"command": "x"}) | SPEC | JSON_VALUES, max_size=5)
CLIENT_CONFIGS = st.one_of(
    SERVER_MAP.map(lambda s: {"mcpServers": s}),
    SERVER_MAP.map(lambda s: {"servers": s}),
    SERVER_MAP.map(lambda s: {"mcp": {"servers": s}}),
    JSON_VALUES,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("import")


@PROPS
@given(document=CLIENT_CONFIGS)
def test_importer_gives_a_valid_config_or_a_config_error(workdir: Path, document: Any) -> None:
    source, out = workdir / "client.json", workdir / "toolcrib.toml"
    source.write_text(json.dumps(document), encoding="utf-8")
    out.unlink(missing_ok=True)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import_client_config(source, out, force=True)
    except ConfigError as exc:  # only for the whole file, never for one server
        assert "\n" not in str(exc) and any(e in str(exc) for e in IMPORT_FILE_ERRORS), str(exc)
        return
    text = out.read_text(encoding="utf-8")
    parse_config(tomllib.loads(text), out)
    servers = document.get("mcpServers", document.get("servers"))
    account_for_servers(document["mcp"]["servers"] if servers is None else servers, text)


# -- parse_time ---------------------------------------------------------------------------------

NOW = 1_800_000_000.0
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
AMOUNTS = st.integers(0, 10**5).map(str) | st.decimals(0, 10**5, places=3).map(lambda d: f"{d:f}")
DURATIONS = st.tuples(AMOUNTS, st.sampled_from(["", " "]), st.sampled_from(sorted(UNITS))).map(
    lambda t: (f"{t[0]}{t[1]}{t[2]}", NOW - float(t[0]) * UNITS[t[2]])
)
MOMENTS = st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9999, 12, 30))
ISO = MOMENTS.map(lambda d: d.replace(tzinfo=dt.UTC)).map(lambda d: (d.isoformat(), d.timestamp()))
DATES = MOMENTS.map(lambda d: (d.date().isoformat(), dt.datetime.combine(d.date(), dt.time()).astimezone().timestamp()))
EPOCHS = st.floats(-1e10, 1e11, allow_nan=False).map(lambda f: (repr(f), f)) | st.integers(0, 2**33).map(
    lambda i: (str(i), float(i))
)
ODD = st.text(max_size=24) | st.sampled_from(
    ["nan", "inf", "-Infinity", "1e400", "9" * 400 + "w", "1e300", "0001-01-01", "9999-12-31T23:59:59", "\u0663d"]
)


@PROPS
@given(DURATIONS | ISO | DATES | EPOCHS)
def test_parse_time_reads_durations_iso_dates_and_epochs(case: tuple[str, float]) -> None:
    text, expected = case
    assert math.isclose(parse_time(text, NOW), expected, rel_tol=0, abs_tol=1e-3), text


@PROPS
@given(ODD | DURATIONS.map(lambda c: c[0]) | ISO.map(lambda c: c[0]))
def test_parse_time_never_raises_anything_else_and_never_returns_a_non_time(text: str) -> None:
    try:
        value = parse_time(text, NOW)
    except ToolcribError as exc:
        assert "\n" not in str(exc)
        return
    except ValueError:
        return
    assert math.isfinite(value), (text, value)
    dt.datetime.fromtimestamp(value, dt.UTC)  # a time the CLI can print
