"""Every error toolcrib raises on purpose derives from :class:`ToolcribError`.

Each carries a one-line message that says what happened and what to do next; the CLI prints
that line (never a traceback) and exits with :attr:`ToolcribError.exit_code`.

::

    ToolcribError
    ├── UsageError             a command-line argument is wrong (exit 2)
    ├── ConfigError            the TOML file is missing, unreadable or invalid
    ├── SecretError            a secret reference cannot be resolved
    ├── UpstreamError          a downstream MCP server failed us
    │   ├── UpstreamUnavailable    not connected (starting, crashed, crash-looping, disabled)
    │   ├── UpstreamTimeout        the per-call deadline expired
    │   └── UpstreamCrashed        the server died while the call was pending
    ├── ToolNotFound           no tool of that name in the catalog
    ├── InvalidArguments       arguments fail the tool's input schema
    ├── IndexError_            the tool index cannot be read, written or built
    ├── AuthError              the caller is not authenticated (HTTP 401)
    ├── Forbidden              authenticated, but not allowed (HTTP 403 / policy deny)
    ├── ApprovalPending        the call waits for an operator's approval
    ├── AuditError             the audit log cannot be written or failed verification
    └── StorageError           the shared database ([storage] url) is unreachable or refuses us
"""

from __future__ import annotations


class ToolcribError(Exception):
    """Root of toolcrib's errors: a one-line, actionable message."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ToolcribError):
    """A command-line argument is wrong (a value out of range, a time that cannot be read, a missing
    ``--yes``): exit code 2, as for argparse's own usage errors."""

    exit_code = 2


class ConfigError(ToolcribError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = 2


class SecretError(ToolcribError):
    """A ``secret:...`` reference could not be resolved from any source."""

    exit_code = 2


class UpstreamError(ToolcribError):
    """A downstream MCP server failed to answer."""


class UpstreamUnavailable(UpstreamError):
    """The upstream is not connected right now."""


class UpstreamTimeout(UpstreamError):
    """The per-call deadline expired; the upstream was sent ``notifications/cancelled``."""


class UpstreamCrashed(UpstreamError):
    """The upstream process or connection died while the call was pending."""


class UpstreamInvalidResult(UpstreamError):
    """The upstream answered with a result that breaks its own declared contract (a tool's
    structured content that does not match its ``outputSchema``)."""


class ToolNotFound(ToolcribError):
    """No tool with that name is in the catalog."""


class InvalidArguments(ToolcribError):
    """The arguments do not satisfy the tool's input schema."""


class IndexError_(ToolcribError):
    """The tool index could not be read, written or built."""


class AuthError(ToolcribError):
    """The caller could not be authenticated."""


class Forbidden(ToolcribError):
    """The caller is authenticated but not allowed to do this."""


class ApprovalPending(ToolcribError):
    """The call is held until an operator approves it."""

    def __init__(self, message: str, approval_id: str) -> None:
        super().__init__(message)
        self.approval_id = approval_id


class AuditError(ToolcribError):
    """The audit log could not be written, or failed verification."""


class AuditBusy(AuditError):
    """Another writer holds the audit database's write lock right now (SQLite busy); try again."""


class StorageError(ToolcribError):
    """The shared database (``[storage] url``, PostgreSQL) is unreachable, refuses us, or its schema
    is newer than this toolcrib."""

    exit_code = 3
