"""The audit log's head (last seq and hash), kept in a small file outside the database.

Two 256-byte slots, each a checksummed JSON record, are written in turn with ``pwrite`` (about
20 us, where an atomic rename costs milliseconds here): a torn write damages only the slot being
written, and a reader takes the valid slot with the higher seq. Writes never move the head back:
before writing, the file is read back unless its mtime is the one this process's own last write
left (the common case of one writer process; a second writer within the same filesystem timestamp
tick could go unnoticed, so run one server per audit log).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


class Anchor:
    """Read and write the two-slot head file; :meth:`read` returns ``(seq, hash)`` or None."""

    SLOT = 256

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._mine: tuple[int, int] | None = None
        """``(mtime_ns, seq)`` after this process's last write: if the file is unchanged since, no
        other process wrote a later head and the read-back can be skipped."""

    def read(self, data: bytes | None = None) -> tuple[int, str] | None:
        """The head, from ``data`` (the file's first 512 bytes) or the file; None if no valid slot."""
        if data is None:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                return None
        best: tuple[int, str] | None = None
        for i in range(2):
            try:
                slot = json.loads(data[i * self.SLOT : (i + 1) * self.SLOT])
                seq, digest = int(slot["seq"]), str(slot["hash"])
            except (ValueError, KeyError, TypeError):
                continue
            if slot.get("check") == self._check(seq, digest) and (best is None or seq > best[0]):
                best = (seq, digest)
        return best

    def write(self, seq: int, digest: str) -> None:
        """Record a new head unless the file already holds a later one."""
        st = os.fstat(self._fd) if self._fd is not None else None
        if st is not None and st.st_nlink == 0:
            self.close()
            st = None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if st is None or self._mine is None or st.st_mtime_ns != self._mine[0]:
            current = self.read(os.pread(self._fd, 2 * self.SLOT, 0))
        else:
            current = (self._mine[1], "")
        if current is not None and current[0] > seq:
            return
        record = json.dumps({"seq": seq, "hash": digest, "check": self._check(seq, digest)}).encode()
        os.pwrite(self._fd, record.ljust(self.SLOT - 1) + b"\n", (seq % 2) * self.SLOT)
        self._mine = (os.fstat(self._fd).st_mtime_ns, seq)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._mine = None

    @staticmethod
    def _check(seq: int, digest: str) -> str:
        return hashlib.sha256(f"{seq}:{digest}".encode()).hexdigest()[:16]
