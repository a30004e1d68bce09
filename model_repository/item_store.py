"""The item store model: CANDIDATE_IDS [B, N] -> ITEM_EMBEDDINGS [B, N, D], ITEM_FEATURES [B, N, F].

It serves the catalog the renderer computed with the item tower (item_store/1/catalog.npz), so a
ranking request carries ids, never embeddings. Every id is checked: negative, unknown, or more
of them than the declared maximum is INVALID_ARGUMENT naming the tensor, the position and the value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aisle.export.repo_format import CATALOG_FILE, Catalog
from aisle.model_repository.batching import Outcome, Tensors, merge, validate_each
from aisle.model_repository.context import ModelContext
from aisle.model_repository.errors import InvalidInput
from aisle.schema import CANDIDATE_IDS, ITEM_EMBEDDINGS, ITEM_FEATURES_TENSOR, ITEM_STORE


def catalog_path(context: ModelContext) -> str:
    """The catalog file every model reading it uses: the item store's current version."""
    return str(context.repo / ITEM_STORE / context.version_dir.name / CATALOG_FILE)


class CatalogIndex:
    """Row lookup by item id with validation; shared by the item store and the user profile."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def rows(self, ids: np.ndarray, tensor: str) -> np.ndarray:
        """Catalog rows of `ids` (any shape); InvalidInput names the first bad id and its position."""
        ids = np.asarray(ids)
        negative = np.argwhere(ids < 0)
        if len(negative):
            position = tuple(negative[0])
            raise InvalidInput(
                tensor, f"{_at(position)} = {ids[position]} is negative; item ids are non-negative integers"
            )
        known = self.catalog.item_ids
        rows = np.searchsorted(known, ids).clip(max=len(known) - 1)
        unknown = np.argwhere(known[rows] != ids)
        if len(unknown):
            position = tuple(unknown[0])
            raise InvalidInput(
                tensor,
                f"{_at(position)} = {ids[position]} is not an item of the served catalog "
                f"({len(known)} items, ids {known[0]}..{known[-1]})",
            )
        return rows


def check_count(ids: np.ndarray, tensor: str, limit: int, limit_name: str, what: str) -> None:
    """Reject a request carrying more than `limit` ids per row (the last axis)."""
    count = ids.shape[-1]
    if count > limit:
        raise InvalidInput(tensor, f"{count} {what} per request is more than {limit_name}={limit}")


def _at(position: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(p)) for p in position) + "]"


class ItemStore:
    """Candidate ids -> their catalog embeddings and raw features."""

    def __init__(self, catalog: Catalog, max_candidates: int) -> None:
        self.index = CatalogIndex(catalog)
        self.max_candidates = max_candidates

    @classmethod
    def from_context(cls, context: ModelContext) -> ItemStore:
        return cls(Catalog.load(catalog_path(context)), context.schema.max_candidates)

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes, valid, rows = validate_each(requests, self._rows)
        catalog = self.index.catalog
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
