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
from pathlib import Path

import numpy as np

from aisle.export.repo_format import Catalog, read_item_ids, read_retired_ids, served_catalog_dir
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


#: A UTF-8 character is one lead byte and at most three continuation bytes (0b10xxxxxx).
UTF8_MAX_CONTINUATION = 3


def utf8_prefix(data: bytes, max_bytes: int) -> bytes:
    """The longest prefix of `data` of at most `max_bytes` bytes that does not split a character.

    Slicing copies only the prefix, so cutting a 10 MB text costs what its first kilobytes cost.
    Bytes past the cut are never read, not even checked for UTF-8 validity.
    """
    if len(data) <= max_bytes:
        return data
    end = max_bytes
    # data[end] is the first byte left out: while it continues a character, that character
    # started inside the prefix and must be left out whole.
    while end > 0 and max_bytes - end < UTF8_MAX_CONTINUATION and data[end] & 0xC0 == 0x80:
        end -= 1
    return data[:end]


def decode_texts(array: np.ndarray, tensor: str, *, max_bytes: int | None = None) -> list[str]:
    """UTF-8-decode a BYTES tensor's elements (row-major); InvalidInput names the element.

    max_bytes: cut each element to that many bytes first (utf8_prefix), for texts that are
    tokenized (ServingLimits.max_text_bytes); None decodes whole elements (names compared exactly,
    such as filter brands, must not be cut into another valid name).
    """
    texts = []
    for position, value in zip(np.ndindex(array.shape), array.flat):
        if isinstance(value, str):
            value = value.encode("utf-8")
        data = bytes(value) if max_bytes is None else utf8_prefix(bytes(value), max_bytes)
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise InvalidInput(
                tensor, f"element {_at(position)} is not valid UTF-8 ({e.reason} at byte {e.start}); send UTF-8 text"
            ) from e
    return texts


def cut_texts(array: np.ndarray, tensor: str, max_bytes: int) -> np.ndarray:
    """A BYTES tensor with each text checked and cut to `max_bytes` (decode_texts), same shape.

    What a first step passes on: every later step then handles the cut texts, never the bytes a
    client sent past the cut (a 10 MB query is not copied through the ensemble's other hops).
    """
    texts = decode_texts(array, tensor, max_bytes=max_bytes)
    return np.array([text.encode("utf-8") for text in texts], dtype=object).reshape(array.shape)


def check_count(ids: np.ndarray, tensor: str, limit: int, limit_name: str, what: str) -> None:
    """Reject a request carrying more than `limit` values per row (the last axis)."""
    count = ids.shape[-1]
    if count > limit:
        raise InvalidInput(tensor, f"{count} {what} per request is more than {limit_name}={limit}")


def check_features(features: np.ndarray, texts: np.ndarray, num_features: int) -> None:
    """Candidate features must be one row of `num_features` per candidate text, NaN or finite.

    Infinity policy: NaN is the documented "unknown" (the head replaces it by the catalog mean);
    +-inf is refused. It is no price or rating a shop has, it is what a client's overflow or a
    division by zero produces; scoring it as unknown would hide that bug, and scoring it as a
    value turns the head's log and standardisation into inf/NaN scores.
    """
    expected = [*texts.shape, num_features]
    if list(features.shape) != expected:
        raise InvalidInput(
            CANDIDATE_FEATURES,
            f"shape {list(features.shape)} does not match {CANDIDATE_TEXTS} shape {list(texts.shape)}: "
            f"expected {expected} (one row of {num_features} features per text)",
        )
    infinite = np.argwhere(np.isinf(features))
    if len(infinite):
        position = tuple(infinite[0])
        raise InvalidInput(
            CANDIDATE_FEATURES,
            f"{_at(position)} = {features[position]} is infinite; send a finite value, or NaN for unknown",
        )


def _lookup(known: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `ids` in the ascending `known`, and where each id was found."""
    if not len(known):
        return np.zeros(ids.shape, np.int64), np.zeros(ids.shape, bool)
    rows = np.searchsorted(known, ids).clip(max=len(known) - 1)
    return rows, known[rows] == ids


class CatalogIndex:
    """Row lookup by item id with validation (ids ascending, as Catalog stores them).

    A candidate must be a served item; a history item may also be a retired one (deleted from a
    live catalog, its embedding kept: RetiredItems), whose row is N + its retired row (Catalog's
    row numbering, resolved by Catalog.history_embeddings).
    """

    def __init__(self, item_ids: np.ndarray, retired_ids: np.ndarray | None = None) -> None:
        self.item_ids = item_ids
        self.retired_ids = retired_ids if retired_ids is not None else np.zeros(0, np.int64)

    @classmethod
    def of(cls, catalog: Catalog) -> CatalogIndex:
        return cls(catalog.item_ids, catalog.retired_items.item_ids)

    @classmethod
    def load(cls, directory: Path) -> CatalogIndex:
        """Only the ids of a catalog directory (memory-mapped): what a validator needs."""
        return cls(read_item_ids(directory), read_retired_ids(directory))

    def rows(self, ids: np.ndarray, tensor: str) -> np.ndarray:
        """Catalog rows of `ids` (any shape); InvalidInput names the first bad id and its position."""
        ids = self._non_negative(ids, tensor)
        rows, served = _lookup(self.item_ids, ids)
        if not served.all():
            position = tuple(np.argwhere(~served)[0])
            _, retired = _lookup(self.retired_ids, ids[position])
            reason = "was deleted from the catalog (only user histories may name it)" if retired else self._not_an_item
            raise InvalidInput(tensor, f"{_at(position)} = {ids[position]} {reason}")
        return rows

    def history_rows(self, ids: np.ndarray, tensor: str) -> np.ndarray:
        """Rows of history ids, served or retired (N + retired row); InvalidInput names an unknown one."""
        ids = self._non_negative(ids, tensor)
        rows, served = _lookup(self.item_ids, ids)
        if served.all():
            return rows
        retired_rows, retired = _lookup(self.retired_ids, ids)
        unknown = ~(served | retired)
        if unknown.any():
            position = tuple(np.argwhere(unknown)[0])
            raise InvalidInput(tensor, f"{_at(position)} = {ids[position]} {self._not_an_item}")
        return np.where(served, rows, len(self.item_ids) + retired_rows)

    @property
    def _not_an_item(self) -> str:
        known = self.item_ids
        return f"is not an item of the served catalog ({len(known)} items, ids {known[0]}..{known[-1]})"

    @staticmethod
    def _non_negative(ids: np.ndarray, tensor: str) -> np.ndarray:
        ids = np.asarray(ids)
        negative = np.argwhere(ids < 0)
        if len(negative):
            position = tuple(negative[0])
            raise InvalidInput(
                tensor, f"{_at(position)} = {ids[position]} is negative; item ids are non-negative integers"
            )
        return ids


def candidate_rows(request: Tensors, index: CatalogIndex, max_candidates: int) -> np.ndarray:
    """Catalog rows of a request's CANDIDATE_IDS, after checking their count and every id."""
    ids = request[CANDIDATE_IDS]
    check_count(ids, CANDIDATE_IDS, max_candidates, "max_candidates", "candidates")
    return index.rows(ids, CANDIDATE_IDS)


def history_rows(request: Tensors, index: CatalogIndex, max_history: int) -> np.ndarray:
    """Catalog rows of a request's USER_HISTORY_IDS, after checking their count and every id."""
    ids = request[USER_HISTORY_IDS]
    check_count(ids, USER_HISTORY_IDS, max_history, "max_history", "history items")
    return index.history_rows(ids, USER_HISTORY_IDS)


class RequestValidator:
    """Checks every input of a rank_cold request and passes it on as VALID_<name>: texts cut to
    their byte limit (cut_texts), everything else unchanged.

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
        #: Per input: check it, and return what is passed on for it.
        checks: dict[str, Callable[[Tensors], np.ndarray]] = {
            QUERY: lambda r: cut_texts(r[QUERY], QUERY, schema.limits.max_query_bytes),
            CANDIDATE_TEXTS: self._candidate_texts,
            CANDIDATE_FEATURES: self._features,
            USER_HISTORY_IDS: self._history,
        }
        unknown = set(self.inputs) - checks.keys()
        if unknown:
            raise KeyError(f"no check for input(s) {sorted(unknown)}")
        self.checks = {name: checks[name] for name in self.inputs}

    @classmethod
    def from_context(cls, context: ModelContext) -> RequestValidator:
        inputs = [t.name for t in context.decl.inputs]
        if USER_EMBEDDING in {t.name for t in context.decl.outputs}:
            catalog = Catalog.load(served_catalog_dir(context.repo))
            return cls(inputs, CatalogIndex.of(catalog), context.schema, catalog)
        return cls(inputs, CatalogIndex.load(served_catalog_dir(context.repo)), context.schema)

    def __call__(self, requests: Sequence[Tensors]) -> list[Outcome]:
        outcomes, valid, checked = validate_each(requests, self._check)
        return merge(outcomes, valid, checked)

    def _check(self, request: Tensors) -> Tensors:
        checked = {validated(name): check(request) for name, check in self.checks.items()}
        if self.catalog is not None:
            from aisle.model_repository.user_profile import user_embeddings

            rows = history_rows(request, self.index, self.schema.limits.max_history)
            checked[USER_EMBEDDING] = user_embeddings(self.catalog, rows, self.schema.limits.history_decay)
        return checked

    def _candidate_texts(self, request: Tensors) -> np.ndarray:
        texts = request[CANDIDATE_TEXTS]
        check_count(texts, CANDIDATE_TEXTS, self.schema.limits.max_candidates, "max_candidates", "candidates")
        return cut_texts(texts, CANDIDATE_TEXTS, self.schema.limits.max_item_text_bytes)

    @staticmethod
    def _features(request: Tensors) -> np.ndarray:
        check_features(request[CANDIDATE_FEATURES], request[CANDIDATE_TEXTS], NUM_ITEM_FEATURES)
        return request[CANDIDATE_FEATURES]

    def _history(self, request: Tensors) -> np.ndarray:
        history_rows(request, self.index, self.schema.limits.max_history)
        return request[USER_HISTORY_IDS]
