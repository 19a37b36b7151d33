"""Credentials: resolution order, the secrets file, set/delete, and redaction of every encoding."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
import time
import urllib.parse
from pathlib import Path

import keyring
import pytest

from tests.gateway.conftest import MemoryKeyring
from toolcrib.config import ServerConfig
from toolcrib.errors import SecretError
from toolcrib.gateway.trust.secrets import (
    REDACTED,
    ChainStore,
    FileStore,
    Redactor,
    delete_secret,
    env_var_name,
    expand,
    parse_ref,
    refs_in,
    resolve_server_env,
    resolve_server_headers,
    server_refs,
    set_secret,
)


def write_secrets(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_refs_and_env_names() -> None:
    assert refs_in("Bearer secret:linear/key and secret:gh/tok-en.v2!") == ["linear/key", "gh/tok-en.v2"]
    assert env_var_name("linear/api-key") == "TOOLCRIB_SECRET_LINEAR_API_KEY"
    assert env_var_name("secret:my.ns/k") == "TOOLCRIB_SECRET_MY_NS_K"
    assert parse_ref("secret:a/b") == ("a", "b")
    for bad in ["a", "a/", "/b", "a/b/c", "a b/c"]:
        with pytest.raises(SecretError):
            parse_ref(bad)


def test_resolution_order_env_then_keyring_then_file(memory_keyring: MemoryKeyring, tmp_path: Path) -> None:
    file = write_secrets(tmp_path / "s.toml", '[gh]\ntoken = "from-file"\n[only]\nfile = "file-value"\n')
    environ = {"TOOLCRIB_SECRET_GH_TOKEN": "from-env"}
    memory_keyring.set_password("toolcrib", "gh/token", "from-keyring")
    memory_keyring.set_password("toolcrib", "only/keyring", "kr-value")
    store = ChainStore(file, environ)
    assert store.get("gh/token") == "from-env"
    assert store.source("gh/token") == "env"
    assert ChainStore(file, {}).get("gh/token") == "from-keyring"
    assert ChainStore(file, {}).source("only/file") == "file"
    assert store.get("only/keyring") == "kr-value"
    assert store.get("only/file") == "file-value"
    assert store.get("nope/missing") is None
    memory_keyring.passwords.clear()
    assert ChainStore(file, {}).get("gh/token") == "from-file"


def test_headless_keyring_counts_as_absent(no_keyring: None, tmp_path: Path) -> None:
    store = ChainStore(None, {})
    assert store.get("gh/token") is None
    with pytest.raises(SecretError, match="no OS keyring"):
        set_secret("gh/token", "value")
    file = tmp_path / "secrets.toml"
    assert set_secret("gh/token", "value-1", file) == "file"
    assert os.stat(file).st_mode & 0o777 == 0o600
    assert ChainStore(file, {}).get("gh/token") == "value-1"
    assert delete_secret("gh/token", file) == ["file"]
    assert ChainStore(file, {}).get("gh/token") is None


def test_missing_secret_names_all_three_ways(memory_keyring: MemoryKeyring) -> None:
    with pytest.raises(SecretError) as info:
        ChainStore(None, {}).require("linear/key")
    message = str(info.value)
    assert "\n" not in message
    assert "toolcrib creds set linear key" in message
    assert "TOOLCRIB_SECRET_LINEAR_KEY" in message
    assert "[secrets] file" in message


def test_secrets_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    for mode in (0o644, 0o640, 0o604):
        file = write_secrets(tmp_path / f"s{mode:o}.toml", '[a]\nb = "c"\n', mode)
        with pytest.raises(SecretError, match="chmod 600"):
            FileStore(file).get("a/b")


def test_secrets_file_use_logs_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    file = write_secrets(tmp_path / "s.toml", '[a]\nb = "c"\n')
    with caplog.at_level(logging.WARNING, logger="toolcrib.gateway.trust.secrets"):
        assert FileStore(file).get("a/b") == "c"
    assert "plaintext file" in caplog.text


def test_set_and_delete_in_keyring(memory_keyring: MemoryKeyring) -> None:
    assert set_secret("linear/key", "lin-secret") == "keyring"
    assert memory_keyring.passwords[("toolcrib", "linear/key")] == "lin-secret"
    assert keyring.get_password("toolcrib", "linear/key") == "lin-secret"
    assert delete_secret("linear/key") == ["keyring"]
    assert delete_secret("linear/key") == []


def test_expand_and_per_server_resolution(memory_keyring: MemoryKeyring) -> None:
    memory_keyring.set_password("toolcrib", "a/token", "token-of-a")
    memory_keyring.set_password("toolcrib", "b/token", "token-of-b")
    store = ChainStore(None, {})
    redactor = Redactor()
    a = ServerConfig(command="x", env={"TOKEN": "secret:a/token", "PLAIN": "v"})
    b = ServerConfig(url="https://b.example/mcp", headers={"Authorization": "Bearer secret:b/token"})
    assert resolve_server_env(a, store, redactor) == {"TOKEN": "token-of-a", "PLAIN": "v"}
    assert resolve_server_headers(b, store, redactor) == {"Authorization": "Bearer token-of-b"}
    assert "token-of-b" not in json.dumps(resolve_server_env(a, store))
    assert server_refs(b) == ["b/token"]
    assert redactor.scrub("a=token-of-a b=token-of-b") == f"a={REDACTED} b={REDACTED}"
    assert expand("x secret:a/token y secret:a/token", store) == "x token-of-a y token-of-a"
    with pytest.raises(SecretError, match="c/missing"):
        expand("secret:c/missing", store)


def test_redactor_scrubs_every_encoding_in_nested_json() -> None:
    canary = "CANARY-" + secrets.token_urlsafe(18) + "/+="
    redactor = Redactor([canary])
    raw = canary.encode()
    encodings = [
        canary,
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        urllib.parse.quote(canary, safe=""),
        urllib.parse.quote_plus(canary),
        binascii.hexlify(raw).decode(),
        binascii.hexlify(raw).decode().upper(),
        json.dumps(canary)[1:-1],
    ]
    for prefix in ["", "u:", "us:", "use:"]:
        encodings.append(base64.b64encode(prefix.encode() + raw + b"@host").decode())
    document = {
        "content": [{"type": "text", "text": f"env: {e} end"} for e in encodings],
        "nested": {"deep": [[{"k": encodings[1]}]], encodings[0]: 1},
        "numbers": [1, 2.5, None, True],
    }
    scrubbed = redactor.scrub_json(document)
    dumped = json.dumps(scrubbed)
    for form in encodings:
        assert form not in dumped
    assert "CANARY" not in dumped
    assert scrubbed["numbers"] == [1, 2.5, None, True]
    assert redactor.scrub(json.dumps(document)).count("CANARY") == 0


def test_short_secrets_are_not_registered() -> None:
    redactor = Redactor(["abc", ""])
    assert len(redactor) == 0
    assert redactor.scrub("abc abc") == "abc abc"
    assert redactor.scrub_json({"a": "abc"}) == {"a": "abc"}


def test_overlapping_secrets_are_both_removed_whole() -> None:
    redactor = Redactor(["abcdXYZ1", "XYZ1efgh99"])
    assert redactor.scrub("..abcdXYZ1efgh99..") == f"..{REDACTED}.."


def test_redaction_cost_per_kb() -> None:
    redactor = Redactor(secrets.token_urlsafe(32) for _ in range(50))
    text = ("lorem ipsum dolor sit amet, " * 40)[:1024]
    start = time.perf_counter()
    for _ in range(1000):
        redactor.scrub(text)
    per_kb_us = (time.perf_counter() - start) * 1000
    assert per_kb_us < 200, per_kb_us


def test_scrub_json_fast_path_and_odd_values() -> None:
    redactor = Redactor(["sekret-value-1", 'quote"and\\back'])
    clean = {"a": ["b", {"c": 1}]}
    assert redactor.scrub_json(clean) is clean
    assert redactor.scrub_json({"k": 'x quote"and\\back y'}) == {"k": f"x {REDACTED} y"}
    odd = {"when": object(), "s": "sekret-value-1", "t": ("sekret-value-1",)}
    scrubbed = redactor.scrub_json(odd)
    assert scrubbed["s"] == REDACTED and scrubbed["t"] == [REDACTED] and scrubbed["when"] is odd["when"]
