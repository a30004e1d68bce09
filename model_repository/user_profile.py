"""The user profile model: USER_HISTORY_IDS [B, H] -> USER_EMBEDDING [B, D].

The user vector is aisle.modeling.user.user_vector over the catalog embeddings of the history,
the very function training used, so serving cannot drift from what the fusion head learned.
An empty history (H = 0) is the zero vector: "no user signal", which the head was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aisle.export.repo_format import Catalog
from aisle.model_repository.batching import Outcome, Tensors, merge, validate_each
from aisle.model_repository.context import ModelContext
from aisle.model_repository.validation import CatalogIndex, catalog_path, check_count
from aisle.modeling.user import user_vector
from aisle.schema import USER_EMBEDDING, USER_HISTORY_IDS


class UserProfile:
    """History ids (oldest first) -> recency-weighted mean of their item embeddings."""

    def __init__(self, catalog: Catalog, max_history: int, decay: float) -> None:
        self.catalog = catalog
        self.index = CatalogIndex(catalog.item_ids)
        self.max_history = max_history
        self.decay = decay

    @classmethod
    def from_context(cls, context: ModelContext) -> UserProfile:
        schema = context.schema
        return cls(Catalog.load(catalog_path(context)), schema.max_history, schema.history_decay)

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes, valid, rows = validate_each(requests, self._rows)
        embeddings = self.catalog.embeddings
        results = [
            {USER_EMBEDDING: np.stack([user_vector(embeddings[user], self.decay) for user in r["rows"]])}
            if len(r["rows"])
            else {USER_EMBEDDING: np.zeros((0, self.catalog.dim), np.float32)}
            for r in rows
        ]
        return merge(outcomes, valid, results)

    def _rows(self, request: Tensors) -> Tensors:
        ids = request[USER_HISTORY_IDS]
        check_count(ids, USER_HISTORY_IDS, self.max_history, "max_history", "history items")
        return {"rows": self.index.rows(ids, USER_HISTORY_IDS)}
