"""The item store model: CANDIDATE_IDS [B, N] -> ITEM_EMBEDDINGS [B, N, D], ITEM_FEATURES [B, N, F].

It serves the catalog the renderer computed with the item tower (item_store/1/catalog.npz), so a
ranking request carries ids, never embeddings. Every id is checked: negative, unknown, or more
of them than the declared maximum is INVALID_ARGUMENT naming the tensor, the position and the value.
"""

from __future__ import annotations

from collections.abc import Sequence

from aisle.export.repo_format import Catalog
from aisle.model_repository.batching import Outcome, Tensors, merge, validate_each
from aisle.model_repository.context import ModelContext
from aisle.model_repository.validation import CatalogIndex, catalog_path, check_count
from aisle.schema import CANDIDATE_IDS, ITEM_EMBEDDINGS, ITEM_FEATURES_TENSOR


class ItemStore:
    """Candidate ids -> their catalog embeddings and raw features."""

    def __init__(self, catalog: Catalog, max_candidates: int) -> None:
        self.catalog = catalog
        self.index = CatalogIndex(catalog.item_ids)
        self.max_candidates = max_candidates

    @classmethod
    def from_context(cls, context: ModelContext) -> ItemStore:
        return cls(Catalog.load(catalog_path(context)), context.schema.max_candidates)

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes, valid, rows = validate_each(requests, self._rows)
        catalog = self.catalog
        # A gather is memory-bound: one per request costs the same as one over the stacked batch.
        results = [
            {ITEM_EMBEDDINGS: catalog.embeddings[r["rows"]], ITEM_FEATURES_TENSOR: catalog.features[r["rows"]]}
            for r in rows
        ]
        return merge(outcomes, valid, results)

    def _rows(self, request: Tensors) -> Tensors:
        ids = request[CANDIDATE_IDS]
        check_count(ids, CANDIDATE_IDS, self.max_candidates, "max_candidates", "candidates")
        return {"rows": self.index.rows(ids, CANDIDATE_IDS)}
