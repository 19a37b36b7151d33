"""Tool-description index: embedder, FAISS store, BM25, hybrid search, persistence.

Entry points: :class:`toolcrib.index.search.ToolIndex` (sync, search, persistence),
:class:`toolcrib.index.documents.ToolDoc` (what is indexed) and
:func:`toolcrib.index.embedder.load_embedder` (the offline MiniLM default, any fastembed model
online, or ``"hashing"``). Importing this package sets ``ORT_DISABLE_TELEMETRY=1`` (unless already
set) before onnxruntime loads, because onnxruntime otherwise tries to reach Microsoft's telemetry
endpoint.
"""

import os as _os

_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
