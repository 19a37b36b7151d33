"""The offline MiniLM's ONNX session, built by toolcrib so its threads do not spin.

fastembed builds its ``InferenceSession`` with onnxruntime's defaults, among them intra-op threads
that *spin* while they wait for work: with two threads on a 2-core machine the second one burned
the CPU the event loop needs (12.8 vs 7.8 ms of CPU per query embedding), so the index ran the
model on one thread and a query took ~1.5x the wall time two threads need. :class:`OnnxEncoder`
builds the session with :data:`INTRA_OP_THREADS` threads that sleep when idle
(``session.intra_op.allow_spinning = 0``, onnxruntime's thread-management guide): a short query on
2 threads takes ~0.65x the wall time of 1 thread for ~1.15x its CPU. One session serves documents
and queries (a second session of this model costs ~100 MB: its int8 weights are dequantised to
float32 when the graph is optimised).

Tokenisation (fastembed's own tokenizer loader), mean pooling (float64 accumulation) and L2
normalisation follow fastembed's ``PooledNormalizedEmbedding`` step for step, so the vectors are the
ones fastembed computes from the same model file (``tests/index/test_onnx_encoder.py``): stored
indexes stay valid and the embedder's fingerprint does not change.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

#: Intra-op threads of the offline model's session (the calling thread counts as one).
INTRA_OP_THREADS = 2

Vectors = npt.NDArray[np.float32]


class OnnxEncoder:
    """Mean-pooled, L2-normalised sentence vectors from a BERT-style ONNX model directory.

    ``model_dir`` holds ``model.onnx`` and the tokenizer files (``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json``); tokenizer settings are read by
    fastembed's own loader so truncation and padding match it. :meth:`encode` takes a batch of
    texts and returns ``(len(texts), dim)`` float32 unit rows. Thread-safe: onnxruntime sessions
    accept concurrent ``run`` calls; the tokenizer is used under a lock (it holds padding state).
    """

    def __init__(self, model_dir: Path, *, threads: int = INTRA_OP_THREADS) -> None:
        import onnxruntime as ort
        from fastembed.common.preprocessor_utils import load_tokenizer

        self._tokenizer, _ = load_tokenizer(model_dir)
        self._tokenizer_lock = threading.Lock()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # A waiting pool thread sleeps instead of spinning (onnxruntime session config key).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(model_dir / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.threads = max(1, threads)

    def encode(self, texts: Sequence[str]) -> Vectors:
        """``(len(texts), dim)`` float32 unit rows, in input order, padded to the batch's longest text."""
        with self._tokenizer_lock:
            encoded = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feed: dict[str, Any] = {"input_ids": ids}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = mask
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feed)[0]
        summed = np.sum(hidden, axis=1, where=mask[:, :, np.newaxis].astype(bool), dtype=np.float64)
        pooled = summed / np.maximum(np.sum(mask, axis=1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.asarray(pooled / norms, dtype=hidden.dtype).astype(np.float32, copy=False)
