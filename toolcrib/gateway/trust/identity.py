"""Who a request comes from: one frozen, typed identity used by sessions, approvals, policy and audit.

A :class:`Principal` is ``kind`` + ``subject`` + ``groups`` (+ OAuth ``scopes``). Two principals are
the same caller only when kind *and* subject match: API key ``agent`` (``key:agent``) and an OAuth
token with ``sub = "agent"`` (``oauth:agent``) are different callers and never share a session, an
approval or a policy entry written for the other. :attr:`Principal.id` (``KIND:SUBJECT``) is the one
string form, used wherever an identity is stored or compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["operator", "key", "oauth", "anonymous"]
KINDS: frozenset[str] = frozenset({"operator", "key", "oauth", "anonymous"})
OPERATORS_GROUP = "admins"
"""Members may use the admin API and approve calls. The local operator is always a member; API keys
and OAuth subjects join with ``toolcrib keys add NAME --groups operators`` or ``[auth] scope_groups``."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``kind`` (how it authenticated), ``subject`` (who, within that kind),
    ``groups`` (drive policy and operator rights) and ``scopes`` (from an OAuth token)."""

    kind: Kind
    subject: str
    groups: frozenset[str] = field(default_factory=frozenset)
    scopes: frozenset[str] = frozenset()

    @property
    def id(self) -> str:
        """``KIND:SUBJECT``, e.g. ``key:ci`` or ``oauth:alice``: the stored and compared form."""
        return f"{self.kind}:{self.subject}"

    @property
    def is_operator(self) -> bool:
        """May use the admin API: the local operator, or any principal in :data:`OPERATORS_GROUP`."""
        return self.kind == "operator" or OPERATORS_GROUP in self.groups

    def __str__(self) -> str:
        return self.id


LOCAL_OPERATOR = Principal("operator", "local", frozenset({OPERATORS_GROUP}))
"""The one local operator: stdio mode, the CLI, and the admin API of a loopback ``auth = "none"`` gateway."""
ANONYMOUS = Principal("anonymous", "anonymous")
"""Clients of a loopback-only gateway with ``auth = "none"``."""
