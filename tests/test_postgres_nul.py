"""U+0000 into PostgreSQL: ``text`` cannot hold it and ``jsonb`` refuses its escape, while JSON from
clients, upstreams and identity providers may carry it. Every pooled connection of
:class:`toolcrib.storage.postgres.Database` stores it as U+FFFD instead (str parameters and
``Json``/``Jsonb`` values), so no store fails on it; a real PostgreSQL cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from toolcrib.storage.postgres import NUL_REPLACEMENT, Database, dumps_jsonb, without_nul

TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=("Cs",)), max_size=20) | (
    st.text(max_size=8).map(lambda t: t + "\x00" + t)
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def db(postgres_cluster: Any) -> Iterator[Database]:
    url = postgres_cluster.create_database("t_nul")
    database = Database(url).open()
    with database.connection() as conn:
        conn.execute("CREATE TABLE t (id serial PRIMARY KEY, s text, j jsonb)")
    yield database
    database.close()
    postgres_cluster.drop_database("t_nul")


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, doc=JSON)
def test_text_and_jsonb_holding_nul_are_stored_and_looked_up_consistently(db: Database, text: str, doc: Any) -> None:
    with db.connection() as conn:
        row = conn.execute("INSERT INTO t (s, j) VALUES (%s, %s) RETURNING id, s, j", (text, Jsonb(doc))).fetchone()
        assert row is not None
        assert row[1] == without_nul(text) and row[2] == without_nul(doc)
        found = conn.execute("SELECT id FROM t WHERE s = %s AND id = %s", (text, row[0])).fetchone()
        assert found is not None, "a lookup by the original text finds what was stored"


@given(doc=JSON)
@settings(max_examples=1000)
def test_dumps_jsonb_changes_only_nul(doc: Any) -> None:
    import json

    text = dumps_jsonb(doc)
    assert "\\u0000" not in text.replace("\\\\", "")  # no NUL escape left for jsonb to refuse
    back = json.loads(text)
    assert back == without_nul(doc)
    if not _has_nul(doc):
        assert back == doc
    assert NUL_REPLACEMENT == "\ufffd"


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
