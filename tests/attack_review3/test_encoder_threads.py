"""Attack review 3: the offline model's session under concurrent searches (the gateway embeds queries
in worker threads). Batches of different lengths from several threads at once (the tokenizer pads
each batch to its longest text) must give the vectors each batch gives alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from toolcrib.index.embedder import prepare_offline_model_dir
from toolcrib.index.onnx_encoder import OnnxEncoder

TEXTS = [
    "what time is it",
    "send an email to my team about the release tomorrow morning " * 3,
    "",
    "日本語でファイルを検索する",
    "word " * 300,
    "git log of the last week",
]
BATCHES = [TEXTS[i : i + n] for n in (1, 2, 3) for i in range(len(TEXTS) - n + 1)]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> OnnxEncoder:
    return OnnxEncoder(prepare_offline_model_dir(tmp_path_factory.mktemp("model"))[0])


def test_concurrent_batches_give_the_vectors_they_give_alone(encoder: OnnxEncoder) -> None:
    alone = [encoder.encode(b) for b in BATCHES]
    work = [i for _ in range(6) for i in range(len(BATCHES))]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda i: (i, encoder.encode(BATCHES[i])), work))
    for i, vectors in got:
        assert np.array_equal(vectors, alone[i]), BATCHES[i]
