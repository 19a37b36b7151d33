"""Opaque tokens that toolcrib hands to a client and must trust when they come back.

A 2026-07-28 ``requestState`` (SEP-2322, "servers MUST treat it as attacker-controlled"), a task
id of the tasks extension and the state of a call held for approval all leave toolcrib and are
echoed later by a client. :class:`Sealer` makes each one a token that only toolcrib can read or
mint: AES-256-GCM (confidential and authenticated) over a small JSON envelope that names

- ``p``: the purpose (``"request_state"``, ``"task"``, ``"approval"``), so a token minted for one
  use is refused for another;
- ``sub``: the typed principal id (:attr:`Principal.id`) it was minted for, so no other principal
  can resume it;
- ``exp``: expiry, seconds since the epoch;
- ``d``: the payload (any JSON value).

Token shape: ``"tc1." + base64url(nonce[12] || ciphertext || tag[16])``, no padding. The version
prefix is bound as associated data, so it cannot be swapped (RFC 8725 3.1: tokens never name
their algorithm). The key is derived from the audit secret (:mod:`toolcrib.gateway.audit.keys`),
so replicas sharing that secret accept each other's tokens.

Errors: :meth:`Sealer.open` raises :class:`InvalidToken` for anything it did not mint unmodified
for this purpose and principal, or that has expired; the message is for logs only, never the wire.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from toolcrib.gateway.audit.keys import derive

PREFIX = "tc1."
LABEL = b"toolcrib sealed tokens v1"
MAX_TOKEN = 64 * 1024
"""Longest token :meth:`Sealer.open` will look at (characters)."""


class InvalidToken(Exception):
    """A token failed verification (malformed, forged, modified, another purpose or principal, expired)."""


class Sealer:
    """``seal(purpose, principal_id, data, ttl) -> token`` and ``open(token, purpose, principal_id) -> data``.

    ``secret`` is the deployment's root secret (32 bytes or more); the AES key is derived from it
    with the label ``toolcrib sealed tokens v1``.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("sealing secret must be at least 16 bytes")
        self._aead = AESGCM(derive(secret, LABEL))

    def seal(self, purpose: str, principal_id: str, data: Any, ttl: float) -> str:
        """A token carrying ``data`` (JSON-serialisable) for ``principal_id``, valid ``ttl`` seconds."""
        envelope = {"p": purpose, "sub": principal_id, "exp": int(time.time() + ttl), "d": data}
        plain = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, plain, PREFIX.encode())
        return PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, token: object, purpose: str, principal_id: str) -> Any:
        """The payload of ``token``; raises :class:`InvalidToken` unless it is genuine, unexpired,
        minted for ``purpose`` and for ``principal_id``."""
        if not isinstance(token, str) or not token.startswith(PREFIX) or len(token) > MAX_TOKEN:
            raise InvalidToken("not a toolcrib token")
        body = token[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise InvalidToken("not base64url") from None
        if len(raw) < 12 + 16 or base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != body:
            raise InvalidToken("malformed")
        try:
            plain = self._aead.decrypt(raw[:12], raw[12:], PREFIX.encode())
        except InvalidTag:
            raise InvalidToken("forged or modified") from None
        try:
            envelope = json.loads(plain)
        except ValueError:
            raise InvalidToken("unreadable envelope") from None
        if not isinstance(envelope, dict) or envelope.get("p") != purpose:
            raise InvalidToken("minted for another purpose")
        if envelope.get("sub") != principal_id:
            raise InvalidToken("minted for another principal")
        exp = envelope.get("exp")
        if not isinstance(exp, int) or exp < time.time():
            raise InvalidToken("expired")
        return envelope.get("d")
