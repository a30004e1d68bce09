"""The item store model, rank's first step: the whole request in, the catalog rows it names out.

    QUERY [B, 1], CANDIDATE_IDS [B, N], USER_HISTORY_IDS [B, H]
        -> VALID_QUERY [B, 1], ITEM_EMBEDDINGS [B, N, D], ITEM_FEATURES [B, N, F], USER_EMBEDDING [B, D]

It serves the catalog the renderer computed with the item tower (item_store/1/catalog.npz), so a
ranking request carries ids, never embeddings. Why one step does the checks, the candidate lookup
and the user vector: on the python backend every step is a stub hop with its own queue, and these
three read the same catalog; as separate models they cost rank two more hops per request. Being
first, it also checks QUERY (UTF-8) before the query branch starts and passes it on as VALID_QUERY:
a request that fails does so before any sibling step runs (see aisle.model_repository.validation).
The query passed on is cut to its byte limit (cut_texts), so an oversized one is not copied on.
Every id is checked: negative, unknown, or more of them than the declared maximum is
INVALID_ARGUMENT naming the tensor, the position and the value.
"""

from __future__ import annotations

from collections.abc import Sequence

from aisle.export.repo_format import Catalog
from aisle.model_repository.batching import Outcome, Tensors, merge, validate_each
from aisle.model_repository.catalog_store import CatalogStore
from aisle.model_repository.context import ModelContext
from aisle.model_repository.user_profile import user_embeddings
from aisle.model_repository.validation import CatalogIndex, candidate_rows, cut_texts, history_rows
from aisle.schema import ITEM_EMBEDDINGS, ITEM_FEATURES_TENSOR, QUERY, USER_EMBEDDING, Schema, validated


class ItemStore:
    """A rank request -> its checked query, candidates' embeddings and raw features, user vector."""

    def __init__(self, catalog: Catalog, schema: Schema) -> None:
        self.catalog = catalog
        self.index = CatalogIndex.of(catalog)
        self.schema = schema

    @classmethod
    def from_context(cls, context: ModelContext) -> ItemStore:
        return cls(CatalogStore.from_context(context).catalog, context.schema)

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes, valid, checked = validate_each(requests, self._check)
        catalog = self.catalog
        # A gather is memory-bound: one per request costs the same as one over the stacked batch.
        results = [
            {
                validated(QUERY): r[QUERY],
                ITEM_EMBEDDINGS: catalog.embeddings[r["candidates"]],
                ITEM_FEATURES_TENSOR: catalog.features[r["candidates"]],
                USER_EMBEDDING: user_embeddings(catalog, r["history"], self.schema.limits.history_decay),
            }
            for r in checked
        ]
        return merge(outcomes, valid, results)

    def _check(self, request: Tensors) -> Tensors:
        return {
            QUERY: cut_texts(request[QUERY], QUERY, self.schema.limits.max_query_bytes),
            "candidates": candidate_rows(request, self.index, self.schema.limits.max_candidates),
            "history": history_rows(request, self.index, self.schema.limits.max_history),
        }
