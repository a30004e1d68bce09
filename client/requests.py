"""User arguments -> validated arrays -> Triton requests built from the schema -> typed results.

Why here, shared: the sync and async clients differ only in how they send requests. Checking
arguments, naming tensors, shaping batches, splitting large inputs into chunks of the ensemble's
max batch size and putting the answers back in order happen once, in this module, so the two
clients cannot drift apart. Tensor names, dtypes and dims come from `aisle.schema`; nothing here
spells a tensor name.

Arguments are checked before anything is sent, against the schema's limits, with an
InvalidInputError naming the argument; the server checks again (it alone knows the catalog, so
unknown item ids are its to report).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput, InferResult

from aisle.retrieval.filters import Filters
from aisle.schema import (
    BRANDS,
    CANDIDATE_FEATURES,
    CANDIDATE_IDS,
    CANDIDATE_TEXTS,
    CATEGORY,
    EXCLUDE_BRANDS,
    EXCLUDE_IDS,
    ITEM_FEATURES,
    PRICE_RANGE,
    QUERY,
    RANK,
    RANK_COLD,
    SEARCH,
    TOP_K,
    USER_HISTORY_IDS,
    EnsembleDecl,
    Schema,
    ServingLimits,
    TensorDecl,
)

from .errors import InvalidInputError, ServerError
from .results import RankResult, SearchResult

T_co = TypeVar("T_co", covariant=True)

Text = str | bytes


def new_request_id() -> str:
    """A fresh id for one call; chunks of the call get "<id>/<chunk>" (see `chunk_request_id`)."""
    return uuid.uuid4().hex


def chunk_request_id(request_id: str, index: int, count: int) -> str:
    """Each chunk's own id, so server logs tell the chunks of one call apart (none when unsplit)."""
    return request_id if count == 1 else f"{request_id}/{index}"


def chunk_slices(rows: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` rows covering `rows` rows, in order."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


# --- Argument checks ------------------------------------------------------------------------------


def text_array(argument: str, texts: Sequence[Text]) -> np.ndarray:
    """A 1-D object array of texts (str or already-encoded UTF-8 bytes)."""
    if isinstance(texts, (str, bytes)):
        raise InvalidInputError(f"{argument}: expected a list of texts, got one {type(texts).__name__}; pass [text]")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, (str, bytes)):
            raise InvalidInputError(f"{argument}[{i}]: expected str or bytes, got {type(text).__name__}")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def id_array(argument: str, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """A 1-D int64 array of item ids, each >= 0."""
    array = np.asarray(ids)
    if array.ndim != 1:
        raise InvalidInputError(f"{argument}: expected a flat sequence of item ids, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise InvalidInputError(f"{argument}: item ids must be integers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.unsignedinteger) and array.max() > np.iinfo(np.int64).max:
        raise InvalidInputError(f"{argument}: id {array.max()} does not fit in int64")
    if array.min() < 0:
        first = int(np.flatnonzero(array < 0)[0])
        raise InvalidInputError(f"{argument}[{first}] = {array[first]}: item ids must be >= 0")
    return array.astype(np.int64)


def feature_matrix(argument: str, features: object, *, rows: int, names: Sequence[str]) -> np.ndarray:
    """A [rows, len(names)] float32 matrix of raw item features; None or NaN entries = unknown."""
    width = len(names)
    if features is None:
        return np.full((rows, width), np.nan, dtype=np.float32)
    try:
        matrix = np.asarray(features, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{argument}: expected rows of {width} numbers ({', '.join(names)}): {e}") from e
    if matrix.shape != (rows, width):
        raise InvalidInputError(
            f"{argument}: expected shape ({rows}, {width}) — one row of ({', '.join(names)}) per candidate — "
            f"got {matrix.shape}"
        )
    if np.isinf(matrix).any():
        row, col = np.argwhere(np.isinf(matrix))[0]
        raise InvalidInputError(f"{argument}[{row}][{col}] ({names[col]}) = {matrix[row, col]}: use NaN for unknown")
    return matrix


@dataclass(frozen=True)
class Counted:
    """An argument whose length the server limits: checked against the limits the server declares
    (ServingLimits, read at the client's first call), so the client refuses exactly what the
    server would."""

    argument: str
    count: int
    limit: str  # a ServingLimits field
    unit: str = "entries"  # what is counted, for the message

    def check(self, limits: ServingLimits) -> None:
        maximum = getattr(limits, self.limit)
        if self.count > maximum:
            raise InvalidInputError(
                f"{self.argument}: {self.count} {self.unit}, more than the server's {self.limit}={maximum}"
            )


def recent_history(history: np.ndarray, limits: ServingLimits) -> np.ndarray:
    """The most recent `max_history` ids of a history (oldest first), what the server takes.

    Why cut rather than refuse: an application holds a shopper's whole history, and the fusion head
    was trained on the last `max_history` items of each history (aisle.training.corpus cuts them the
    same way), where the k-th most recent already weighs decay**k (0.9**50 = 0.005 by default).
    """
    return history[len(history) - limits.max_history :] if len(history) > limits.max_history else history


def check_top_k(top_k: int | None) -> int | None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InvalidInputError(f"top_k = {top_k!r}: must be a positive integer or None")
    return top_k


def check_query(query: Text) -> Text:
    if not isinstance(query, (str, bytes)):
        raise InvalidInputError(f"query: expected str or bytes, got {type(query).__name__}")
    return query


# --- Wire tensors ---------------------------------------------------------------------------------


def _shape_fits(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims))


def build_inputs(decl: EnsembleDecl, arrays: Mapping[str, np.ndarray]) -> list[InferInput]:
    """The InferInputs of one request of `decl`: every declared input, batch dimension first.

    A missing or extra tensor or a shape outside the declared dims is a bug in this module, not a
    user error, hence ValueError.
    """
    declared = {t.name for t in decl.inputs}
    if set(arrays) != declared:
        raise ValueError(f"{decl.name}: inputs {sorted(arrays)} differ from the schema's {sorted(declared)}")
    inputs = []
    for tensor in decl.inputs:
        array = np.asarray(arrays[tensor.name], dtype=tensor.dtype.numpy_name)
        if not _shape_fits(array.shape[1:], tensor.dims) or not 1 <= array.shape[0] <= decl.max_batch_size:
            raise ValueError(f"{decl.name}.{tensor.name}: shape {array.shape} does not fit [batch] + {tensor.dims}")
        infer_input = InferInput(tensor.name, list(array.shape), tensor.dtype.value)
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


def output_array(result: InferResult, tensor: TensorDecl, *, rows: int, what: str) -> np.ndarray:
    """One declared output of a response, checked to carry `rows` rows."""
    request_id = result.get_response().id
    array = result.as_numpy(tensor.name)
    if array is None:
        raise ServerError(f"{what}: the response has no output {tensor.name}", request_id=request_id)
    if array.shape[:1] != (rows,) or not _shape_fits(array.shape[1:], tensor.dims):
        raise ServerError(
            f"{what}: output {tensor.name} has shape {array.shape}, expected [{rows}] + {tensor.dims}",
            request_id=request_id,
        )
    return array


@dataclass(frozen=True)
class InferCall:
    """One Triton request, ready to send (and to resend on retry: the inputs are not consumed)."""

    model: str
    inputs: list[InferInput]
    outputs: list[InferRequestedOutput]
    request_id: str


# --- Requests: validated arguments of one client call ----------------------------------------------


class AisleRequest(Protocol[T_co]):
    """A validated client call: the Triton requests it needs and how their answers combine."""

    @property
    def ensemble(self) -> str: ...

    def calls(self, schema: Schema, request_id: str) -> list[InferCall]: ...

    def finish(self, schema: Schema, results: Sequence[InferResult], request_id: str) -> T_co: ...


def _outputs(decl: EnsembleDecl) -> list[InferRequestedOutput]:
    return [InferRequestedOutput(t.name) for t in decl.outputs]


@dataclass(frozen=True)
class EmbedRequest:
    """Texts for embed_query / embed_item, sent in chunks of the ensemble's max batch size."""

    ensemble: str
    texts: np.ndarray

    def calls(self, schema: Schema, request_id: str) -> list[InferCall]:
        decl = schema.ensemble(self.ensemble)
        (text,) = decl.inputs
        slices = chunk_slices(len(self.texts), decl.max_batch_size)
        return [
            InferCall(
                decl.name,
                build_inputs(decl, {text.name: self.texts[rows, None]}),
                _outputs(decl),
                chunk_request_id(request_id, i, len(slices)),
            )
            for i, rows in enumerate(slices)
        ]

    def finish(self, schema: Schema, results: Sequence[InferResult], request_id: str) -> np.ndarray:
        """The chunks' embeddings, in input order: [len(texts), embedding_dim] float32."""
        decl = schema.ensemble(self.ensemble)
        (embedding,) = decl.outputs
        slices = chunk_slices(len(self.texts), decl.max_batch_size)
        parts = [
            output_array(result, embedding, rows=rows.stop - rows.start, what=self.ensemble)
            for rows, result in zip(slices, results)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, schema.embedding_dim), dtype=np.float32)


def embed_request(ensemble: str, texts: Sequence[Text]) -> EmbedRequest:
    return EmbedRequest(ensemble, text_array("texts", texts))


@dataclass(frozen=True)
class RankRequest:
    """One scoring request (rank or rank_cold): a single batch row, candidates along its dims."""

    ensemble: str
    query: Text
    candidates: Mapping[str, np.ndarray]
    history: np.ndarray
    ids: np.ndarray
    top_k: int | None
    counted: tuple[Counted, ...]

    def calls(self, schema: Schema, request_id: str) -> list[InferCall]:
        """No request for an empty candidate list: there is nothing to score."""
        for counted in self.counted:
            counted.check(schema.limits)
        if len(self.ids) == 0:
            return []
        decl = schema.ensemble(self.ensemble)
        history = recent_history(self.history, schema.limits)
        arrays = {QUERY: np.array([[self.query]], dtype=object), USER_HISTORY_IDS: history[None, :]}
        arrays.update({name: array[None] for name, array in self.candidates.items()})
        return [InferCall(decl.name, build_inputs(decl, arrays), _outputs(decl), request_id)]

    def finish(self, schema: Schema, results: Sequence[InferResult], request_id: str) -> RankResult:
        if not results:
            empty = np.zeros(0, dtype=np.float32)
            return RankResult.from_scores(self.ids, empty, top_k=self.top_k, request_id=request_id)
        (scores,) = schema.ensemble(self.ensemble).outputs
        (result,) = results
        raw = output_array(result, scores, rows=1, what=self.ensemble)[0]
        if raw.shape != self.ids.shape:
            raise ServerError(
                f"{self.ensemble}: {raw.shape[0]} scores for {len(self.ids)} candidates", request_id=request_id
            )
        return RankResult.from_scores(self.ids, raw, top_k=self.top_k, request_id=request_id)


def rank_request(
    query: Text,
    candidate_ids: Sequence[int] | np.ndarray,
    user_history_ids: Sequence[int] | np.ndarray,
    top_k: int | None,
) -> RankRequest:
    ids = id_array("candidate_ids", candidate_ids)
    history = id_array("user_history_ids", user_history_ids)
    return RankRequest(
        ensemble=RANK,
        query=check_query(query),
        candidates={CANDIDATE_IDS: ids},
        history=history,
        ids=ids,
        top_k=check_top_k(top_k),
        counted=(Counted("candidate_ids", len(ids), "max_candidates"),),
    )


def rank_cold_request(
    query: Text,
    candidate_texts: Sequence[Text],
    candidate_features: object,
    user_history_ids: Sequence[int] | np.ndarray,
    top_k: int | None,
) -> RankRequest:
    texts = text_array("candidate_texts", candidate_texts)
    features = feature_matrix("candidate_features", candidate_features, rows=len(texts), names=ITEM_FEATURES)
    history = id_array("user_history_ids", user_history_ids)
    return RankRequest(
        ensemble=RANK_COLD,
        query=check_query(query),
        candidates={CANDIDATE_TEXTS: texts, CANDIDATE_FEATURES: features},
        history=history,
        ids=np.arange(len(texts), dtype=np.int64),
        top_k=check_top_k(top_k),
        counted=(Counted("candidate_texts", len(texts), "max_candidates"),),
    )


@dataclass(frozen=True)
class SearchRequest:
    """One whole-catalog search (an empty query: a recommendation) with its filters."""

    query: Text
    history: np.ndarray
    top_k: int
    filters: Filters
    counted: tuple[Counted, ...]
    ensemble: str = SEARCH

    def calls(self, schema: Schema, request_id: str) -> list[InferCall]:
        for counted in self.counted:
            counted.check(schema.limits)
        decl = schema.ensemble(self.ensemble)
        f = self.filters
        arrays = {
            QUERY: np.array([[self.query]], dtype=object),
            USER_HISTORY_IDS: recent_history(self.history, schema.limits)[None, :],
            TOP_K: np.array([[self.top_k]], dtype=np.int64),
            CATEGORY: np.array([[f.category or ""]], dtype=object),
            BRANDS: _object_row(f.brands),
            EXCLUDE_BRANDS: _object_row(f.exclude_brands),
            PRICE_RANGE: np.array([[_or_nan(f.min_price), _or_nan(f.max_price)]], dtype=np.float32),
            EXCLUDE_IDS: np.array([f.exclude_ids], dtype=np.int64).reshape(1, -1),
        }
        return [InferCall(decl.name, build_inputs(decl, arrays), _outputs(decl), request_id)]

    def finish(self, schema: Schema, results: Sequence[InferResult], request_id: str) -> SearchResult:
        (result,) = results
        ids_decl, scores_decl = schema.ensemble(self.ensemble).outputs
        ids = output_array(result, ids_decl, rows=1, what=self.ensemble)[0]
        scores = output_array(result, scores_decl, rows=1, what=self.ensemble)[0]
        if ids.shape != scores.shape or len(ids) > self.top_k:
            raise ServerError(
                f"{self.ensemble}: {len(ids)} ids and {len(scores)} scores for top_k={self.top_k}",
                request_id=request_id,
            )
        return SearchResult(ids=ids, scores=scores, request_id=request_id)


def _object_row(texts: Sequence[str]) -> np.ndarray:
    row = np.empty((1, len(texts)), dtype=object)
    row[0, :] = list(texts)
    return row


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def search_request(
    query: Text, user_history_ids: Sequence[int] | np.ndarray, top_k: int, filters: Filters | None
) -> SearchRequest:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidInputError(f"top_k = {top_k!r}: must be a positive integer")
    if filters is not None and not isinstance(filters, Filters):
        raise InvalidInputError(f"filters: expected aisle.client.Filters, got {type(filters).__name__}")
    filters = filters or Filters()
    history = id_array("user_history_ids", user_history_ids)
    return SearchRequest(
        query=check_query(query),
        history=history,
        top_k=top_k,
        filters=filters,
        counted=(
            Counted("top_k", top_k, "max_results", unit="results asked"),
            Counted("filters.exclude_ids", len(filters.exclude_ids), "max_excluded_ids"),
            Counted("filters.brands", len(filters.brands), "max_filter_brands"),
            Counted("filters.exclude_brands", len(filters.exclude_brands), "max_filter_brands"),
        ),
    )
