"""Every fuzz target in the normal test run, so none of them rots between ``make fuzz`` runs.

The SSE reader gets its 1,000 examples here; the other targets' parsers already have 1,000-example
property tests of their own (tests/gateway/test_jsonrpc_properties.py, test_policy_properties.py,
tests/test_properties.py, tests/test_importer_properties.py), so here they get a smoke run."""

from __future__ import annotations

import pytest

from tests.fuzz.engine import as_test, quick_settings
from tests.fuzz.registry import TARGETS

EXAMPLES = {"sse": 1000}
SMOKE = 150


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_quick(name: str) -> None:
    as_test(TARGETS[name], quick_settings(EXAMPLES.get(name, SMOKE)))()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # an upstream naming a tool after another tool's clash key shadowed it (catalog overwrote the entry)
        ("names", (("__", {"a": ["0_0_fda925cf", "0:0", "0;0"]}), "", "")),
        # a non-object env / headers or a non-array args crashed the importer instead of a ConfigError
        ("importer", {"mcpServers": {"a": {"command": "x", "env": [None]}}}),
        ("importer", {"mcpServers": {"a": {"url": "http://127.0.0.1:9/mcp", "headers": 1}}}),
        ("importer", {"mcpServers": {"a": {"command": "x", "args": 1}}}),
        # non-finite numbers in a JSON-RPC body
        ("body", (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":NaN}}', None)),
        ("body", (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":-1e400}}', None)),
    ],
)
def test_fuzz_regressions(name: str, value: object) -> None:
    """Inputs the fuzzer found (or that a target must keep covering), replayed on every run."""
    TARGETS[name].check(value)
