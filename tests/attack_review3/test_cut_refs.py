"""Attack review 3: ``toolcrib check`` called a reference followed by a separate word "cut short"
(a problem, exit 1) when that word is a ``key=value`` pair (a libpq connection string
``host=db password=secret:pg/pw user=app``), another reference, or a URL, and advised storing the
secret under a name with the rest glued on (``secret:pg/pw_user_app``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.cli.check import cut_refs

TOOLCRIB = str(Path(sys.executable).with_name("toolcrib"))
_PART = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}", fullmatch=True)
_KEY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@settings(max_examples=1000)
@given(
    ns=_PART,
    name=_PART,
    gap=st.sampled_from([" ", "  ", "\t"]),
    after=st.one_of(
        st.builds(lambda k, v: f"{k}={v}", _KEY, _PART),
        st.builds(lambda n, m: f"secret:{n}/{m}", _PART, _PART),
        st.builds(lambda h: f"https://{h}", _PART),
    ),
)
def test_a_separate_word_after_a_reference_is_not_a_cut(ns: str, name: str, gap: str, after: str) -> None:
    assert cut_refs(f"password=secret:{ns}/{name}{gap}{after}") == []


def test_check_accepts_a_connection_string_with_a_reference(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        '[servers.db]\ncommand = "true"\n'
        '[servers.db.env]\nPG_DSN = "host=db password=secret:db/pw user=app dbname=x"\n',
        encoding="utf-8",
    )
    out = subprocess.run([TOOLCRIB, "--config", str(cfg), "check"], capture_output=True, text=True, timeout=120)
    assert "is not one reference" not in out.stdout + out.stderr, out.stdout + out.stderr
