"""The retriever model, search's stage 1: the request's filters and vectors in, retrieval_depth
candidates from the whole catalog out, with everything the fusion head needs about them.

    QUERY_EMBEDDING [B, D], USER_HISTORY_IDS [B, H], TOP_K [B, 1], CATEGORY [B, 1], BRANDS [B, n],
    EXCLUDE_BRANDS [B, m], PRICE_RANGE [B, 2], EXCLUDE_IDS [B, e]
        -> CANDIDATE_IDS [B, N], ITEM_EMBEDDINGS [B, N, D], ITEM_FEATURES [B, N, F], USER_EMBEDDING [B, D],
           VALID_TOP_K [B, 1]

N = min(retrieval_depth, catalog size) for every request, so the head batches requests; rows past
the last match (a narrow filter) carry CANDIDATE_IDS -1, zero embeddings and unknown features, and
select_results drops them. The search vector is the query embedding blended with the user vector
(aisle.retrieval.retrieval_vectors); with neither, the most popular allowed items are the
candidates. Filters act inside retrieval (a filtered-out item never takes a slot). Every check
fails with INVALID_ARGUMENT naming the tensor: counts over the ServingLimits, TOP_K outside
1..max_results, unknown history ids, negative excluded ids, min price above max, a category or brand
the catalog does not have (with the closest names). An excluded id the catalog does not hold
excludes nothing (it may have been delisted already).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from aisle.model_repository.batching import Outcome, Tensors, merge, validate_each
from aisle.model_repository.catalog_store import CatalogStore
from aisle.model_repository.context import ModelContext
from aisle.model_repository.errors import InvalidInput
from aisle.model_repository.user_profile import user_embeddings
from aisle.model_repository.validation import check_count, decode_texts, history_rows
from aisle.retrieval import (
    ATTRIBUTES_FILE,
    INDEX_FILE,
    PAD_ROW,
    FilterError,
    Filters,
    IndexParams,
    ItemAttributes,
    Popularity,
    filter_mask,
    load_index,
    retrieval_vectors,
)
from aisle.retrieval.index import RetrievalIndex
from aisle.schema import (
    BRANDS,
    CANDIDATE_IDS,
    CATEGORY,
    EXCLUDE_BRANDS,
    EXCLUDE_IDS,
    ITEM_EMBEDDINGS,
    ITEM_FEATURES_TENSOR,
    PRICE_RANGE,
    QUERY_EMBEDDING,
    TOP_K,
    USER_EMBEDDING,
    ServingLimits,
    validated,
)

#: The tensor that carries each Filters field, so a FilterError names what the client sent.
FILTER_TENSORS = {
    "category": CATEGORY,
    "brands": BRANDS,
    "exclude_brands": EXCLUDE_BRANDS,
    "min_price": PRICE_RANGE,
    "max_price": PRICE_RANGE,
    "exclude_ids": EXCLUDE_IDS,
}


def request_mask(request: Tensors, attributes: ItemAttributes, limits: ServingLimits) -> np.ndarray | None:
    """The catalog rows one request's filter tensors allow (None: no filter); InvalidInput names the
    tensor of any bad value, including a category or brand the catalog does not have."""
    for tensor in (BRANDS, EXCLUDE_BRANDS):
        check_count(request[tensor], tensor, limits.max_filter_brands, "max_filter_brands", "brands")
    check_count(request[EXCLUDE_IDS], EXCLUDE_IDS, limits.max_excluded_ids, "max_excluded_ids", "excluded ids")
    low, high = (float(v) for v in request[PRICE_RANGE].reshape(-1))
    excluded = request[EXCLUDE_IDS].reshape(-1)
    if len(excluded) and excluded.min() < 0:
        raise InvalidInput(EXCLUDE_IDS, f"{int(excluded.min())} is negative; item ids are non-negative integers")
    (category,) = decode_texts(request[CATEGORY], CATEGORY)
    try:
        filters = Filters(
            category=category,
            brands=tuple(decode_texts(request[BRANDS], BRANDS)),
            exclude_brands=tuple(decode_texts(request[EXCLUDE_BRANDS], EXCLUDE_BRANDS)),
            min_price=None if math.isnan(low) else low,
            max_price=None if math.isnan(high) else high,
            exclude_ids=tuple(int(i) for i in excluded),
        )
        return filter_mask(filters, attributes, max_exclude_ids=limits.max_excluded_ids)
    except FilterError as e:
        raise InvalidInput(FILTER_TENSORS.get(e.field, e.field), str(e)) from e


def check_top_k(request: Tensors, max_results: int) -> np.ndarray:
    top_k = int(request[TOP_K].reshape(-1)[0])
    if not 1 <= top_k <= max_results:
        raise InvalidInput(TOP_K, f"{top_k} results asked; must be 1..max_results={max_results}")
    return request[TOP_K]


class Retriever:
    """A search request -> its retrieval_depth best catalog candidates under its filters."""

    def __init__(
        self, store: CatalogStore, attributes: ItemAttributes, index: RetrievalIndex, limits: ServingLimits
    ) -> None:
        catalog = store.catalog
        if not np.array_equal(attributes.item_ids, catalog.item_ids):
            raise ValueError(f"{store.directory}: {ATTRIBUTES_FILE} rows differ from the catalog's item ids")
        self.store = store
        self.attributes = attributes
        self.index = index
        self.limits = limits
        self.popularity = Popularity(catalog.features)
        self.depth = min(limits.retrieval_depth, len(catalog.item_ids))

    @classmethod
    def from_context(cls, context: ModelContext) -> Retriever:
        store = CatalogStore.from_context(context)
        params = IndexParams.from_dict(context.manifest.index) if context.manifest.index else IndexParams()
        index = load_index(store.directory / INDEX_FILE, store.catalog.embeddings, params)
        attributes = ItemAttributes.load(store.directory / ATTRIBUTES_FILE)
        return cls(store, attributes, index, context.schema.limits)

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes, valid, checked = validate_each(requests, self._check)
        return merge(outcomes, valid, [self._retrieve(r) for r in checked])

    def _check(self, request: Tensors) -> Tensors:
        mask = request_mask(request, self.attributes, self.limits)
        return {
            "query": request[QUERY_EMBEDDING],
            "history": history_rows(request, self.store.rows, self.limits.max_history),
            "top_k": check_top_k(request, self.limits.max_results),
            "mask": mask,
        }

    def candidate_rows(self, query: np.ndarray, user: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """[N] catalog rows to rank (PAD_ROW past the last match) for one request's vectors."""
        vectors, has_vector = retrieval_vectors(query, user)
        if has_vector[0]:
            rows, _ = self.index.search(vectors, self.depth, mask)
            return rows[0]
        rows, _ = self.popularity.top(self.depth, mask)
        return rows

    def _retrieve(self, request: Tensors) -> Tensors:
        catalog = self.store.catalog
        user = user_embeddings(catalog, request["history"], self.limits.history_decay)
        rows = self.candidate_rows(request["query"], user, request["mask"])
        real = rows != PAD_ROW
        embeddings = np.zeros((self.depth, catalog.dim), np.float32)
        features = np.full((self.depth, catalog.features.shape[1]), np.nan, np.float32)
        embeddings[real] = catalog.embeddings[rows[real]]
        features[real] = catalog.features[rows[real]]
        return {
            CANDIDATE_IDS: np.where(real, catalog.item_ids[np.where(real, rows, 0)], PAD_ROW)[None],
            ITEM_EMBEDDINGS: embeddings[None],
            ITEM_FEATURES_TENSOR: features[None],
            USER_EMBEDDING: user,
            validated(TOP_K): request["top_k"],
        }
