"""Turning dense and BM25 scores into one ranking, and several per-step rankings into one list.

The default settings per embedding model (:func:`fusion_for`) were measured on the tune half of the
benchmark datasets and reported on the other half; ``benchmarks/results/retrieval.md`` has the
comparison that picked them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.float32]

FUSION_METHODS = ("convex", "rrf")
#: Per-query rescalings of the dense scores (and of the server relevance) before a convex fusion;
#: see :func:`normalize_scores`.
NORMALIZATIONS = ("none", "median_max", "zscore")
MERGE_METHODS = ("round_robin", "max", "sum")


@dataclass(frozen=True)
class Fusion:
    """How the hybrid ranking combines dense and lexical evidence.

    ``convex``: ``w * cosine + (1 - w) * bm25 / max_bm25`` (the BM25 part is relative to the best
    lexical match of this query, so it is 0 when nothing matches and dense decides alone).
    ``rrf``: weighted reciprocal rank fusion ``w / (k + rank_dense) + (1 - w) / (k + rank_bm25)``.
    ``pool`` candidates are taken from each side before fusing. ``merge`` combines the rankings of
    several queries in one call (see :func:`merge_rankings`).

    ``normalize`` (convex only): how the cosines are rescaled per query over the candidate pool
    before weighting (:func:`normalize_scores`): ``none`` keeps the raw cosine, whose spread depends
    on the model (MiniLM's cosines of one query spread over ~0.5, multilingual-e5's over ~0.1, so a
    fixed weight over raw cosine lets BM25 decide alone with e5); ``median_max`` maps the pool's
    median to 0 and its best to 1, ``zscore`` uses the pool's mean and standard deviation; both make
    ``dense_weight`` mean the same for any model. The server relevance is rescaled the same way
    over the servers.

    Server relevance (issue 14; hybrid ranking only): ``server_weight`` ``s`` adds
    ``s * server`` to a tool's score, ``server`` being its server's relevance to the query
    (:meth:`~toolcrib.index.store.ServerVectors.server_scores`: cosine with the server's document,
    mixed with the mean cosine of its tools by ``server_centroid``); the tools of the
    ``server_expand`` most relevant servers join the candidate pool (at most ``pool`` of them), so a
    tool whose own text never names its server's domain can still be found. ``server_lexical`` ``m``
    mixes BM25 over the server documents into that relevance: ``(1 - m) * dense + m * bm25 /
    max_bm25`` (:meth:`~toolcrib.index.store.ServerVectors.lexical_scores`). ``generated_weight``
    ``g`` adds ``g * cosine`` with the tool's generated document
    (:func:`~toolcrib.index.documents.generated_text`) when the index embeds them. Defaults chosen on
    the tune split (``benchmarks/results/retrieval.md``).
    """

    method: str = "convex"
    dense_weight: float = 0.85
    rrf_k: float = 60.0
    pool: int = 64
    merge: str = "round_robin"
    server_weight: float = 0.2
    server_centroid: float = 0.0
    server_expand: int = 0
    generated_weight: float = 0.0
    normalize: str = "none"
    server_lexical: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"fusion method must be one of {FUSION_METHODS}, not {self.method!r}")
        if self.merge not in MERGE_METHODS:
            raise ValueError(f"merge must be one of {MERGE_METHODS}, not {self.merge!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, not {self.normalize!r}")
        if not 0.0 <= self.server_lexical <= 1.0:
            raise ValueError("server_lexical must be within [0, 1]")
        if not 0.0 <= self.dense_weight <= 1.0:
            raise ValueError("dense_weight must be within [0, 1]")
        if not 0.0 <= self.server_centroid <= 1.0:
            raise ValueError("server_centroid must be within [0, 1]")
        if self.server_weight < 0 or self.generated_weight < 0 or self.server_expand < 0:
            raise ValueError("server_weight, generated_weight and server_expand must not be negative")

    @property
    def blends(self) -> bool:
        """Whether hybrid scores get terms beyond dense and lexical (server, generated)."""
        return self.server_weight > 0 or self.generated_weight > 0


#: The ranking for the default model (all-MiniLM-L6-v2): convex, 0.85 on the raw cosine, server
#: relevance 0.2 (the server weight chosen on the tune half). The re-tune of issue 14 (``python -m
#: benchmarks.retrieval --retune``, benchmarks/results/retrieval.md "Fusion re-tuned on the tune
#: half") chose :data:`MULTILINGUAL_FUSION` on the tune half for both models; on the report half it
#: was worse than this one for MiniLM on 5 of 7 slices (MetaTool multi-tool R@5 0.731 -> 0.711,
#: real-servers English R@1 0.625 -> 0.525), so MiniLM keeps this one.
DEFAULT_FUSION = Fusion()

#: The ranking for ``intfloat/multilingual-e5-small``: its cosines sit in a narrow band (about
#: 0.75-0.9), so a fixed weight over the raw cosine lets BM25 decide (hybrid R@5 0.180 on the
#: LiveMCPBench tools described in Chinese); here the cosines are rescaled per query (``zscore``)
#: before weighting 0.7, with server relevance 0.1 of which 30% is BM25 over the server documents.
MULTILINGUAL_FUSION = Fusion(dense_weight=0.7, normalize="zscore", server_weight=0.1, server_lexical=0.3)

_BY_MODEL = {"intfloat/multilingual-e5-small": MULTILINGUAL_FUSION}


def fusion_for(model_id: str) -> Fusion:
    """The default fusion for the embedding model ``model_id`` (a Hugging Face id as in ``[index]
    model``): :data:`MULTILINGUAL_FUSION` for multilingual-e5-small, :data:`DEFAULT_FUSION` otherwise."""
    return _BY_MODEL.get(model_id, DEFAULT_FUSION)


def _ranks(scores: Scores) -> Scores:
    """1-based rank of every entry, best score first (ties broken by position)."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float32)
    ranks[order] = np.arange(1, len(scores) + 1, dtype=np.float32)
    return ranks


#: Below this spread (best minus median, or standard deviation) the scores count as all equal.
_FLAT = 1e-9


def normalize_scores(scores: npt.ArrayLike, method: str) -> Scores:
    """``scores`` (one query's candidates, any finite floats) rescaled per query by ``method``.

    - ``none``: unchanged (as float32);
    - ``median_max``: ``(s - median) / (max - median)``, clipped to ``[-1, 1]``: the best is 1, the
      median 0, anything far below the median -1;
    - ``zscore``: ``tanh((s - mean) / (2 * std))`` (strictly monotone, no clipping at the top).

    Monotone (a higher score never gets a lower value) and, except for ``none``, within ``[-1, 1]``
    and never NaN or infinite: all-equal scores, a single candidate and an empty array give zeros.
    Computed in float64, returned as float32. Raises ValueError for an unknown ``method``.
    """
    values = np.asarray(scores, dtype=np.float64)
    if method == "none":
        return values.astype(np.float32)
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, not {method!r}")
    if not len(values):
        return np.zeros(0, dtype=np.float32)
    if method == "median_max":
        centre = float(np.median(values))
        spread = float(values.max()) - centre
    else:
        centre = float(values.mean())
        spread = 2.0 * float(values.std())
    if not spread > _FLAT or not np.isfinite(spread):
        return np.zeros(len(values), dtype=np.float32)
    if method == "zscore":
        return np.tanh((values - centre) / spread).astype(np.float32)
    return np.clip((values - centre) / spread, -1.0, 1.0).astype(np.float32)


def fuse(dense: Scores, lexical: Scores, fusion: Fusion = DEFAULT_FUSION) -> Scores:
    """Fused score of each candidate from its cosine (``dense``) and BM25 score (``lexical``)."""
    w = fusion.dense_weight
    if fusion.method == "rrf":
        lex_rank = _ranks(lexical)
        lex_part = np.where(lexical > 0, (1.0 - w) / (fusion.rrf_k + lex_rank), 0.0)
        return (w / (fusion.rrf_k + _ranks(dense)) + lex_part).astype(np.float32)
    top = float(lexical.max(initial=0.0))
    lex_norm = lexical / top if top > 0 else np.zeros_like(lexical)
    return (w * normalize_scores(dense, fusion.normalize) + (1.0 - w) * lex_norm).astype(np.float32)


def merge_rankings(rankings: Sequence[Sequence[tuple[int, float]]], method: str) -> list[tuple[int, float]]:
    """Merge per-query rankings of ``(row, score)`` (best first) into one deduplicated ranking.

    ``round_robin`` takes each query's best, then each query's second best, and so on, so every
    step of a multi-step task gets its top tools in before any step gets its tenth; the score
    kept is the best the tool reached. ``max`` ranks by the best score over queries, ``sum`` by
    the summed score (rewarding tools several steps need).
    """
    if len(rankings) == 1:
        return list(rankings[0])
    best: dict[int, float] = {}
    total: dict[int, float] = {}
    for ranking in rankings:
        for row, score in ranking:
            best[row] = max(best.get(row, score), score)
            total[row] = total.get(row, 0.0) + score
    if method == "max":
        return sorted(best.items(), key=lambda item: -item[1])
    if method == "sum":
        return sorted(((row, total[row]) for row in total), key=lambda item: -item[1])
    merged: list[tuple[int, float]] = []
    seen: set[int] = set()
    depth = max((len(r) for r in rankings), default=0)
    for position in range(depth):
        for ranking in rankings:
            if position < len(ranking):
                row = ranking[position][0]
                if row not in seen:
                    seen.add(row)
                    merged.append((row, best[row]))
    return merged
