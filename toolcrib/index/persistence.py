"""On-disk form of a snapshot: ``vectors.faiss``, ``records.json`` and ``meta.json`` in one directory.

Each file is written to a temporary name and moved into place with ``os.replace``; ``meta.json``
is written last and carries the sha256 of the other two, so a crash between writes, a truncated
file or files from another program are detected at load and the index is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from toolcrib.errors import IndexError_
from toolcrib.index.documents import ToolDoc
from toolcrib.index.store import Snapshot

log = logging.getLogger(__name__)

FORMAT = "toolcrib-index/1"
META = "meta.json"
RECORDS = "records.json"
VECTORS = "vectors.faiss"


class CorruptIndex(Exception):
    """The directory holds no usable index (damaged, partial or foreign); the reason is the message."""


@dataclass(frozen=True)
class Loaded:
    """A snapshot read from disk and the model it was embedded with."""

    snapshot: Snapshot
    model_id: str
    fingerprint: str


def _atomic_write(path: Path, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def save(directory: Path, snapshot: Snapshot, *, model_id: str, fingerprint: str) -> None:
    """Write ``snapshot`` to ``directory`` atomically; IndexError_ if the directory is unwritable."""
    records = [{**doc.to_json(), "hash": h} for doc, h in zip(snapshot.docs, snapshot.hashes, strict=True)]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        vectors_sha = _atomic_write(directory / VECTORS, faiss.serialize_index(snapshot.dense).tobytes())
        records_sha = _atomic_write(
            directory / RECORDS, json.dumps(records, ensure_ascii=False, separators=(",", ":")).encode()
        )
        meta = {
            "format": FORMAT,
            "model_id": model_id,
            "fingerprint": fingerprint,
            "dim": snapshot.dim,
            "count": len(snapshot),
            "records_sha256": records_sha,
            "vectors_sha256": vectors_sha,
        }
        _atomic_write(directory / META, json.dumps(meta, indent=1).encode())
    except OSError as exc:
        raise IndexError_(
            f"cannot write the tool index to {directory} ({exc.strerror or exc}); "
            "fix its permissions or set [index] path to a writable directory"
        ) from exc


def exists(directory: Path) -> bool:
    """Whether ``directory`` holds anything that looks like an index (even a damaged one)."""
    return any((directory / name).exists() for name in (META, RECORDS, VECTORS))


def _read_verified(path: Path, expected_sha: Any) -> bytes:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected_sha:
        raise CorruptIndex(f"{path.name} does not match the checksum in {META}")
    return data


def load(directory: Path) -> Loaded:
    """Read the index in ``directory``; raise :class:`CorruptIndex` if anything is off."""
    try:
        meta = json.loads((directory / META).read_bytes())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CorruptIndex(f"{META} is not a {FORMAT} index")
        records = json.loads(_read_verified(directory / RECORDS, meta.get("records_sha256")))
        raw = _read_verified(directory / VECTORS, meta.get("vectors_sha256"))
        dense: Any = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))
        dim, count = int(meta["dim"]), int(meta["count"])
        if not isinstance(records, list) or len(records) != count or dense.ntotal != count or dense.d != dim:
            raise CorruptIndex("record, vector and metadata counts disagree")
        docs = [ToolDoc.from_json(r) for r in records]
        hashes = [str(r["hash"]) for r in records]
        ids = faiss.vector_to_array(dense.id_map) if count else np.zeros(0, dtype=np.int64)
        if not np.array_equal(ids, np.arange(count)):
            raise CorruptIndex("vector ids are not in record order")
        vectors = dense.index.reconstruct_n(0, count) if count else np.zeros((0, dim), dtype=np.float32)
        snapshot = Snapshot.build(docs, hashes, np.asarray(vectors, dtype=np.float32), dense=dense)
        return Loaded(snapshot, str(meta["model_id"]), str(meta["fingerprint"]))
    except CorruptIndex:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise CorruptIndex(f"{type(exc).__name__}: {exc}") from exc
