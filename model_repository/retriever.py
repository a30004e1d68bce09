"""Search's stage 1: one checked request's filters and vectors in, its candidate catalog rows out.

    QUERY_EMBEDDING [1, D], USER_HISTORY_IDS [1, H], TOP_K [1, 1], CATEGORY [1, 1], BRANDS [1, n],
    EXCLUDE_BRANDS [1, m], PRICE_RANGE [1, 2], EXCLUDE_IDS [1, e]
        -> Candidates: rows [N] (PAD_ROW past the last match), user vector [1, D], top_k

N = ServingLimits.retrieval_depth(has a query), at most the catalog size. The search vector is the
query embedding blended with the user vector (aisle.retrieval.retrieval_vectors); with neither,
the most popular allowed items are the candidates. Filters act inside retrieval (a filtered-out
item never takes a slot). Every check fails with InvalidInput naming the tensor: counts over the
ServingLimits, TOP_K outside 1..max_results, unknown history ids, negative excluded ids, min price
above max, a category or brand the catalog does not have (with the closest names). An excluded id
the catalog does not hold excludes nothing (it may have been delisted already).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aisle.model_repository.batching import Tensors
from aisle.model_repository.catalog_store import CatalogStore
from aisle.model_repository.context import ModelContext
from aisle.model_repository.errors import InvalidInput
from aisle.model_repository.user_profile import user_embeddings
from aisle.model_repository.validation import check_count, decode_texts, history_rows
from aisle.retrieval import (
    ATTRIBUTES_FILE,
    INDEX_FILE,
    FilterError,
    Filters,
    IndexParams,
    ItemAttributes,
    Popularity,
    filter_mask,
    has_query,
    load_index,
    retrieval_vectors,
)
from aisle.retrieval.gpu import CPU, place_index
from aisle.retrieval.index import RetrievalIndex
from aisle.schema import (
    BRANDS,
    CATEGORY,
    EXCLUDE_BRANDS,
    EXCLUDE_IDS,
    INDEX_DEVICE_PARAMETER,
    PRICE_RANGE,
    QUERY_EMBEDDING,
    TOP_K,
    ServingLimits,
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


@dataclass(frozen=True)
class Candidates:
    """One request after stage 1: what stage 2 scores, and how many results it keeps."""

    rows: np.ndarray  # [N] catalog rows, best retrieval score first, PAD_ROW past the last match
    user: np.ndarray  # [1, D] the user vector (zero without history)
    query: np.ndarray  # [1, D] the query embedding (zero without a query)
    top_k: int


class Retriever:
    """A search request -> its best catalog candidates under its filters."""

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

    @classmethod
    def from_context(cls, context: ModelContext) -> Retriever:
        store = CatalogStore.from_context(context)
        params = IndexParams.from_dict(context.manifest.index) if context.manifest.index else IndexParams()
        embeddings = store.catalog.embeddings
        index = load_index(store.directory / INDEX_FILE, embeddings, params)
        index = place_index(index, embeddings, context.parameters.get(INDEX_DEVICE_PARAMETER, CPU))
        attributes = ItemAttributes.load(store.directory / ATTRIBUTES_FILE)
        return cls(store, attributes, index, context.schema.limits)

    def depth(self, with_query: bool) -> int:
        """Candidates for a request with or without a query, at most the catalog."""
        return min(self.limits.retrieval_depth(with_query), len(self.store.catalog.item_ids))

    def check(self, request: Tensors) -> Tensors:
        """The request's tensors checked and decoded (InvalidInput names the first bad one)."""
        return {
            "query": request[QUERY_EMBEDDING],
            "history": history_rows(request, self.store.rows, self.limits.max_history),
            "top_k": check_top_k(request, self.limits.max_results),
            "mask": request_mask(request, self.attributes, self.limits),
        }

    def retrieve(self, batch: Sequence[Tensors]) -> list[Candidates]:
        """Stage 1 for a dynamic batch of checked requests, in order.

        Requests that search with a vector and share a depth and whether they filter go to the
        index in one call (a filtered group is then searched query by query inside it, each with
        its own mask); the rest take the most popular allowed items.
        """
        if not batch:  # every request of the dynamic batch failed its checks
            return []
        queries = np.concatenate([checked["query"] for checked in batch])
        users = np.concatenate(
            [user_embeddings(self.store.catalog, checked["history"], self.limits.history_decay) for checked in batch]
        )
        vectors, has_vector = retrieval_vectors(queries, users)
        with_query = has_query(queries)
        rows: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(batch)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, checked in enumerate(batch):
            depth = self.depth(bool(with_query[i]))
            if has_vector[i]:
                groups.setdefault((depth, checked["mask"] is None), []).append(i)
            else:
                rows[i] = self.popularity.top(depth, checked["mask"])[0]
        for (depth, unfiltered), members in groups.items():
            mask = None if unfiltered else np.stack([batch[i]["mask"] for i in members])
            found, _ = self.index.search(vectors[members], depth, mask)
            for i, found_rows in zip(members, found):
                rows[i] = found_rows
        return [
            Candidates(rows[i], users[i : i + 1], checked["query"], int(checked["top_k"].reshape(-1)[0]))
            for i, checked in enumerate(batch)
        ]
