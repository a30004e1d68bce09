"""The user profile model: USER_HISTORY_IDS [B, H] -> USER_EMBEDDING [B, D] (rank_cold's user vector;
rank's comes from the item store, with the same function).

The user vector is aisle.modeling.user.user_vector over the catalog embeddings of the history,
the very function training used, so serving cannot drift from what the fusion head learned.
An empty history (H = 0) is the zero vector: "no user signal", which the head was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aisle.export.repo_format import Catalog
from aisle.model_repository.batching import Outcome, Tensors, merge, validate_each
from aisle.model_repository.catalog_store import CatalogStore
from aisle.model_repository.context import ModelContext
from aisle.model_repository.validation import CatalogIndex, history_rows
from aisle.modeling.user import user_vector
from aisle.schema import USER_EMBEDDING


class UserProfile:
    """History ids (oldest first) -> recency-weighted mean of their item embeddings."""

    def __init__(self, catalog: Catalog, max_history: int, decay: float) -> None:
        self.catalog = catalog
        self.index = CatalogIndex.of(catalog)
        self.max_history = max_history
        self.decay = decay

    @classmethod
    def from_context(cls, context: ModelContext) -> UserProfile:
        schema = context.schema
        catalog = CatalogStore.from_context(context).catalog
        return cls(catalog, schema.limits.max_history, schema.limits.history_decay)

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes, valid, rows = validate_each(requests, self._rows)
        results = [{USER_EMBEDDING: user_embeddings(self.catalog, r["rows"], self.decay)} for r in rows]
        return merge(outcomes, valid, results)

    def _rows(self, request: Tensors) -> Tensors:
        return {"rows": history_rows(request, self.index, self.max_history)}


def user_embeddings(catalog: Catalog, rows: np.ndarray, decay: float) -> np.ndarray:
    """[B, H] history rows of B histories (oldest first, CatalogIndex.history_rows) -> [B, D] user vectors."""
    if not len(rows):
        return np.zeros((0, catalog.dim), np.float32)
    return np.stack([user_vector(catalog.history_embeddings(user), decay) for user in rows])
