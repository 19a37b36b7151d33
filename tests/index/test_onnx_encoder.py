"""toolcrib's own session for the offline MiniLM gives fastembed's vectors, with threads that do not spin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolcrib.index.embedder import DEFAULT_MODEL, FastEmbedEmbedder, normalize_rows, prepare_offline_model_dir
from toolcrib.index.onnx_encoder import INTRA_OP_THREADS, OnnxEncoder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_offline_model_dir(tmp_path_factory.mktemp("model"))[0]


@pytest.fixture(scope="module")
def reference(model_dir: Path):  # type: ignore[no-untyped-def]
    """fastembed's own pipeline over the same model directory (its default session options)."""
    from fastembed import TextEmbedding

    return TextEmbedding(DEFAULT_MODEL, specific_model_path=str(model_dir), threads=1)


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> OnnxEncoder:
    return OnnxEncoder(model_dir)


def fastembed_vectors(reference, texts: list[str]) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.vstack([np.asarray(v, dtype=np.float32) for v in reference.embed(texts, batch_size=len(texts))])


def test_the_session_uses_non_spinning_intra_op_threads(encoder: OnnxEncoder) -> None:
    options = encoder._session.get_session_options()
    assert options.intra_op_num_threads == INTRA_OP_THREADS == encoder.threads
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


REAL_TEXTS = [
    "what time is it in Tokyo",
    "send an email to my team about the release tomorrow morning",
    "",
    " ",
    "日本語でファイルを検索する",
    "Créer un ticket GitHub pour le bogue de connexion",
    "Get current time in a specific timezone. Args: timezone (IANA timezone name)",
    "word " * 400,  # past the 256-piece truncation
]


def test_vectors_are_fastembeds_bit_for_bit(encoder: OnnxEncoder, reference) -> None:  # type: ignore[no-untyped-def]
    for batch in ([t] for t in REAL_TEXTS):
        assert np.array_equal(encoder.encode(batch), fastembed_vectors(reference, batch))
    # a padded batch of mixed lengths
    assert np.array_equal(encoder.encode(REAL_TEXTS), fastembed_vectors(reference, REAL_TEXTS))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=120), min_size=1, max_size=4))
def test_any_text_embeds_as_fastembed_does(encoder: OnnxEncoder, reference, texts: list[str]) -> None:  # type: ignore[no-untyped-def]
    ours = encoder.encode(texts)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    assert np.array_equal(ours, fastembed_vectors(reference, texts))


def test_the_embedder_keeps_its_fingerprint_and_batching(tmp_path: Path, reference) -> None:  # type: ignore[no-untyped-def]
    """``FastEmbedEmbedder`` (length-sorted, token-budget batches) matches fastembed fed the same batches."""
    embedder = FastEmbedEmbedder(cache_dir=tmp_path)
    assert embedder.threads == INTRA_OP_THREADS
    texts = REAL_TEXTS + [f"tool number {i} reads files and folders" * (i % 5 + 1) for i in range(40)]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    expected = np.empty((len(texts), 384), dtype=np.float32)
    rows = [fastembed_vectors(reference, b) for b in embedder._batches([texts[i] for i in order])]
    expected[np.asarray(order)] = np.vstack(rows)
    assert np.array_equal(embedder.embed(texts), normalize_rows(expected))
