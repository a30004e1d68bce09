"""The select_results model, search's last step: the TOP_K best real candidates, best first.

    CANDIDATE_SCORES [B, N], CANDIDATE_IDS [B, N], TOP_K [B, 1] -> ITEM_IDS [B, k], SCORES [B, k]

k = min(TOP_K, real candidates): padding rows (CANDIDATE_IDS -1, from a narrow filter) never come
back, so a filter that matches nothing returns an empty result. Ties keep retrieval's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aisle.model_repository.batching import Outcome, Tensors
from aisle.model_repository.context import ModelContext
from aisle.retrieval import PAD_ROW
from aisle.schema import CANDIDATE_IDS, CANDIDATE_SCORES, ITEM_IDS, SCORES, TOP_K


def best_first(scores: np.ndarray, ids: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top_k (id, score) pairs of real candidates, by descending score (stable)."""
    real = np.flatnonzero(ids != PAD_ROW)
    order = real[np.argsort(-scores[real], kind="stable")[:top_k]]
    return ids[order], scores[order]


class SelectResults:
    """Per request (inputs were checked by the retriever): sort, cut, drop padding."""

    @classmethod
    def from_context(cls, context: ModelContext) -> SelectResults:
        return cls()

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for request in requests:
            ids, scores = best_first(
                request[CANDIDATE_SCORES][0], request[CANDIDATE_IDS][0], int(request[TOP_K].reshape(-1)[0])
            )
            outcomes.append({ITEM_IDS: ids[None], SCORES: scores[None].astype(np.float32)})
        return outcomes
