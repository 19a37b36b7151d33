"""CLI findings of a new user (notes/h_newuser2.md items 3-5), through the real ``toolcrib`` process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.cli.check import advised_reference, cut_refs, unexpanded_vars

TOOLCRIB = str(Path(sys.executable).with_name("toolcrib"))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _run(cfg: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOOLCRIB, "--config", str(cfg), *args], input=stdin, capture_output=True, text=True, timeout=120
    )


# 3: a key that does nothing says so


@pytest.mark.parametrize("auth", ["none", "oauth"])
def test_keys_add_warns_when_auth_does_not_check_keys(tmp_path: Path, auth: str) -> None:
    extra = (
        '\n[auth]\nissuer = "https://id.example.com"\naudience = "https://gw.example.com/mcp"\n'
        if auth == "oauth"
        else ""
    )
    cfg = _write(tmp_path / "t.toml", f'[gateway]\nauth = "{auth}"\n{extra}')
    out = _run(cfg, "keys", "add", "ci")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("tcb_")  # stored and printed as before
    (warning,) = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert f'[gateway] auth = "{auth}"' in warning
    assert 'only with auth = "keys" or "keys+oauth"' in warning


@pytest.mark.parametrize("auth", ["keys", "keys+oauth"])
def test_keys_add_is_quiet_when_keys_are_checked(tmp_path: Path, auth: str) -> None:
    extra = (
        '\n[auth]\nissuer = "https://id.example.com"\naudience = "https://gw.example.com/mcp"\n'
        if "oauth" in auth
        else ""
    )
    cfg = _write(tmp_path / "t.toml", f'[gateway]\nauth = "{auth}"\n{extra}')
    out = _run(cfg, "keys", "add", "ci", "--json")
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr


# 4: check: ${VAR}, a reference cut at a space, the advised form of "Bearer sk-..."


def test_check_reports_vars_cut_references_and_keeps_the_bearer_prefix(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path / "t.toml",
        f'[servers.c]\ncommand = "{sys.executable}"\n'
        'env = { API = "secret:c/api key", GH = "${GH}" }\n'
        'args = ["--token", "secret:c/tok verbose", "--ok", "secret:c/fine,x", "${UNSET_VAR:-x}"]\n'
        '[servers.w]\nurl = "https://e.example/mcp?q=${Q}"\n'
        'headers = { Authorization = "Bearer sk-abcdefghijklmnopqrstuvwxyz" }\n',
    )
    out = _run(cfg, "check", stdin="")
    assert out.returncode == 1
    err = out.stderr
    assert "PROBLEM c: env.API: 'secret:c/api key' is not one reference but 'secret:c/api' and the text after it" in err
    assert "store the secret as secret:c/api_key" in err
    assert "PROBLEM c: args[1]: 'secret:c/tok verbose' is not one reference" in err
    assert "secret:c/api: NOT SET" not in err and "secret:c/tok: NOT SET" not in err  # not what was meant
    assert "PROBLEM c: secret:c/fine: NOT SET" in err  # a reference followed by "," is whole
    assert "warning c: env.GH: ${GH} is not expanded (the server gets it as written)" in err
    assert 'inherit_env = ["GH"]' in err
    assert "warning c: args[4]: ${UNSET_VAR:-x} is not expanded" in err
    assert "warning w: url: ${Q} is not expanded" in err
    assert (
        "warning w: headers.Authorization looks like a literal secret; store it (only what follows 'Bearer') "
        'with `toolcrib creds set w authorization` and write Authorization = "Bearer secret:w/authorization"'
    ) in err
    assert "sk-abc" not in out.stdout + err
    assert out.stdout.splitlines()[-1] == f"{cfg}: 3 problems, 4 warnings: fix the problems above (exit 1)"


_PART = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}", fullmatch=True)
_WORD = st.from_regex(r"[A-Za-z0-9_]{1,6}|[éßжλ][a-z]{0,3}", fullmatch=True)


@settings(max_examples=1000)
@given(
    prefix=st.sampled_from(["", "Bearer ", "--key=", "https://u:", "x "]),
    ns=_PART,
    name=_PART,
    suffix=st.sampled_from(["", " ", ",", "@host/db", "'", "/more", ":", "&a=b", " --flag", "  ", ")", "#x"]),
)
def test_a_whole_reference_is_never_cut(prefix: str, ns: str, name: str, suffix: str) -> None:
    assert cut_refs(f"{prefix}secret:{ns}/{name}{suffix}") == []


@settings(max_examples=1000)
@given(
    prefix=st.sampled_from(["", "Bearer ", "--key="]),
    ns=_PART,
    name=_PART,
    space=st.sampled_from(["", " ", "  "]),
    word=_WORD,
)
def test_a_name_that_goes_on_is_cut(prefix: str, ns: str, name: str, space: str, word: str) -> None:
    if not space and word[0].isascii():
        space = " "  # an ASCII name character would simply belong to the name
    ref = f"secret:{ns}/{name}"
    assert cut_refs(f"{prefix}{ref}{space}{word}") == [(ref, f"{ref}{space}{word}")]


@settings(max_examples=1000)
@given(before=st.text(max_size=15), var=st.text(max_size=10), after=st.text(max_size=15))
def test_every_dollar_brace_is_found(before: str, var: str, after: str) -> None:
    before, var, after = before.replace("${", ""), var.replace("}", ""), after.replace("${", "")
    found = unexpanded_vars(f"{before}${{{var}}}{after}")
    assert f"${{{var}}}" in found
    assert unexpanded_vars((before + var + after).replace("$", "")) == []


@settings(max_examples=1000)
@given(
    scheme=st.sampled_from(["Bearer", "bearer", "Basic", "Token"]), gap=st.sampled_from([" ", "  ", "\t"]), token=_PART
)
def test_the_advised_reference_keeps_the_scheme(scheme: str, gap: str, token: str) -> None:
    stored, written, kept = advised_reference("w", "Authorization", f"{scheme}{gap}sk-{token}")
    assert (stored, written, kept) == ("authorization", f"{scheme}{gap}secret:w/authorization", scheme)
    assert advised_reference("w", "X-Api", f"sk-{token}") == ("x-api", "secret:w/x-api", "")


# 5: every usage error exits 2 with one line; counts agree with their nouns

USAGE_ERRORS = [
    (["audit", "query", "--since", "yesterday"], "argument --since: cannot read time 'yesterday'"),
    (["audit", "query", "--limit", "0"], "argument --limit: must be from 1 to 1,000,000, not 0"),
    (["audit", "tail", "-n", "-3"], "argument -n: must be from 1 to 1,000,000, not -3"),
    (["audit", "tail", "-n", "9" * 23], "argument -n: must be from 1 to 1,000,000, not a 23-digit number"),
    (["audit", "prune", "--before", "nope"], "argument --before: cannot read time 'nope'"),
    (["savings", "--days", "0"], "argument --days: must be from 1 to 36,500, not 0"),
    (["savings", "--days", "1000000000"], "argument --days: must be from 1 to 36,500, not 1000000000"),
    (["savings", "--days", "x"], "argument --days: 'x' is not a whole number"),
    (["serve", "--port", "x"], "argument --port: invalid int value: 'x'"),
    (["audit"], "the following arguments are required: ACTION"),
    (["nosuchverb"], "argument VERB: invalid choice: 'nosuchverb'"),
    (["creds", "delete", "gh", "token"], "rerun with --yes"),  # no terminal to ask on
]


@pytest.mark.parametrize(("argv", "message"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, argv: list[str], message: str) -> None:
    cfg = _write(tmp_path / "t.toml", "[gateway]\n")  # no audit log, no savings yet: argv is checked first
    out = _run(cfg, *argv)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("toolcrib: ") and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr and "usage:" not in out.stderr


def test_check_summary_counts_in_the_singular(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "t.toml", '[gateway]\nport = "8765"\n[servers.m]\ncommand = "no-such-toolcrib-binary"\n')
    out = _run(cfg, "check")
    assert out.returncode == 1
    assert out.stdout.splitlines()[0].startswith(f"{cfg}: 1 enabled server, ")
    assert out.stdout.splitlines()[-1] == f"{cfg}: 1 problem, 1 warning: fix the problem above (exit 1)"


# 8: `index usage` says why it is empty, and a reset of a tool without anchors is a usage error


def test_index_usage_show_explains_an_empty_store_and_reset_refuses_an_unknown_tool(tmp_path: Path) -> None:
    import time

    from toolcrib.index.usage import usage_store

    cfg = _write(tmp_path / "t.toml", '[index]\npath = "idx"\nusage_interval = 120\n')
    shown = _run(cfg, "index", "usage", "show")
    assert shown.returncode == 0, shown.stderr
    assert "no anchors yet: the gateway mines its audit log every 120 s" in shown.stdout
    store = usage_store(tmp_path / "idx", None)
    store.update(lambda state: state.add_use("time__now", "what time is it", time.time()))
    typo = _run(cfg, "index", "usage", "reset", "time__nwo")
    assert typo.returncode == 2 and typo.stdout == ""
    assert typo.stderr.strip().splitlines() == [
        "toolcrib: no usage anchors for tool 'time__nwo'; `toolcrib index usage show` lists the tools that have some"
    ]
    assert store.load().count() == 1  # nothing lost
    shown = _run(cfg, "index", "usage", "show")
    assert "time__now" in shown.stdout and "no anchors yet" not in shown.stdout
    reset = _run(cfg, "index", "usage", "reset", "time__now")
    assert reset.returncode == 0 and "1 dropped" in reset.stdout
    assert store.load().count() == 0


# 4: tables on a narrow terminal print one record per row instead of cutting names into pieces


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_tables_never_cut_a_value_on_a_narrow_terminal(tmp_path: Path, columns: int) -> None:
    import os

    cfg = _write(tmp_path / "t.toml", '[gateway]\nauth = "keys"\n')
    name = "ci-runner-for-the-nightly-integration-suite-of-project-x"
    assert _run(cfg, "keys", "add", name).returncode == 0
    env = {**os.environ, "COLUMNS": str(columns)}
    out = subprocess.run(
        [TOOLCRIB, "--config", str(cfg), "keys", "list"], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    assert name in out.stdout  # whole, on one line, at any width
    assert all(len(line) <= columns for line in out.stdout.splitlines() if name not in line)
    if len(name) + 20 > columns:
        assert "one record per row" in out.stdout


# 3: two configs in one folder share .toolcrib/ unless told otherwise: check (and serve) say so


def test_check_warns_when_a_sibling_config_shares_the_state_folder(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.toml", '[gateway]\nauth = "none"\n')
    b = _write(tmp_path / "b.toml", '[gateway]\nauth = "none"\n[audit]\npath = "b-state/audit.db"\n')
    _write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')  # not a toolcrib config: skipped
    _write(tmp_path / "broken.toml", "this is not toml = = =\n")  # unreadable: skipped
    out = _run(a, "check")
    (warning,) = [line for line in out.stderr.splitlines() if "same state" in line]
    assert "b.toml in the same folder uses the same state ([index] path," in warning
    assert "[audit] path" not in warning  # b moved its audit log away
    assert "move one of them into a folder of its own" in warning
    alone = _write(tmp_path / "own" / "c.toml", '[gateway]\nauth = "none"\n')
    assert "same state" not in _run(alone, "check").stderr
    separate = _write(
        tmp_path / "d.toml",
        "\n".join(
            f'[{sec}]\n{key} = "d/{sec}-{key}"'
            for sec, key in (("index", "path"), ("audit", "path"), ("auth", "keys_path"))
        )
        + '\n[policy]\napprovals_path = "d/ap.db"\npins_path = "d/pins.json"\n',
    )
    warned = [line for line in _run(separate, "check").stderr.splitlines() if "same state" in line]
    assert all("d.toml" not in line for line in warned)
    assert not any("[index] path" in line for line in warned)  # d's own state is its own
    assert b.is_file()
