"""The ``db`` verbs: ``toolcrib db upgrade`` and ``toolcrib db status`` for ``[storage] url``.

:func:`cli_database` is how every operator verb reaches the shared database: connected, at this
toolcrib's schema version (else a one-line error saying to run ``toolcrib db upgrade``), or None for
the embedded default.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from toolcrib.config import Config
from toolcrib.errors import ConfigError

if TYPE_CHECKING:
    from toolcrib.storage.postgres import Database


def cli_database(config: Config) -> Database | None:
    """The configured PostgreSQL database for a CLI verb (schema checked), or None when embedded."""
    from toolcrib.storage import migrations, open_database

    db = open_database(config)
    if db is not None:
        try:
            migrations.require_current(db)
        except BaseException:
            db.close()
            raise
    return db


def _db(args: argparse.Namespace, config: Config) -> int:
    from toolcrib.storage import migrations, open_database

    if config.storage.url is None:
        raise ConfigError(
            "[storage] url is not set: state is embedded (SQLite and files), there is nothing to upgrade; "
            'set url = "postgresql://USER@HOST:PORT/DB" to share it between replicas'
        )
    db = open_database(config)
    assert db is not None
    try:
        if args.action == "upgrade":
            before, after = migrations.upgrade(db)
            result: dict[str, Any] = {"database": db.where, "from": before, "to": after}
            text = f"{db.where}: schema version {after}" + (
                f" (upgraded from {before})" if before != after else " (already current)"
            )
        else:
            have = migrations.current(db)
            result = {"database": db.where, "version": have, "latest": migrations.LATEST}
            state = "current" if have == migrations.LATEST else "run `toolcrib db upgrade`"
            text = f"{db.where}: schema version {have} of {migrations.LATEST} ({state})"
        print(json.dumps(result) if args.json else text, file=sys.stdout if args.json else sys.stderr)
        return 0
    finally:
        db.close()


def register(sub: Any) -> None:
    """Add the ``db`` verb."""
    parser = sub.add_parser("db", help="the shared PostgreSQL database ([storage] url): schema upgrade and status")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    parser.set_defaults(func=_db)
    for name, text in (
        ("upgrade", "apply the schema migrations this toolcrib needs (serve also does it on start)"),
        ("status", "show the database's schema version"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
