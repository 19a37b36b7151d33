"""The stdio child environment: what is inherited, and never toolcrib's own secrets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.router.stdio_env import INHERITED, check_inherit_pattern, child_environment

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
PATTERNS = st.builds(lambda n, star: n + ("*" if star else ""), NAMES, st.booleans())


def _accepted(pattern: str) -> bool:
    try:
        check_inherit_pattern(pattern)
    except ValueError:
        return False
    return True


@settings(max_examples=1000)
@given(
    environ=st.dictionaries(st.one_of(NAMES, NAMES.map(lambda n: "TOOLCRIB_" + n)), st.text(max_size=5), max_size=12),
    patterns=st.lists(PATTERNS, max_size=4),
)
def test_child_environment_is_exactly_the_allowed_set(environ: dict[str, str], patterns: list[str]) -> None:
    allowed = [p for p in patterns if _accepted(p)]
    env = child_environment(allowed, environ)
    for name, value in environ.items():
        expected = (
            not name.upper().startswith("TOOLCRIB_")
            and not value.startswith("()")
            and (
                name in INHERITED
                or name.startswith("LC_")
                or any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in allowed)
            )
        )
        assert (name in env) == expected, (name, allowed)
        if expected:
            assert env[name] == value


@settings(max_examples=1000)
@given(pattern=PATTERNS)
def test_an_accepted_pattern_never_matches_a_toolcrib_variable(pattern: str) -> None:
    if _accepted(pattern):
        assert not child_environment([pattern], {"TOOLCRIB_SECRET_X": "s", "TOOLCRIB_API_KEY": "k"})


@pytest.mark.parametrize("pattern", ["TOOLCRIB_SECRET_A", "T*", "TOOLCRIB*", "tool*", "*", "", "A-B", "A**"])
def test_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="inherit_env entry"):
        check_inherit_pattern(pattern)
