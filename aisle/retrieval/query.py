"""What a request retrieves with: its query and user vectors blended, or popularity when it has neither.

Stage 1 only has to put the right items among the N candidates; the fusion head (stage 2) weighs
query against user per item. So the blend is deliberately simple, one declared weight:
    v = normalise(normalise(q) + USER_WEIGHT * normalise(u))
- query and history: the query leads (it is what the shopper asked for now), the user vector
  tilts the neighbourhood towards their taste;
- query only: v = q; history only (recommendation): v = u, the user vector alone;
- neither (an empty query embeds to the zero vector, an empty history gives a zero user vector):
  no direction to search in, so the caller falls back to the most popular allowed items.
Vectorised over a batch: a zero part contributes nothing, so one formula covers every case.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from aisle.retrieval.attributes import POPULARITY_COLUMN
from aisle.retrieval.index import PAD_ROW, PAD_SCORE

#: Weight of the (normalised) user vector next to the (normalised) query vector in retrieval. Not
#: tuned yet: the whole-catalog evaluation should sweep it (issue 12, quality section).
USER_WEIGHT = 0.5
#: Vectors with a norm at or below this count as absent (the zero vector of an empty query/history).
ZERO_NORM = 1e-6


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.where(norms > ZERO_NORM, vectors / np.maximum(norms, ZERO_NORM), 0.0).astype(np.float32)


def has_query(query_embeddings: np.ndarray) -> np.ndarray:
    """[B] bool: which requests have a query (an empty query embeds to the zero vector)."""
    return np.linalg.norm(query_embeddings, axis=1) > ZERO_NORM


def retrieval_vectors(
    query_embeddings: np.ndarray, user_embeddings: np.ndarray, *, user_weight: float = USER_WEIGHT
) -> tuple[np.ndarray, np.ndarray]:
    """Per request the unit vector to search with, and whether it has one ([B, D] float32, [B] bool).

    Rows of `has_vector` that are False (zero query and zero user vector) must use `popular_rows`.
    """
    blended = _normalise(query_embeddings) + np.float32(user_weight) * _normalise(user_embeddings)
    has_vector = np.linalg.norm(blended, axis=1) > ZERO_NORM
    return _normalise(blended), has_vector


class Popularity:
    """The catalog rows by descending popularity (schema.ITEM_FEATURES column), sorted once, when
    first asked: only requests with neither query nor history need it, and a catalog reader builds
    one per catalog version at the switch, where the sort (109 ms on 1,000,000 items) would delay
    the batch that switched.

    NaN popularity ranks last; ties keep row order. `top` is then one gather per mask.
    """

    def __init__(self, features: np.ndarray) -> None:
        self.features = features

    @cached_property
    def order(self) -> np.ndarray:
        popularity = np.nan_to_num(self.features[:, POPULARITY_COLUMN].astype(np.float64), nan=-np.inf)
        return np.argsort(-popularity, kind="stable")

    @cached_property
    def scores(self) -> np.ndarray:
        return self.features[self.order, POPULARITY_COLUMN].astype(np.float32)

    def top(self, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k most popular allowed rows and their popularity, padded like an index's search ([k])."""
        rows = np.full(k, PAD_ROW, dtype=np.int64)
        scores = np.full(k, PAD_SCORE, dtype=np.float32)
        keep = np.arange(min(k, len(self.order))) if mask is None else np.flatnonzero(mask[self.order])[:k]
        rows[: len(keep)] = self.order[keep]
        scores[: len(keep)] = self.scores[keep]
        return rows, scores
