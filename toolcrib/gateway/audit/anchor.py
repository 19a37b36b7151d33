"""The audit log's head (last seq and hash), kept in a small keyed file outside the database.

Two 256-byte slots, each a JSON record ``{"seq", "hash", "check", "mac"}``, are written in turn with
``pwrite`` (about 20 us, where an atomic rename costs milliseconds here): a torn write damages only
the slot being written, and a reader takes the valid slot with the higher seq. ``check`` is an
unkeyed checksum that tells a torn slot from a whole one; ``mac`` is HMAC-SHA256 over
``"{seq}:{hash}"`` under a key derived from the audit key (:mod:`toolcrib.gateway.audit.keys`), so a
slot cannot be forged without that key. With a key, a slot counts only if its MAC is right; without
one (an auditor holding only the files), only the checksum can be checked.

Writes never move the head back: before writing, the file is read back unless its mtime is the one
this process's own last write left (the common case of one writer process; a second writer within
the same filesystem timestamp tick could go unnoticed, so run one server per audit log). The file
is created 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

from toolcrib.gateway.audit.keys import ANCHOR_LABEL, PRIVATE, derive, mac, make_private


@dataclass(frozen=True)
class Slot:
    """One whole slot: ``keyed`` is True/False when a key was given (MAC right/wrong or absent), else None."""

    seq: int
    digest: str
    keyed: bool | None


class Anchor:
    """Read and write the two-slot head file; :meth:`read` returns ``(seq, hash)`` or None."""

    SLOT = 256

    def __init__(self, path: Path, key: bytes | None = None) -> None:
        self.path = path
        self.keyed = key is not None
        self._key = derive(key, ANCHOR_LABEL) if key is not None else None
        self._fd: int | None = None
        self._mine: tuple[int, int] | None = None
        """``(mtime_ns, seq)`` after this process's last write: if the file is unchanged since, no
        other process wrote a later head and the read-back can be skipped."""

    def slots(self, data: bytes | None = None) -> list[Slot]:
        """The whole slots in ``data`` (the file's first 512 bytes) or the file; torn ones are skipped."""
        if data is None:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                return []
        found = []
        for i in range(2):
            try:
                slot = json.loads(data[i * self.SLOT : (i + 1) * self.SLOT])
                seq, digest = int(slot["seq"]), str(slot["hash"])
            except (ValueError, KeyError, TypeError):
                continue
            if slot.get("check") != self._check(seq, digest):
                continue
            keyed = None
            if self._key is not None:
                keyed = isinstance(slot.get("mac"), str) and hmac.compare_digest(slot["mac"], self._mac(seq, digest))
            found.append(Slot(seq, digest, keyed))
        return found

    def read(self, data: bytes | None = None, *, authenticated: bool = True) -> tuple[int, str] | None:
        """The head: the whole slot with the higher seq (with a key and ``authenticated``, among
        slots whose MAC is right); None if there is none."""
        best: tuple[int, str] | None = None
        for slot in self.slots(data):
            if (slot.keyed is not False or not authenticated) and (best is None or slot.seq > best[0]):
                best = (slot.seq, slot.digest)
        return best

    def forged(self, data: bytes | None = None) -> list[int]:
        """Seqs of whole slots whose MAC is wrong or missing and that claim a later head than the
        authenticated one (a lower one is an old slot left by an older version: harmless)."""
        slots = self.slots(data)
        head = max((s.seq for s in slots if s.keyed), default=-1)
        return sorted(s.seq for s in slots if s.keyed is False and s.seq > head)

    def write(self, seq: int, digest: str) -> bool:
        """Record a new head unless the file already holds a later one. Returns True when the file,
        read back because another process (or someone) changed it, held no valid head: the caller
        decides whether that is a fresh file or a lost anchor."""
        st = os.fstat(self._fd) if self._fd is not None else None
        if st is not None and st.st_nlink == 0:
            self.close()
            st = None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE)
            make_private(self.path)
        if st is None or self._mine is None or st.st_mtime_ns != self._mine[0]:
            current = self.read(os.pread(self._fd, 2 * self.SLOT, 0))
        else:
            current = (self._mine[1], "")
        lost = current is None
        if current is not None and current[0] > seq:
            return False
        record: dict[str, object] = {"seq": seq, "hash": digest, "check": self._check(seq, digest)}
        if self._key is not None:
            record["mac"] = self._mac(seq, digest)
        os.pwrite(self._fd, json.dumps(record).encode().ljust(self.SLOT - 1) + b"\n", (seq % 2) * self.SLOT)
        self._mine = (os.fstat(self._fd).st_mtime_ns, seq)
        return lost

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._mine = None

    def _mac(self, seq: int, digest: str) -> str:
        assert self._key is not None
        return mac(self._key, f"{seq}:{digest}")

    @staticmethod
    def _check(seq: int, digest: str) -> str:
        return hashlib.sha256(f"{seq}:{digest}".encode()).hexdigest()[:16]
