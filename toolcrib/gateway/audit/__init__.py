"""The tamper-evident audit log: the SQLite hash chain, its background writer and its keyed anchor."""
