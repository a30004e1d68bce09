"""The user vector: a recency-weighted mean of the item embeddings a user interacted with.

numpy only: the same function builds user vectors for training and inside Triton's item store,
so serving can never drift from what the fusion head was trained on.
"""

from __future__ import annotations

import numpy as np


def recency_weights(length: int, decay: float) -> np.ndarray:
    """Weights for a chronological history (oldest first): the k-th most recent weighs decay**k."""
    return decay ** np.arange(length - 1, -1, -1, dtype=np.float64)


def user_vector(history_embeddings: np.ndarray, decay: float) -> np.ndarray:
    """[H, D] embeddings of a user's last H items, oldest first -> [D]; zeros when H == 0."""
    length, dim = history_embeddings.shape
    if length == 0:
        return np.zeros(dim, dtype=np.float32)
    weights = recency_weights(length, decay)
    # einsum, not `@`: a [H] x [H, D] product through a multi-threaded BLAS costs milliseconds
    # of thread wake-ups on a busy CPU; einsum's own loop takes microseconds.
    weighted = np.einsum("h,hd->d", weights, history_embeddings.astype(np.float64)) / weights.sum()
    return weighted.astype(np.float32)
