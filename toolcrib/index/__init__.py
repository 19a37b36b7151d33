"""Tool-description index: embedder, FAISS store, BM25, hybrid search, persistence."""
