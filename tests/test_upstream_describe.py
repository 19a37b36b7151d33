"""``upstream_state.describe``: the one line an operator reads for a server that failed to start."""

from __future__ import annotations

import errno

from toolcrib.router.upstream_state import describe


def test_a_missing_program_is_named_even_when_the_error_does_not_name_it() -> None:
    # The SDK's stdio transport can surface FileNotFoundError without a filename (seen with the demo
    # config launched by a client whose PATH lacks the virtualenv): the configured command is named.
    bare = FileNotFoundError(errno.ENOENT, "No such file or directory")
    assert bare.filename is None
    line = describe(bare, None, "python")
    assert line.startswith("command not found: python (") and "full path" in line and "None" not in line
    wrapped = BaseExceptionGroup("transport", [bare])
    assert describe(wrapped, None, "python") == line


def test_the_error_s_own_file_name_wins() -> None:
    named = FileNotFoundError(errno.ENOENT, "No such file or directory", "/opt/bin/mcp-x")
    assert describe(named, None, "mcp-x").startswith("command not found: /opt/bin/mcp-x (")
