"""Input checks, shared by the first steps of rank/rank_cold and the models behind them.

Why a checking first step: when a composing model fails while sibling steps of the same ensemble
request are still running, tritonserver 2.51 never releases that request (measured: the in-flight
count and memory grow with every rejected request, and shutdown waits out its drain timeout). So
rank and rank_cold check everything in one first step, before any branch starts: rank's is the
item store (it looks the ids up anyway), rank_cold's is its validator. The models behind them keep
the same checks only for clients that call them directly (no siblings there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from aisle.export.repo_format import Catalog, read_item_ids, served_catalog_dir
from aisle.model_repository.batching import Outcome, Tensors, merge, validate_each
from aisle.model_repository.context import ModelContext
from aisle.model_repository.errors import InvalidInput
from aisle.schema import (
    CANDIDATE_FEATURES,
    CANDIDATE_IDS,
    CANDIDATE_TEXTS,
    NUM_ITEM_FEATURES,
    QUERY,
    USER_EMBEDDING,
    USER_HISTORY_IDS,
    Schema,
    validated,
)


def _at(position: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(p)) for p in position) + "]"


def decode_texts(array: np.ndarray, tensor: str) -> list[str]:
    """UTF-8-decode a BYTES tensor's elements (row-major); InvalidInput names the element."""
    texts = []
    for position, value in zip(np.ndindex(array.shape), array.flat):
        if isinstance(value, str):
            texts.append(value)
            continue
        try:
            texts.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise InvalidInput(
                tensor, f"element {_at(position)} is not valid UTF-8 ({e.reason} at byte {e.start}); send UTF-8 text"
            ) from e
    return texts


def check_count(ids: np.ndarray, tensor: str, limit: int, limit_name: str, what: str) -> None:
    """Reject a request carrying more than `limit` values per row (the last axis)."""
    count = ids.shape[-1]
    if count > limit:
        raise InvalidInput(tensor, f"{count} {what} per request is more than {limit_name}={limit}")


def check_features(features: np.ndarray, texts: np.ndarray, num_features: int) -> None:
    """Candidate features must be one row of `num_features` per candidate text."""
    expected = [*texts.shape, num_features]
    if list(features.shape) != expected:
        raise InvalidInput(
            CANDIDATE_FEATURES,
            f"shape {list(features.shape)} does not match {CANDIDATE_TEXTS} shape {list(texts.shape)}: "
            f"expected {expected} (one row of {num_features} features per text)",
        )


class CatalogIndex:
    """Row lookup by item id with validation (ids ascending, as Catalog stores them)."""

    def __init__(self, item_ids: np.ndarray) -> None:
        self.item_ids = item_ids

    def rows(self, ids: np.ndarray, tensor: str) -> np.ndarray:
        """Catalog rows of `ids` (any shape); InvalidInput names the first bad id and its position."""
        ids = np.asarray(ids)
        negative = np.argwhere(ids < 0)
        if len(negative):
            position = tuple(negative[0])
            raise InvalidInput(
                tensor, f"{_at(position)} = {ids[position]} is negative; item ids are non-negative integers"
            )
        known = self.item_ids
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


def candidate_rows(request: Tensors, index: CatalogIndex, max_candidates: int) -> np.ndarray:
    """Catalog rows of a request's CANDIDATE_IDS, after checking their count and every id."""
    ids = request[CANDIDATE_IDS]
    check_count(ids, CANDIDATE_IDS, max_candidates, "max_candidates", "candidates")
    return index.rows(ids, CANDIDATE_IDS)


def history_rows(request: Tensors, index: CatalogIndex, max_history: int) -> np.ndarray:
    """Catalog rows of a request's USER_HISTORY_IDS, after checking their count and every id."""
    ids = request[USER_HISTORY_IDS]
    check_count(ids, USER_HISTORY_IDS, max_history, "max_history", "history items")
    return index.rows(ids, USER_HISTORY_IDS)


class RequestValidator:
    """Checks every input of a rank_cold request and passes it on unchanged as VALID_<name>.

    With the catalog given (a declaration with a USER_EMBEDDING output) it also returns the user
    vector of the checked history, from the same catalog version the ids were checked against.
    rank needs no validator of its own: its first step, the item store, checks the whole request.
    """

    def __init__(
        self, inputs: Sequence[str], index: CatalogIndex, schema: Schema, catalog: Catalog | None = None
    ) -> None:
        self.inputs = tuple(inputs)
        self.index = index
        self.schema = schema
        self.catalog = catalog
        checks: dict[str, Callable[[Tensors], None]] = {
            QUERY: lambda r: self._texts(r, QUERY),
            CANDIDATE_TEXTS: self._candidate_texts,
            CANDIDATE_FEATURES: lambda r: check_features(r[CANDIDATE_FEATURES], r[CANDIDATE_TEXTS], NUM_ITEM_FEATURES),
            USER_HISTORY_IDS: self._history,
        }
        unknown = set(self.inputs) - checks.keys()
        if unknown:
            raise KeyError(f"no check for input(s) {sorted(unknown)}")
        self.checks = [checks[name] for name in self.inputs]

    @classmethod
    def from_context(cls, context: ModelContext) -> RequestValidator:
        inputs = [t.name for t in context.decl.inputs]
        if USER_EMBEDDING in {t.name for t in context.decl.outputs}:
            catalog = Catalog.load(served_catalog_dir(context.repo))
            return cls(inputs, CatalogIndex(catalog.item_ids), context.schema, catalog)
        return cls(inputs, CatalogIndex(read_item_ids(served_catalog_dir(context.repo))), context.schema)

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes, valid, checked = validate_each(requests, self._check)
        return merge(outcomes, valid, checked)

    def _check(self, request: Tensors) -> Tensors:
        for check in self.checks:
            check(request)
        checked = {validated(name): request[name] for name in self.inputs}
        if self.catalog is not None:
            from aisle.model_repository.user_profile import user_embeddings

            rows = history_rows(request, self.index, self.schema.limits.max_history)
            checked[USER_EMBEDDING] = user_embeddings(self.catalog, rows, self.schema.limits.history_decay)
        return checked

    @staticmethod
    def _texts(request: Tensors, tensor: str) -> None:
        decode_texts(request[tensor], tensor)

    def _candidate_texts(self, request: Tensors) -> None:
        texts = request[CANDIDATE_TEXTS]
        check_count(texts, CANDIDATE_TEXTS, self.schema.limits.max_candidates, "max_candidates", "candidates")
        decode_texts(texts, CANDIDATE_TEXTS)

    def _history(self, request: Tensors) -> None:
        history_rows(request, self.index, self.schema.limits.max_history)
