"""The conformance runner's reading, judging and comparing, on hand-made result directories (no Node)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conformance import baseline
from tests.conformance.report import LegReport
from tests.conformance.results import compare, judge, read_results, scenario_name, telling_line
from tests.conformance.toolchain import parse_requirements_listing

STAMP = "2026-07-28T10-00-00-000Z"


def write(root: Path, dirname: str, checks: object, stderr: str | None = None) -> None:
    d = root / dirname
    d.mkdir(parents=True)
    (d / "checks.json").write_text(checks if isinstance(checks, str) else json.dumps(checks))
    if stderr is not None:
        (d / "stderr.txt").write_text(stderr)


def c(check_id: str, status: str, message: str = "") -> dict[str, str]:
    return {"id": check_id, "status": status, "errorMessage": message}


@pytest.fixture
def direct(tmp_path: Path) -> Path:
    root = tmp_path / "direct"
    write(root, f"server-tools-list-{STAMP}", [c("a", "SUCCESS"), c("wire-schema-valid", "SUCCESS")])
    write(root, f"server-caching-{STAMP}", [c("hint", "WARNING", "no ttl"), c("b", "SUCCESS")])
    write(root, f"server-ping-{STAMP}", [c("p", "FAILURE", "no pong"), c("q", "SUCCESS")])
    write(root, f"server-tasks-status-notifications-{STAMP}", [c("t", "SKIPPED", "harness rewrite")])
    return root


def test_read_results_collapses_ids_most_severe_first_and_ignores_info(tmp_path: Path) -> None:
    write(tmp_path, f"server-x-{STAMP}", [c("a", "SUCCESS"), c("a", "FAILURE", "second try"), c("a", "SUCCESS")])
    write(tmp_path, f"server-y-{STAMP}", [c("i", "INFO"), c("b", "SUCCESS")])
    write(tmp_path, f"server-z-{STAMP}", "{not json")
    results = read_results(tmp_path, prefix="server")
    assert results["x"].failing["a"].message == "second try"
    assert results["y"].status == "PASS" and "i" not in results["y"].checks
    assert results["z"].status == "FAIL" and "checks-json" in results["z"].failing


def test_pass_rule_follows_the_suite(direct: Path) -> None:
    results = read_results(direct, prefix="server")
    assert [results[n].status for n in ("tools-list", "caching", "ping", "tasks-status-notifications")] == [
        "PASS",
        "WARN",
        "FAIL",
        "SKIP",
    ]
    # A warning does not fail the scenario (pass rate) but is a failing check for the baseline.
    assert results["caching"].passed and set(results["caching"].failing) == {"hint"}
    assert results["tasks-status-notifications"].passed


def test_client_results_carry_the_telling_stderr_line(tmp_path: Path) -> None:
    stderr = "starting\nERROR toolcrib.upstream: crashed 5 times\ntoolcrib: SIGTERM: shutting down\n"
    write(tmp_path, f"tools_call-{STAMP}", [c("tool-add-numbers", "FAILURE")], stderr=stderr)
    write(tmp_path, f"auth/basic-cimd-{STAMP}", [c("k", "SUCCESS")], stderr="fine\n")
    results = read_results(tmp_path)
    assert results["tools_call"].note == "ERROR toolcrib.upstream: crashed 5 times"
    assert results["auth/basic-cimd"].note == ""  # notes only for failing scenarios


def test_judge_like_the_suites_expected_failures(direct: Path) -> None:
    results = read_results(direct, prefix="server")
    scored = ["tools-list", "caching", "ping"]
    verdict = judge(results, scored, [])
    assert {(s, i) for s, i, _ in verdict.unexpected} == {("caching", "hint"), ("ping", "p")}
    verdict = judge(results, scored, [("caching", "hint"), ("ping", None)])
    assert verdict.ok and sorted(verdict.expected) == ["caching:hint", "ping"]
    # Stale: a wholesale entry that passes, a check entry whose check succeeds, an unknown scenario.
    verdict = judge(results, scored, [("tools-list", None), ("ping", "q"), ("gone", None), ("caching", "hint")])
    assert verdict.stale == ["tools-list", "ping:q", "gone"]
    assert [(s, i) for s, i, _ in verdict.unexpected] == [("ping", "p")]
    # An excused check that never ran (the scenario bailed earlier) is tolerated.
    assert judge(results, scored, [("ping", "p"), ("ping", "never-reached"), ("caching", "hint")]).ok


def test_compare_is_check_by_check(direct: Path, tmp_path: Path) -> None:
    gateway = tmp_path / "gateway"
    write(gateway, f"server-tools-list-{STAMP}", [c("a", "FAILURE", "lost"), c("wire-schema-valid", "SUCCESS")])
    write(gateway, f"server-caching-{STAMP}", [c("hint", "WARNING", "no ttl"), c("b", "SUCCESS")])
    write(gateway, f"server-ping-{STAMP}", [c("p", "SUCCESS"), c("q", "SUCCESS")])
    d, g = read_results(direct, prefix="server"), read_results(gateway, prefix="server")
    diffs = {x.scenario: x for x in compare(d, g)}
    assert diffs["tools-list"].worse == [("a", "SUCCESS", "FAILURE", "lost")] and not diffs["tools-list"].better
    assert diffs["ping"].better and not diffs["ping"].worse  # toolcrib passes what the fixture fails
    assert "caching" not in diffs  # the same warning both ways is no difference
    # A scenario with no result through toolcrib is worse.
    assert diffs["tasks-status-notifications"].worse[0][0] == "no-results"


def test_a_same_status_scenario_can_still_differ_by_check(tmp_path: Path) -> None:
    write(tmp_path / "d", f"server-s-{STAMP}", [c("x", "FAILURE"), c("y", "SUCCESS")])
    write(tmp_path / "g", f"server-s-{STAMP}", [c("x", "FAILURE"), c("y", "WARNING", "slow")])
    (diff,) = compare(read_results(tmp_path / "d", "server"), read_results(tmp_path / "g", "server"))
    assert diff.worse == [("y", "SUCCESS", "WARNING", "slow")]


def test_leg_report_counts_only_scored_in_the_pass_rate(direct: Path, tmp_path: Path) -> None:
    gateway = tmp_path / "gateway"
    write(gateway, f"server-tools-list-{STAMP}", [c("a", "SUCCESS")])
    write(gateway, f"server-caching-{STAMP}", [c("hint", "WARNING", "no ttl"), c("b", "SUCCESS")])
    write(gateway, f"server-ping-{STAMP}", [c("p", "FAILURE", "no pong"), c("q", "SUCCESS")])
    write(gateway, f"server-tasks-status-notifications-{STAMP}", [c("t", "FAILURE", "boom")])
    targets = {"direct": read_results(direct, "server"), "toolcrib/modern": read_results(gateway, "server")}
    report = LegReport(
        "2026-07-28",
        "server",
        ["tools-list", "caching", "ping"],
        {"tasks-status-notifications": "extension"},
        targets,
        [("caching", "hint"), ("ping", None)],
    )
    assert report.counts("direct") == (2, 3, 1, 1)
    assert report.counts("toolcrib/modern") == (2, 3, 0, 1)
    assert report.verdict.ok and not report.ok  # a not-scored scenario worse through toolcrib fails the run
    text = "\n".join(report.lines())
    assert "WORSE  toolcrib/modern: tasks-status-notifications (not scored: extension)" in text
    assert json.loads(json.dumps(report.to_json()))["targets"]["direct"]["scored"] == {"passed": 2, "total": 3}


def test_skipped_through_toolcrib_is_worse(tmp_path: Path) -> None:
    """A check that passes directly but is skipped (or absent) through toolcrib is a feature not relayed."""
    write(tmp_path / "d", f"server-s-{STAMP}", [c("ack", "SUCCESS"), c("y", "SUCCESS"), c("z", "SKIPPED")])
    write(tmp_path / "d", f"server-j-{STAMP}", [c("sse", "SUCCESS")])
    write(tmp_path / "g", f"server-s-{STAMP}", [c("ack", "SKIPPED"), c("z", "SKIPPED")])
    write(tmp_path / "g", f"server-j-{STAMP}", [c("sse", "INFO", "JSON responses (SSE optional)")])
    (diff,) = compare(read_results(tmp_path / "d", "server"), read_results(tmp_path / "g", "server"))
    assert [(w[0], w[1], w[2]) for w in diff.worse] == [("ack", "SUCCESS", "SKIPPED"), ("y", "SUCCESS", None)]
    assert diff.scenario == "s"  # j: toolcrib took the optional path and said so (INFO): no difference


def test_translation_limits_excuse_only_their_checks_and_go_stale(tmp_path: Path) -> None:
    write(tmp_path / "d", f"server-s-{STAMP}", [c("x", "SUCCESS"), c("y", "SUCCESS")])
    write(tmp_path / "d", f"server-t-{STAMP}", [c("u", "SUCCESS")])
    write(tmp_path / "g", f"server-s-{STAMP}", [c("x", "FAILURE", "no key"), c("y", "SUCCESS")])
    write(tmp_path / "g", f"server-t-{STAMP}", [c("u", "SUCCESS")])
    targets = {
        "direct": read_results(tmp_path / "d", "server"),
        "toolcrib/legacy": read_results(tmp_path / "g", "server"),
    }

    def report(allowed: list[tuple[str, str | None]]) -> LegReport:
        return LegReport("2026-07-28", "server", ["s", "t"], {}, targets, [], allowed={"toolcrib/legacy": allowed})

    assert report([("s", "x")]).ok
    assert report([("s", None)]).ok
    assert not report([("s", "y")]).ok  # excuses another check: x is still worse, and y is stale
    stale = report([("s", "x"), ("t", None)])
    assert not stale.ok and stale.stale_allowed() == ["toolcrib/legacy: t"]
    assert "within the baseline's translation limits" in "\n".join(report([("s", "x")]).lines())


LISTING = """Required for 2026-07-28 (69 scenarios, frozen; run at the 2026-07-28 wire):

Server scenarios (test against a server):
  - server-stateless
  - tools-list

Client scenarios (test against a client):
  - tools_call
  - auth/metadata-default

Run and reported, but never scored:
  extension (2):
    - auth/dpop [client]
    - tasks-lifecycle [server]
  added-after-release (1):
    - json-schema-2020-12-preservation [client]
  pending (1):
    - http-header-validation [server]

"""


def test_requirement_listing() -> None:
    reqs = parse_requirements_listing("2026-07-28", LISTING)
    assert reqs.scored == {
        "server": ["server-stateless", "tools-list"],
        "client": ["tools_call", "auth/metadata-default"],
    }
    assert reqs.not_scored["server"] == {"tasks-lifecycle": "extension", "http-header-validation": "pending"}
    assert reqs.not_scored["client"] == {
        "auth/dpop": "extension",
        "json-schema-2020-12-preservation": "added-after-release",
    }
    assert reqs.scenarios("server")[-1] == "http-header-validation"
    with pytest.raises(ValueError, match="no scenarios"):
        parse_requirements_listing("2026-07-28", "error: unknown revision\n")


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("server:\n  - tools-list\n", "no reason"),
        ("server:\n  - tools-list: check  # r\n", "without a space"),
        ("server:\n  - a  # r\n  - a  # again\n", "listed twice"),
        ("server:\n  - a  # r\n  - a:b  # r\n", "both wholesale and per check"),
        ("servers:\n  - a  # r\n", "unknown key"),
        ("  - a  # r\n", "expected `server:`"),
    ],
)
def test_baseline_refuses_with_the_fix(text: str, fix: str) -> None:
    with pytest.raises(baseline.BaselineError, match=fix):
        baseline.parse(text, "b.yaml")


def test_the_committed_baselines_parse() -> None:
    for path in sorted(baseline.BASELINE_DIR.glob("*.yaml")):
        assert set(baseline.parse(path.read_text(), str(path))) == {"server", "client"}


_LOWER = "abcdefghijklmnopqrstuvwxyz"
_VISIBLE = "".join(chr(c) for c in range(33, 127))
_names = st.builds(
    lambda head, body, sub: head + body + (f"/{sub}" if sub else ""),
    st.sampled_from(_LOWER),
    st.text(_LOWER + "0123456789_-", max_size=20),
    st.none() | st.text(_LOWER + "0123456789-", min_size=1, max_size=8),
)
_checks = st.none() | st.builds(str.__add__, st.sampled_from(_LOWER), st.text(_LOWER + "0123456789-", max_size=20))
_reasons = st.sampled_from(_VISIBLE) | st.builds(
    lambda a, mid, b: a + mid + b,
    st.sampled_from(_VISIBLE),
    st.text(_VISIBLE + " ", max_size=38),
    st.sampled_from(_VISIBLE),
)
_entries = st.lists(st.builds(baseline.Entry, _names, _checks, _reasons), max_size=8).map(
    lambda es: list({e.scenario: e for e in es}.values())  # one form per scenario
)


@settings(max_examples=1000)
@given(server=_entries, client=_entries)
def test_baseline_round_trips(server: list[baseline.Entry], client: list[baseline.Entry]) -> None:
    entries = {"server": server, "client": client}
    assert baseline.parse(baseline.render(entries, "header\nsecond line")) == entries


@settings(max_examples=1000)
@given(name=_names, prefix=st.sampled_from(["", "server"]))
def test_scenario_name_strips_prefix_and_timestamp(name: str, prefix: str) -> None:
    dirname = f"{prefix}-{name}-{STAMP}" if prefix else f"{name}-{STAMP}"
    assert scenario_name(dirname, prefix) == name


@settings(max_examples=1000)
@given(st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30), max_size=6))
def test_telling_line_is_one_of_the_lines(lines: list[str]) -> None:
    picked = telling_line("\n".join(lines))
    assert picked == "" or picked in [ln.strip() for ln in lines]


def test_a_missing_or_broken_harness_is_one_clear_line(tmp_path: Path) -> None:
    from tests.conformance.run import harness_problem

    assert "does not exist yet" in (harness_problem(tmp_path) or "")
    package = tmp_path / "tests" / "conformance"
    package.mkdir(parents=True)
    for d in (tmp_path / "tests", package):
        (d / "__init__.py").write_text("")
    (package / "client.py").write_text("raise RuntimeError('half written')\n")
    assert (harness_problem(tmp_path) or "").endswith("does not import: RuntimeError: half written")


def test_output_dir_of_an_earlier_run_is_reused_any_other_refused(tmp_path: Path) -> None:
    from tests.conformance.run import prepare_output

    prepare_output(tmp_path / "out")
    (tmp_path / "out" / "left-over").write_text("x")  # e.g. an interrupted run
    prepare_output(tmp_path / "out")
    assert not (tmp_path / "out" / "left-over").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit, match="not empty"):
        prepare_output(tmp_path / "mine")
