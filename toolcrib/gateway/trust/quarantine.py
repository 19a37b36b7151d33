"""What a principal may see and call: policy listability plus tool pinning (quarantine).

The quarantine set is recomputed when an upstream's tools change and when an operator changes
the pins (``toolcrib tools approve`` in another process); the check on the hot path is a set
lookup plus, at most once a second, :meth:`PinStore.stamp` (a ``stat`` of the pin file, or a
version query / nothing at all for PostgreSQL, see :mod:`toolcrib.storage.documents`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Mapping
from typing import Any

from toolcrib.config import Config
from toolcrib.errors import ToolcribError
from toolcrib.gateway.trust import policy
from toolcrib.gateway.trust.identity import Principal
from toolcrib.router.pins import PinStore
from toolcrib.router.pool import Pool

log = logging.getLogger("toolcrib.trust")


class Trust:
    """Policy filter and pin quarantine, shared by search, tools/list and every call path."""

    def __init__(self, config: Config, pool: Pool, pins: PinStore | None = None) -> None:
        """``pins``: the pin store (default: the file at ``[policy] pins_path``; pass
        ``PinStore(pin_document(db, path), separator)`` for PostgreSQL)."""
        self.config = config
        self.pool = pool
        self.rules = config.policy.rules
        self.default = policy.effective_default(config.policy, config.gateway)
        self.pins = pins if pins is not None else PinStore(config.policy.pins_path, separator=config.gateway.separator)
        self.quarantined: dict[str, str] = {}
        self._stamp: Hashable = None
        self._checked = 0.0

    def may_use(self, principal: Principal, target: str, kind: policy.Kind = "tool") -> bool:
        """Listable and reachable for this principal: not quarantined (tools), not denied by every rule."""
        if kind == "tool":
            self._maybe_reload()
            if target in self.quarantined:
                return False
        return policy.allowed(principal, target, self.rules, self.default, kind=kind)

    def decide(
        self, principal: Principal, target: str, arguments: Mapping[str, Any], kind: policy.Kind = "tool"
    ) -> policy.Decision:
        """:func:`policy.decide` over the rules and default in force now (a SIGHUP reload replaces them)."""
        return policy.decide(principal, target, arguments, self.rules, self.default, kind=kind)

    def refusing_rule(
        self, principal: Principal, target: str, arguments: Mapping[str, Any], kind: policy.Kind = "tool"
    ) -> str:
        """The id of what makes ``target`` unreachable for ``principal``: ``quarantine`` or a policy rule id."""
        if kind == "tool" and target in self.quarantined:
            return "quarantine"
        return self.decide(principal, target, arguments, kind).rule

    def only_quarantined(self, principal: Principal, key: str) -> bool:
        """Tool ``key`` is quarantined and policy would otherwise list it to ``principal`` (so telling
        this caller it is quarantined reveals nothing the policy hides)."""
        return self.is_quarantined(key) and policy.allowed(principal, key, self.rules, self.default)

    def is_quarantined(self, key: str) -> bool:
        self._maybe_reload()
        return key in self.quarantined

    def searchable(self, key: str) -> bool:
        return key not in self.quarantined

    def refresh(self) -> None:
        """Re-check every connected upstream's tools against their pins."""
        catalog = self.pool.catalog
        by_pin = {self.pins.key(e.server, e.name): key for key, e in catalog.tools.items()}
        quarantined: dict[str, str] = {}
        for name, up in self.pool.upstreams.items():
            if not up.listing.tools:
                continue
            try:
                report = self.pins.check(name, up.listing.tools, self.config.policy.new_tools)
            except ToolcribError as exc:
                log.error("tool pins unavailable, quarantining %s: %s", name, exc.message)
                quarantined.update({k: exc.message for k, e in catalog.tools.items() if e.server == name})
                continue
            for pin_key, reason in {**report.quarantined, **report.refused}.items():
                quarantined[by_pin.get(pin_key, pin_key)] = reason
        for key in quarantined.keys() - self.quarantined.keys():
            log.warning("quarantined %s: %s", key, quarantined[key])
        self.quarantined = quarantined
        self._stamp = self._pin_stamp()

    def _pin_stamp(self) -> Hashable:
        try:
            return self.pins.stamp()
        except ToolcribError as exc:  # unreadable: refresh() quarantines and logs why
            return ("unavailable", exc.message)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        if self._pin_stamp() != self._stamp:
            self.refresh()
