"""The client-config importer (``toolcrib import``): any JSON file becomes a valid config or a ConfigError.

Properties: ``import_client_config`` raises nothing but :class:`ConfigError`, and that only for the whole
file (no servers, none importable), never for one server; on success the TOML it wrote loads, validates
as a toolcrib config, accounts for every server of the input (converted, renamed if needed and none lost
to a clash, or listed in its header as ``# skipped NAME: reason (what to do)``) and holds no literal
secret it reported as moved.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.engine import Target
from tests.fuzz.strategies import json_values
from toolcrib.client_import import import_client_config
from toolcrib.config import parse_config
from toolcrib.errors import ConfigError

tokens = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=20, max_size=40)
SECRET_KEYS = ["API_KEY", "GITHUB_TOKEN", "password", "Authorization", "X-Api-Key"]
secret_keys = st.sampled_from([*SECRET_KEYS, "HOME", "PATH"])
values = st.text(max_size=20) | tokens | tokens.map(lambda t: "Bearer " + t) | st.just("secret:a/b") | json_values
names = st.text(max_size=20) | st.sampled_from(["a", "a!", "a__b", "a_b", "-a", "_", "a" * 60, "time", "time!", ""])
spec = st.fixed_dictionaries(
    {},
    optional={
        "command": st.text(max_size=10) | json_values,
        "args": st.lists(st.text(max_size=10)) | json_values,
        "cwd": st.text(max_size=10) | json_values,
        "env": st.dictionaries(secret_keys | st.text(max_size=8), values, max_size=4) | json_values,
        "url": st.sampled_from(["http://127.0.0.1:9/mcp", "https://x.example/sse"])
        | st.text(max_size=10)
        | json_values,
        "serverUrl": st.text(max_size=10),
        "type": st.sampled_from(["stdio", "sse", "http", "streamable-http"]) | json_values,
        "headers": st.dictionaries(secret_keys | st.text(max_size=8), values, max_size=4) | json_values,
        "disabled": st.booleans() | json_values,
    },
)
servers = st.dictionaries(names, spec | json_values, max_size=5)
documents = st.one_of(
    servers.map(lambda s: {"mcpServers": s}),
    servers.map(lambda s: {"servers": s}),
    servers.map(lambda s: {"mcp": {"servers": s}}),
    st.dictionaries(st.sampled_from(["mcpServers", "servers", "mcp", "x"]), json_values, max_size=3),
    json_values,
)


def check(document: Any) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="toolcrib-fuzz-"))
    try:
        source, out = tmp / "client.json", tmp / "toolcrib.toml"
        source.write_text(json.dumps(document), encoding="utf-8")
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                import_client_config(source, out, force=True)
        except ConfigError as exc:
            assert "\n" not in str(exc) and any(e in str(exc) for e in WHOLE_FILE_ERRORS), str(exc)
            return
        text = out.read_text(encoding="utf-8")
        parse_config(tomllib.loads(text), out)
        raw = document.get("mcpServers", document.get("servers"))
        if raw is None:
            raw = document["mcp"]["servers"]
        account(raw, text)
        assert err.getvalue().startswith("wrote "), err.getvalue()[:200]
        for spec_ in raw.values():  # converted or skipped, a literal secret is never written
            for field in ("env", "headers") if isinstance(spec_, dict) else ():
                table = spec_.get(field)
                table = table if isinstance(table, dict) else {}
                public = {str(v) for k, v in table.items() if k not in SECRET_KEYS}  # the same text, not secret
                for key, value in table.items():
                    literal = value.removeprefix("Bearer ") if isinstance(value, str) else ""
                    if (
                        key in SECRET_KEYS
                        and len(literal) >= 12
                        and not literal.startswith(("secret:", "${"))
                        and not any(literal in v for v in public)
                    ):
                        assert literal not in text, f"literal secret of {key} left in the TOML"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SKIP_LINE = re.compile(r"# skipped .+: [^\n]+ \([^\n]+\)")
WHOLE_FILE_ERRORS = (  # what is wrong with the file as a whole; a bad server is skipped instead
    *("no server could be imported", "no `mcpServers`", "expected a JSON object"),
    *("not valid JSON", "nested too deeply", "TOML cannot store"),
)


def account(raw: dict[Any, Any], text: str) -> None:
    """Every server in ``raw`` is a ``[servers.X]`` table of ``text`` or a ``# skipped`` header line with a reason."""
    doc = tomllib.loads(text)
    header = text.split("\n\n", 1)[0].splitlines()
    converted = [line for line in header if line.startswith("# converted ")]
    skipped = [line for line in header if line.startswith("# skipped ")]
    renamed = "\n".join(line for line in header if line.startswith("# renamed "))
    assert len(doc["servers"]) == len(converted), f"{len(converted)} reported converted, {len(doc['servers'])} written"
    assert len(converted) + len(skipped) == len(raw), f"servers lost: {sorted(raw)} -> {sorted(doc['servers'])}"
    for line in skipped:
        assert SKIP_LINE.fullmatch(line), f"a skip without `reason (what to do)`: {line}"
    for name in raw:
        listed = f"# skipped {name!r}: " in "\n".join(skipped) or f"# renamed {name!r} -> " in renamed
        assert name in doc["servers"] or listed, f"server {name!r} neither converted nor listed"


TARGET = Target("importer", documents, check)
