"""Property tests (hypothesis, 1000 examples each) of the importer's parsers: JSONC reading, the
secret scanner for ``args``, the dotenv reader, and the conversion of Codex TOML and of Claude Code
files (every server accounted for: converted or skipped, never lost)."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.client_import import Report, convert
from toolcrib.client_import.read import load, read_dotenv
from toolcrib.client_import.scan import ServerScan
from toolcrib.config import parse_config
from toolcrib.errors import ConfigError

PROPS = settings(max_examples=1000, deadline=None, database=None)
TEXT = st.text(max_size=12) | st.sampled_from(
    ["http://a//b", "/* not a comment */", "// nor this", "a,]", '"', "\\", "${input:x}"]
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("import-props")


# -- JSONC: comments and trailing commas anywhere between tokens give the same document -------------

GAPS = st.sampled_from(["", " ", "\n", '// c // http://x "q"\n', "/* { } , // */", "\t/**/ "])
JSON_DOCS = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)


def _jsonc(draw: Callable[[st.SearchStrategy[Any]], Any], value: Any) -> str:
    def gap() -> str:
        return str(draw(GAPS))

    if isinstance(value, dict):
        items = [f"{gap()}{json.dumps(k)}{gap()}:{gap()}{_jsonc(draw, v)}{gap()}" for k, v in value.items()]
        trailing = "," if items and draw(st.booleans()) else ""
        return "{" + ",".join(items) + trailing + gap() + "}"
    if isinstance(value, list):
        items = [f"{gap()}{_jsonc(draw, v)}{gap()}" for v in value]
        trailing = "," if items and draw(st.booleans()) else ""
        return "[" + ",".join(items) + trailing + gap() + "]"
    return json.dumps(value)


@PROPS
@given(data=st.data(), doc=st.dictionaries(TEXT, JSON_DOCS, max_size=4))
def test_jsonc_reads_as_the_json_it_decorates(workdir: Path, data: st.DataObject, doc: dict[str, Any]) -> None:
    src = workdir / "mcp.json"
    src.write_text(data.draw(GAPS) + _jsonc(data.draw, doc) + data.draw(GAPS), encoding="utf-8")
    fmt, loaded = load(src)
    assert fmt == "json"
    assert json.dumps(loaded, sort_keys=True) == json.dumps(doc, sort_keys=True)


# -- args: an injected secret never survives, whatever surrounds it ---------------------------------

SECRETS = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=16, max_size=30)
BENIGN = st.sampled_from(["-y", "@modelcontextprotocol/server-github", "--port", "8080", "--verbose", "stdio", "."])
PLACINGS: list[Callable[[str], list[str]]] = [
    lambda s: ["--api-key", s],
    lambda s: [f"--token={s}"],
    lambda s: ["--client-secret", s],
    lambda s: [f"postgres://user:{s}@db.internal:5432/app"],
    lambda s: [f"https://api.example/v1?region=eu&api_key={s}"],
    lambda s: [f"sk-{s}"],
]


@PROPS
@given(
    before=st.lists(BENIGN | TEXT, max_size=4),
    after=st.lists(BENIGN | TEXT, max_size=4),
    secret=SECRETS,
    placing=st.sampled_from(range(len(PLACINGS))),
)
def test_args_scanner_moves_every_injected_secret(
    before: list[str], after: list[str], secret: str, placing: int
) -> None:
    report = Report()
    args = [*before, *PLACINGS[placing](secret), *after]
    out = ServerScan("srv", report, Path("/w"), {}).args(args)
    assert len(out) == len(args)
    assert not any(secret in a for a in out), out
    refs = {s.ref for s in report.secrets}
    assert any(ref in a for a in out for ref in refs)
    for ref in re.findall(r"secret:srv/[A-Za-z0-9_.-]+", " ".join(out)):
        assert ref in refs or ref.rstrip(".-_") in refs or any(ref.startswith(r) for r in refs)


@PROPS
@given(args=st.lists(BENIGN, max_size=8))
def test_args_scanner_leaves_ordinary_args_alone(args: list[str]) -> None:
    report = Report()
    assert ServerScan("srv", report, Path("/w"), {}).args(args) == args
    assert not report.secrets and not report.notes


# -- dotenv ------------------------------------------------------------------------------------------

ENV_KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
ENV_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\"'\\"), max_size=16)


@PROPS
@given(env=st.dictionaries(ENV_KEYS, ENV_VALUES, max_size=5), data=st.data())
def test_dotenv_reads_what_was_written(workdir: Path, env: dict[str, str], data: st.DataObject) -> None:
    lines = ["# comment", ""]
    for key, value in env.items():
        style = data.draw(st.sampled_from(["double", "single", "plain"]))
        if style == "plain" and (not value or value != value.strip() or "#" in value or " " in value):
            style = "double"
        quoted = {"double": f'"{value}"', "single": f"'{value}'", "plain": value}[style]
        prefix = data.draw(st.sampled_from(["", "export "]))
        lines.append(f"{prefix}{key}={quoted}")
    path = workdir / ".env"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_dotenv(path) == env


# -- whole files: every server converted or skipped, and a valid config ------------------------------

TOML_SCALARS = st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | TEXT
TOML_VALUES = st.recursive(
    TOML_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6
)
URLS = st.sampled_from(["http://127.0.0.1:9/mcp", "https://x.example/sse", "wss://x.example/", "ws://h/", "ftp://x"])
CODEX_SPEC = st.fixed_dictionaries(
    {},
    optional={
        "command": TEXT | TOML_VALUES,
        "args": st.lists(TEXT | SECRETS.map(lambda s: "--api-key=" + s), max_size=3) | TOML_VALUES,
        "env": st.dictionaries(TEXT, TEXT, max_size=3) | TOML_VALUES,
        "env_vars": st.lists(TEXT, max_size=2) | TOML_VALUES,
        "url": URLS | TEXT,
        "bearer_token_env_var": TEXT | TOML_VALUES,
        "http_headers": st.dictionaries(TEXT, TEXT, max_size=2) | TOML_VALUES,
        "env_http_headers": st.dictionaries(TEXT, TEXT, max_size=2) | TOML_VALUES,
        "startup_timeout_sec": TOML_SCALARS,
        "startup_timeout_ms": TOML_SCALARS,
        "tool_timeout_sec": TOML_SCALARS,
        "enabled": TOML_SCALARS,
        "enabled_tools": st.lists(TEXT, max_size=2) | TOML_VALUES,
        "disabled_tools": st.lists(TEXT, max_size=2) | TOML_VALUES,
    },
)
NAMES = TEXT | st.sampled_from(["a", "a.b", "a__b", "docs", "-"])


WHOLE_FILE_ERRORS = ("no server could be imported", "no [mcp_servers.NAME] tables found", "no `mcpServers`")


def _accounted(doc: dict[str, Any], report: Report, total: int) -> None:
    """Every input server is converted, skipped with ``reason (what to do)``, or a project's duplicate."""
    duplicates = sum(1 for _, text in report.notes if text.endswith("is the same server; imported once"))
    assert len(doc["servers"]) + len(report.skipped) + duplicates == total
    assert len(report.converted) == len(doc["servers"])
    for raw, why in report.skipped:
        assert re.fullmatch(r"[^\n]+ \([^\n]+\)", why), (raw, why)


def _whole_file_error(exc: ConfigError) -> None:
    """The only errors left: one line about the whole file, never about one server."""
    assert "\n" not in str(exc) and any(e in str(exc) for e in WHOLE_FILE_ERRORS), str(exc)


def _convert(src: Path) -> tuple[dict[str, Any], Report] | None:
    """``src`` read and converted; None (after checking the error is one line about the whole file)
    when it cannot be."""
    try:
        fmt, data = load(src)
    except ConfigError as exc:  # e.g. Infinity, which JSON allows and TOML cannot hold
        assert "\n" not in str(exc)
        return None
    try:
        return convert(fmt, data, src)
    except ConfigError as exc:
        _whole_file_error(exc)
        return None


@PROPS
@given(servers=st.dictionaries(NAMES, CODEX_SPEC, max_size=4))
def test_codex_files_convert_or_fail_in_one_line(workdir: Path, servers: dict[str, Any]) -> None:
    src = workdir / "config.toml"
    src.write_text(tomli_w.dumps({"model": "o4", "mcp_servers": servers}), encoding="utf-8")
    converted = _convert(src)
    if converted is None:
        return
    doc, report = converted
    parse_config(tomllib.loads(tomli_w.dumps(doc)), workdir / "toolcrib.toml")
    _accounted(doc, report, len(servers))
    assert "--api-key=" not in json.dumps(doc).replace("--api-key=secret:", "")


JSON_SPEC = st.fixed_dictionaries(
    {"command": st.just("x")} | {},
    optional={"args": st.lists(TEXT, max_size=2), "timeout": TOML_SCALARS, "autoApprove": TOML_VALUES},
) | st.fixed_dictionaries(
    {"url": URLS},
    optional={"type": st.sampled_from(["http", "sse", "ws", "streamable-http"]), "headers": st.just({"A": "b"})},
)
PROJECTS = st.dictionaries(
    st.sampled_from(["/h/u/a", "/h/u/b", "/x/a", "/"]), st.dictionaries(NAMES, JSON_SPEC, max_size=3)
)


@PROPS
@given(top=st.dictionaries(NAMES, JSON_SPEC, max_size=3), projects=PROJECTS)
def test_claude_code_files_account_for_every_server(
    workdir: Path, top: dict[str, Any], projects: dict[str, Any]
) -> None:
    src = workdir / ".claude.json"
    src.write_text(
        json.dumps({"mcpServers": top, "projects": {p: {"mcpServers": s} for p, s in projects.items()}}),
        encoding="utf-8",
    )
    total = len(top) + sum(len(s) for s in projects.values())
    converted = _convert(src)
    if converted is None:
        return
    doc, report = converted
    parse_config(doc, workdir / "toolcrib.toml")
    _accounted(doc, report, total)
