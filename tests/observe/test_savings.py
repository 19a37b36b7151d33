"""The token-savings ledger on both stores (SQLite file, PostgreSQL): records summed per UTC day and
principal, unflushed counts in every query, day rollover by the clock passed in, nothing lost on
close, two ledgers (= replicas) adding into the same PostgreSQL rows, the CLI, and a property test
of the aggregation."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.cli import main
from toolcrib.errors import StorageError
from toolcrib.gateway.trust.identity import Principal
from toolcrib.observe.savings import (
    Counts,
    PgSavingsStore,
    SavingsLedger,
    SavingsMeter,
    SavingsStore,
    SqliteSavingsStore,
    tool_json,
    utc_day,
)
from toolcrib.router.catalog import Catalog, Entry
from toolcrib.router.dispatcher import DISPATCHER_TOOLS
from toolcrib.storage import migrations
from toolcrib.storage.postgres import Database
from toolcrib.tokens import count_tokens

ALICE = Principal("key", "alice")
OAUTH_ALICE = Principal("oauth", "alice")  # same subject, another kind: another row
BOB = Principal("key", "bob", frozenset({"admins"}))
DAY0 = dt.datetime(2026, 3, 1, 23, 59, 0, tzinfo=dt.UTC).timestamp()

StoreFactory = Callable[[], SavingsStore]


class Clock:
    """A clock the test moves (Unix seconds)."""

    def __init__(self, now: float = DAY0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "pg"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """``open_store()``: a new store over the test's one database (another process / replica)."""
    dbs: list[Database] = []
    if request.param == "sqlite":

        def make() -> SavingsStore:
            return SqliteSavingsStore(tmp_path / "savings.db")

    else:
        url = request.getfixturevalue("pg_url")
        db = Database(url).open()
        try:
            migrations.upgrade(db)
        finally:
            db.close()

        def make() -> SavingsStore:
            dbs.append(Database(url, pool_size=2).open())
            return PgSavingsStore(dbs[-1])

    yield make
    for db in dbs:
        db.close()


def test_records_sum_per_day_and_principal(open_store: StoreFactory) -> None:
    clock = Clock()
    ledger = SavingsLedger(open_store(), clock=clock, flush_every=None)
    ledger.record(ALICE, full=1000, loaded=100, lists=1)
    ledger.record(ALICE, full=1000, loaded=150, lists=1)
    ledger.record(ALICE, full=0, loaded=40)  # a search result's text
    ledger.record(OAUTH_ALICE, full=500, loaded=500, lists=1)  # passthrough: saved 0, recorded anyway
    day = utc_day(DAY0)

    def check() -> None:
        [row] = ledger.days(day, day)
        assert (row.day, row.full, row.loaded, row.saved, row.lists) == (day, 2500, 790, 1710, 3)
        by = {r.id: (r.full, r.loaded, r.saved, r.lists) for r in ledger.by_principal(day, day)}
        assert by == {"key:alice": (2000, 290, 1710, 2), "oauth:alice": (500, 500, 0, 1)}
        assert ledger.saved_today() == 1710

    check()  # before any flush: from memory
    assert ledger.flush() == 2
    check()  # from the store, not counted twice
    assert ledger.flush() == 0
    ledger.close()
    reader = SavingsLedger(open_store(), clock=clock, flush_every=None)
    check_rows = reader.by_principal(day, day)
    assert {r.id for r in check_rows} == {"key:alice", "oauth:alice"}
    assert reader.saved_today() == 1710
    reader.close()


def test_day_rollover_by_the_clock(open_store: StoreFactory) -> None:
    clock = Clock()  # 23:59 UTC on 2026-03-01
    ledger = SavingsLedger(open_store(), clock=clock, flush_every=None)
    ledger.record(BOB, full=300, loaded=30, lists=1)
    ledger.flush()
    clock.now += 120  # 00:01 the next day
    ledger.record(BOB, full=300, loaded=60, lists=1)
    first, second = utc_day(DAY0), utc_day(DAY0) + dt.timedelta(days=1)
    rows = ledger.days(first, second)
    assert [(r.day, r.saved, r.lists) for r in rows] == [(first, 270, 1), (second, 240, 1)]
    assert ledger.saved_today() == 240
    assert [r.saved for r in ledger.days(first, first)] == [270]
    assert [(r.id, r.saved) for r in ledger.by_principal(first, second)] == [("key:bob", 510)]
    assert ledger.days(second + dt.timedelta(days=1), second + dt.timedelta(days=9)) == []
    ledger.close()


def test_close_flushes_and_loses_nothing(open_store: StoreFactory) -> None:
    """Four threads record while the background thread flushes every 10 ms; close writes the rest."""
    clock = Clock()
    ledger = SavingsLedger(open_store(), clock=clock, flush_every=0.01)
    principals = [Principal("key", f"p{i}") for i in range(4)]

    def work(p: Principal) -> None:
        for _ in range(500):
            ledger.record(p, full=7, loaded=3, lists=1)

    threads = [threading.Thread(target=work, args=(p,)) for p in principals]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.close()
    reader = SavingsLedger(open_store(), clock=clock, flush_every=None)
    day = utc_day(DAY0)
    [row] = reader.days(day, day)
    assert (row.full, row.loaded, row.saved, row.lists) == (4 * 500 * 7, 4 * 500 * 3, 4 * 500 * 4, 2000)
    assert sorted((r.id, r.lists) for r in reader.by_principal(day, day)) == [(p.id, 500) for p in principals]
    reader.close()


def test_on_record_gets_each_record_and_cannot_break_recording(open_store: StoreFactory) -> None:
    seen: list[tuple[int, int]] = []

    def on_record(full: int, loaded: int) -> None:
        seen.append((full, loaded))
        if full == 0:
            raise ValueError("a broken callback")

    ledger = SavingsLedger(open_store(), clock=Clock(), on_record=on_record, flush_every=None)
    ledger.record(ALICE, full=100, loaded=10, lists=1)
    ledger.record(ALICE, full=0, loaded=25)  # raises inside the callback: logged, not raised
    assert seen == [(100, 10), (0, 25)]
    assert ledger.saved_today() == 65
    ledger.close()


def test_a_failed_flush_keeps_the_rows(tmp_path: Path) -> None:
    ledger = SavingsLedger(SqliteSavingsStore(tmp_path / "savings.db"), clock=Clock(), flush_every=None)
    ledger.record(ALICE, full=10, loaded=1, lists=1)
    other = sqlite3.connect(tmp_path / "savings.db", isolation_level=None)  # another process breaks the file
    other.execute("ALTER TABLE token_savings RENAME TO moved")
    with pytest.raises(StorageError, match="cannot write token savings"):
        ledger.flush()
    other.execute("ALTER TABLE moved RENAME TO token_savings")
    other.close()
    ledger.record(ALICE, full=10, loaded=1, lists=1)
    assert ledger.flush() == 1
    assert [(r.full, r.loaded, r.lists) for r in ledger.days(utc_day(DAY0), utc_day(DAY0))] == [(20, 2, 2)]
    ledger.close()


def test_two_replicas_add_into_the_same_postgres_rows(pg_url: str) -> None:
    db = Database(pg_url).open()
    migrations.upgrade(db)
    db.close()
    clock = Clock()
    dbs = [Database(pg_url, pool_size=2).open() for _ in range(2)]
    ledgers = [SavingsLedger(PgSavingsStore(d), clock=clock, flush_every=None) for d in dbs]
    principals = [ALICE, BOB, OAUTH_ALICE]
    start = threading.Barrier(2)

    def replica(ledger: SavingsLedger) -> None:
        start.wait()
        for i in range(200):
            for p in principals:  # the same three rows on both replicas, flushed often: upserts collide
                ledger.record(p, full=11, loaded=2, lists=1)
            if i % 5 == 0:
                ledger.flush()

    threads = [threading.Thread(target=replica, args=(lg,)) for lg in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lg in ledgers:
        lg.close()
    reader = PgSavingsStore(dbs[0])
    day = utc_day(DAY0)
    by = reader.by_principal(day, day)
    assert by == {(p.kind, p.subject): Counts(2 * 200 * 11, 2 * 200 * 2, 2 * 200) for p in principals}
    with dbs[0].connection() as conn:
        assert conn.execute("SELECT count(*) FROM token_savings").fetchone() == (3,)
    for d in dbs:
        d.close()


def test_cli_prints_days_and_principals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "toolcrib.toml").write_text("[servers]\n")
    ledger = SavingsLedger(SqliteSavingsStore(tmp_path / ".toolcrib" / "savings.db"), flush_every=None)
    ledger.record(ALICE, full=4000, loaded=1000, lists=2)
    ledger.record(BOB, full=2000, loaded=2000, lists=1)
    ledger.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        code = main(["--config", str(tmp_path / "toolcrib.toml"), "savings", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    days = cli("--json")
    assert days.returncode == 0, days.stderr
    [today] = json.loads(days.stdout)
    assert (
        today
        == {
            "day": dt.datetime.now(dt.UTC).date().isoformat(),
            "full": 6000,
            "loaded": 3000,
            "saved": 3000,
            "lists": 3,
        }
        or today["day"] != dt.datetime.now(dt.UTC).date().isoformat()
    )  # a run across midnight UTC
    people = cli("--by-principal", "--json", "--days", "2")
    assert people.returncode == 0, people.stderr
    assert [(r["principal"], r["saved"]) for r in json.loads(people.stdout)] == [("key:alice", 3000), ("key:bob", 0)]
    table = cli("--days", "3")
    assert table.returncode == 0 and "6000" in table.stdout and "50.0%" in table.stdout
    bad = cli("--days", "0")
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        == "toolcrib: argument --days: must be from 1 to 36,500, not 0; see `toolcrib savings --help`"
    )
    (tmp_path / ".toolcrib" / "savings.db").unlink()
    missing = cli()
    assert missing.returncode != 0 and "no token savings recorded yet" in missing.stderr
    assert "Traceback" not in missing.stderr


RECORDS = st.lists(
    st.tuples(
        st.sampled_from([ALICE, OAUTH_ALICE, BOB, Principal("anonymous", "anonymous")]),
        st.integers(0, 3),  # day offset
        st.integers(0, 10**9),
        st.integers(0, 10**9),
        st.integers(0, 3),
        st.booleans(),  # flush after this record
    ),
    max_size=30,
)


@settings(max_examples=1000, deadline=None, database=None)
@given(RECORDS)
def test_property_stored_totals_are_the_sum_of_records(
    records: list[tuple[Principal, int, int, int, int, bool]],
) -> None:
    clock = Clock(DAY0)
    ledger = SavingsLedger(SqliteSavingsStore(":memory:"), clock=clock, flush_every=None)
    expected: dict[tuple[dt.date, str], Counts] = {}
    for principal, offset, full, loaded, lists, flush in records:
        clock.now = DAY0 + offset * 86400
        ledger.record(principal, full=full, loaded=loaded, lists=lists)
        expected.setdefault((utc_day(clock.now), principal.id), Counts()).add(full, loaded, lists)
        if flush:
            ledger.flush()
    first, last = utc_day(DAY0), utc_day(DAY0 + 3 * 86400)
    for flushed in (False, True):  # with some rows still in memory, then all in the store
        if flushed:
            ledger.flush()
        days = {r.day: (r.full, r.loaded, r.saved, r.lists) for r in ledger.days(first, last)}
        want_days: dict[dt.date, Counts] = {}
        for (day, _), c in expected.items():
            want_days.setdefault(day, Counts()).add(c.full, c.loaded, c.lists)
        assert days == {d: (c.full, c.loaded, c.full - c.loaded, c.lists) for d, c in want_days.items()}
        want_people: dict[str, Counts] = {}
        for (_, pid), c in expected.items():
            want_people.setdefault(pid, Counts()).add(c.full, c.loaded, c.lists)
        people = {r.id: (r.full, r.loaded, r.lists) for r in ledger.by_principal(first, last)}
        assert people == {pid: (c.full, c.loaded, c.lists) for pid, c in want_people.items()}
    ledger.close()


class _Trust:
    """Policy as the meter sees it: bob may use only ``t__*``; ``quarantined`` is replaced on change."""

    rules: tuple[str, ...] = ("bob-t-only",)
    default = "allow"

    def __init__(self) -> None:
        self.quarantined: dict[str, str] = {}

    def may_use(self, principal: Principal, target: str) -> bool:
        if target in self.quarantined:
            return False
        return principal.subject != "bob" or target.startswith("t__")

    def is_quarantined(self, key: str) -> bool:
        return key in self.quarantined


class _View:
    def __init__(self, catalog: Catalog, mode: str = "dispatcher") -> None:
        self.mode = mode
        self.pool = SimpleNamespace(catalog=catalog)
        self.trust = _Trust()


def _catalog(*names: str) -> Catalog:
    cat = Catalog()
    for name in names:
        tool = types.Tool(name=name, description=f"{name} does things", input_schema={"type": "object"})
        cat.tools[name] = Entry(name, name.split("__")[0], name, tool, f"hash-{name}")
    return cat


def test_meter_follows_catalog_policy_and_quarantine() -> None:
    ledger = SavingsLedger(SqliteSavingsStore(":memory:"), clock=Clock(), flush_every=None)
    meter = SavingsMeter(ledger, warm=False)
    view = _View(_catalog("e__echo", "e__add", "t__now"))

    def tokens(*names: str) -> int:
        cat = view.pool.catalog
        return sum(count_tokens(tool_json(cat.tools[n].tool)) for n in names)

    assert meter.full_tokens(view, ALICE) == tokens("e__echo", "e__add", "t__now")
    assert meter.full_tokens(view, BOB) == tokens("t__now")
    view.trust.quarantined = {"e__add": "changed"}
    assert meter.full_tokens(view, ALICE) == tokens("e__echo", "t__now")
    view.pool.catalog = _catalog("e__echo", "t__now", "t__zone")
    assert meter.full_tokens(view, BOB) == tokens("t__now", "t__zone")
    meter.listed(view, ALICE, list(DISPATCHER_TOOLS))
    full, dispatcher = tokens("e__echo", "t__now", "t__zone"), sum(count_tokens(tool_json(t)) for t in DISPATCHER_TOOLS)
    [row] = ledger.by_principal(ledger.today(), ledger.today())
    assert (row.full, row.loaded, row.lists) == (full, dispatcher, 1)
    passthrough = _View(view.pool.catalog, mode="passthrough")
    meter.listed(passthrough, BOB, [])
    [bob] = [r for r in ledger.by_principal(ledger.today(), ledger.today()) if r.subject == "bob"]
    assert (bob.full, bob.loaded, bob.saved) == (tokens("t__now", "t__zone"),) * 2 + (0,)
    ledger.close()
