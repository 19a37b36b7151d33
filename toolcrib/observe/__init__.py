"""Observability: token-savings ledger, metrics and traces (issue 13)."""
