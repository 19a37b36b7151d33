"""Stored form of a snapshot, and where it is stored.

A snapshot is stored as three parts (:func:`encode` / :func:`decode`): the records (JSON: each
tool's document and content hash), the vectors (a serialised FAISS ``IndexIDMap2``) and the meta
(JSON: format, model, fingerprint, dimension, count and the sha256 of the other two), so a crash
between writes, a truncated part or another program's data is detected at load and the index is
rebuilt. The content hashes are what lets a sync reuse stored vectors instead of re-embedding.

On disk (:func:`save`, :func:`load`, :class:`FileSnapshots`): ``vectors.faiss``, ``records.json`` and
``meta.json`` in one directory; each file is written to a temporary name and moved into place with
``os.replace``, ``meta.json`` last. In PostgreSQL: :class:`toolcrib.index.snapshots.PgSnapshots`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import faiss
import numpy as np

from toolcrib.errors import IndexError_
from toolcrib.index.documents import ServerDoc, ToolDoc
from toolcrib.index.store import Snapshot

log = logging.getLogger(__name__)

FORMAT = "toolcrib-index/1"
META = "meta.json"
RECORDS = "records.json"
VECTORS = "vectors.faiss"


class CorruptIndex(Exception):
    """The store holds no usable index (damaged, partial or foreign); the reason is the message."""


@dataclass(frozen=True)
class Loaded:
    """A snapshot read from a store and the model it was embedded with."""

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


@dataclass(frozen=True)
class Encoded:
    """A snapshot as stored by every backend: ``meta`` (JSON object) carries the sha256 of the other two."""

    meta: dict[str, Any]
    records: bytes
    vectors: bytes


def encode(snapshot: Snapshot, *, model_id: str, fingerprint: str) -> Encoded:
    """The stored form of ``snapshot``: records JSON (with content hashes), FAISS bytes, and meta."""
    records = [{**doc.to_json(), "hash": h} for doc, h in zip(snapshot.docs, snapshot.hashes, strict=True)]
    records_raw = json.dumps(records, ensure_ascii=False, separators=(",", ":")).encode()
    vectors_raw = faiss.serialize_index(snapshot.dense).tobytes()
    meta = {
        "format": FORMAT,
        "model_id": model_id,
        "fingerprint": fingerprint,
        "dim": snapshot.dim,
        "count": len(snapshot),
        "records_sha256": hashlib.sha256(records_raw).hexdigest(),
        "vectors_sha256": hashlib.sha256(vectors_raw).hexdigest(),
        **_side_meta(snapshot),
    }
    return Encoded(meta, records_raw, vectors_raw)


def _b64(vectors: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode()


def _side_meta(snapshot: Snapshot) -> dict[str, Any]:
    """The server documents and vectors and the generated-document vectors (issue 14), kept in the
    meta (tens to hundreds of servers; little-endian float32, base64) so that stores written before
    them still load: what is missing is embedded at the next sync."""
    out: dict[str, Any] = {}
    servers = snapshot.servers
    if len(servers):
        out["servers"] = {
            "records": [{**d.to_json(), "hash": h} for d, h in zip(servers.docs, servers.hashes, strict=True)],
            "vectors": _b64(servers.text),
        }
    if snapshot.generated is not None:
        out["generated"] = {"hashes": list(snapshot.generated_hashes), "vectors": _b64(snapshot.generated)}
    return out


def _side_args(meta: dict[str, Any], count: int, dim: int) -> dict[str, Any]:
    """:func:`_side_meta` read back as keyword arguments of :meth:`Snapshot.build`."""

    def vectors(raw: Any, rows: int) -> np.ndarray:
        data = np.frombuffer(base64.b64decode(str(raw), validate=True), dtype="<f4")
        if data.size != rows * dim:
            raise CorruptIndex("server or generated vectors do not match their records")
        return data.reshape(rows, dim).astype(np.float32)

    out: dict[str, Any] = {}
    servers = meta.get("servers")
    if servers is not None:
        records = servers["records"]
        out["servers"] = [ServerDoc.from_json(r) for r in records]
        out["server_hashes"] = [str(r["hash"]) for r in records]
        out["server_vectors"] = vectors(servers["vectors"], len(records))
    generated = meta.get("generated")
    if generated is not None:
        hashes = [str(h) for h in generated["hashes"]]
        if len(hashes) != count:
            raise CorruptIndex("generated vectors do not match the records")
        out["generated"] = vectors(generated["vectors"], count)
        out["generated_hashes"] = hashes
    return out


def decode(
    meta: Any, records_raw: bytes, vectors_raw: bytes, *, names: tuple[str, str, str] = (META, RECORDS, VECTORS)
) -> Loaded:
    """Verify and rebuild a snapshot from its stored form; :class:`CorruptIndex` if anything is off.

    ``names`` (meta, records, vectors) only label the parts in error messages.
    """
    meta_name, records_name, vectors_name = names
    try:
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CorruptIndex(f"{meta_name} is not a {FORMAT} index")
        for name, raw, key in (
            (records_name, records_raw, "records_sha256"),
            (vectors_name, vectors_raw, "vectors_sha256"),
        ):
            if hashlib.sha256(raw).hexdigest() != meta.get(key):
                raise CorruptIndex(f"{name} does not match the checksum in {meta_name}")
        records = json.loads(records_raw)
        dense: Any = faiss.deserialize_index(np.frombuffer(vectors_raw, dtype=np.uint8))
        dim, count = int(meta["dim"]), int(meta["count"])
        if not isinstance(records, list) or len(records) != count or dense.ntotal != count or dense.d != dim:
            raise CorruptIndex("record, vector and metadata counts disagree")
        docs = [ToolDoc.from_json(r) for r in records]
        hashes = [str(r["hash"]) for r in records]
        ids = faiss.vector_to_array(dense.id_map) if count else np.zeros(0, dtype=np.int64)
        if not np.array_equal(ids, np.arange(count)):
            raise CorruptIndex("vector ids are not in record order")
        vectors = dense.index.reconstruct_n(0, count) if count else np.zeros((0, dim), dtype=np.float32)
        snapshot = Snapshot.build(
            docs, hashes, np.asarray(vectors, dtype=np.float32), dense=dense, **_side_args(meta, count, dim)
        )
        return Loaded(snapshot, str(meta["model_id"]), str(meta["fingerprint"]))
    except CorruptIndex:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise CorruptIndex(f"{type(exc).__name__}: {exc}") from exc


def save(directory: Path, snapshot: Snapshot, *, model_id: str, fingerprint: str) -> None:
    """Write ``snapshot`` to ``directory`` atomically; IndexError_ if the directory is unwritable."""
    encoded = encode(snapshot, model_id=model_id, fingerprint=fingerprint)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(directory / VECTORS, encoded.vectors)
        _atomic_write(directory / RECORDS, encoded.records)
        _atomic_write(directory / META, json.dumps(encoded.meta, indent=1).encode())
    except OSError as exc:
        raise IndexError_(
            f"cannot write the tool index to {directory} ({exc.strerror or exc}); "
            "fix its permissions or set [index] path to a writable directory"
        ) from exc


def exists(directory: Path) -> bool:
    """Whether ``directory`` holds anything that looks like an index (even a damaged one)."""
    return any((directory / name).exists() for name in (META, RECORDS, VECTORS))


def load(directory: Path) -> Loaded:
    """Read the index in ``directory``; raise :class:`CorruptIndex` if anything is off."""
    try:
        meta = json.loads((directory / META).read_bytes())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CorruptIndex(f"{META} is not a {FORMAT} index")
        records = (directory / RECORDS).read_bytes()
        vectors = (directory / VECTORS).read_bytes()
    except CorruptIndex:
        raise
    except (OSError, ValueError) as exc:
        raise CorruptIndex(f"{type(exc).__name__}: {exc}") from exc
    return decode(meta, records, vectors)


@runtime_checkable
class SnapshotStore(Protocol):
    """Where a :class:`~toolcrib.index.snapshots.StoredIndex` keeps its snapshot.

    Implementations: :class:`FileSnapshots` (a directory, as ``[index] path``) and
    :class:`toolcrib.index.snapshots.PgSnapshots` (a row of ``index_snapshots`` in PostgreSQL).
    """

    @property
    def where(self) -> str:
        """Where the snapshot lives, for log lines and errors (no credentials)."""
        ...

    def load(self) -> Loaded | None:
        """The stored snapshot; None when nothing is stored. :class:`CorruptIndex` when what is
        stored is damaged, partial or foreign (checksums are verified);
        :class:`~toolcrib.errors.IndexError_` when the store cannot be read at all."""
        ...

    def save(self, snapshot: Snapshot, *, model_id: str, fingerprint: str) -> None:
        """Replace the stored snapshot atomically (a reader sees the old or the new one, whole);
        :class:`~toolcrib.errors.IndexError_` when the store cannot be written."""
        ...


@dataclass(frozen=True)
class FileSnapshots:
    """A :class:`SnapshotStore` in one directory (``vectors.faiss``, ``records.json``, ``meta.json``)."""

    path: Path

    @property
    def where(self) -> str:
        return str(self.path)

    def load(self) -> Loaded | None:
        return load(self.path) if exists(self.path) else None

    def save(self, snapshot: Snapshot, *, model_id: str, fingerprint: str) -> None:
        save(self.path, snapshot, model_id=model_id, fingerprint=fingerprint)
