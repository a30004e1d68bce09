"""Argument checks, request building from the schema, chunking and reassembly, RankResult, config.

Responses are tritonclient's own InferResult around ModelInferResponse protobufs built here, so
reassembly is tested on exactly the objects a server's answer becomes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import InferInput, InferResult
from tritonclient.grpc.service_pb2 import ModelInferResponse
from tritonclient.utils import deserialize_bytes_tensor

from aisle.client.config import ClientConfig, RetryConfig, TlsConfig
from aisle.client.errors import ConfigError, InvalidInputError, ServerError
from aisle.client.requests import (
    chunk_slices,
    embed_request,
    rank_cold_request,
    rank_request,
    search_request,
)
from aisle.client.results import RankResult
from aisle.schema import (
    CANDIDATE_FEATURES,
    CANDIDATE_IDS,
    CANDIDATE_TEXTS,
    EMBED_QUERY,
    EMBEDDING,
    ENCODER_MAX_BATCH,
    MAX_HISTORY,
    NUM_ITEM_FEATURES,
    QUERY,
    RANK,
    RANK_COLD,
    SCORES,
    USER_HISTORY_IDS,
    ServingLimits,
    build_schema,
)

DEFAULT_LIMITS = ServingLimits()

SCHEMA = build_schema(8)


def by_name(inputs: list[InferInput]) -> dict[str, InferInput]:
    return {i.name(): i for i in inputs}


def response(request_id: str, name: str, array: np.ndarray) -> InferResult:
    """An InferResult as tritonclient builds it from the server's protobuf answer."""
    message = ModelInferResponse(model_name="m", id=request_id)
    message.outputs.add(name=name, datatype="FP32", shape=list(array.shape))
    message.raw_output_contents.append(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return InferResult(message)


# --- Chunking ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [0, 1, 63, 64, 65, 200])
def test_chunks_cover_every_row_once_in_order_and_none_exceeds_the_size(rows: int) -> None:
    slices = chunk_slices(rows, 64)
    covered = [i for s in slices for i in range(s.start, s.stop)]
    assert covered == list(range(rows))
    assert all(0 < s.stop - s.start <= 64 for s in slices)


def test_a_large_embed_call_is_split_at_the_ensembles_max_batch_with_one_request_id_per_chunk() -> None:
    texts = [f"text {i}" for i in range(2 * ENCODER_MAX_BATCH + 3)]
    calls = embed_request(EMBED_QUERY, texts).calls(SCHEMA, "call")
    assert [c.request_id for c in calls] == ["call/0", "call/1", "call/2"]
    assert [c.model for c in calls] == [EMBED_QUERY] * 3
    sent = []
    for call in calls:
        (query,) = call.inputs
        assert query.name() == QUERY and query.datatype() == "BYTES"
        assert query.shape()[1:] == [1] and query.shape()[0] <= ENCODER_MAX_BATCH
        sent += [t.decode() for t in deserialize_bytes_tensor(query._get_content())]
        assert [o._get_tensor().name for o in call.outputs] == [EMBEDDING]
    assert sent == texts


def test_chunk_answers_are_reassembled_in_input_order() -> None:
    rows = 2 * ENCODER_MAX_BATCH + 3
    request = embed_request(EMBED_QUERY, [str(i) for i in range(rows)])
    expected = np.arange(rows * 8, dtype=np.float32).reshape(rows, 8)
    results = [
        response(call.request_id, EMBEDDING, expected[s])
        for call, s in zip(request.calls(SCHEMA, "c"), chunk_slices(rows, ENCODER_MAX_BATCH))
    ]
    np.testing.assert_array_equal(request.finish(SCHEMA, results, "c"), expected)


def test_an_unsplit_call_keeps_its_request_id_and_an_empty_one_sends_nothing() -> None:
    assert [c.request_id for c in embed_request(EMBED_QUERY, ["a"]).calls(SCHEMA, "solo")] == ["solo"]
    empty = embed_request(EMBED_QUERY, [])
    assert empty.calls(SCHEMA, "x") == []
    assert empty.finish(SCHEMA, [], "x").shape == (0, 8)


def test_a_chunk_answer_with_the_wrong_row_count_is_a_server_error() -> None:
    request = embed_request(EMBED_QUERY, ["a", "b"])
    with pytest.raises(ServerError, match=r"output EMBEDDING has shape \(1, 8\), expected \[2\]"):
        request.finish(SCHEMA, [response("r", EMBEDDING, np.zeros((1, 8)))], "r")


# --- Rank requests ----------------------------------------------------------------------------------


def test_rank_sends_one_batch_row_shaped_as_the_schema_declares() -> None:
    (call,) = rank_request("red shoes", [5, 3, 9], [1, 2], top_k=None).calls(SCHEMA, "r")
    inputs = by_name(call.inputs)
    assert call.model == RANK and set(inputs) == {QUERY, CANDIDATE_IDS, USER_HISTORY_IDS}
    assert inputs[QUERY].shape() == [1, 1]
    assert inputs[CANDIDATE_IDS].shape() == [1, 3] and inputs[CANDIDATE_IDS].datatype() == "INT64"
    assert inputs[USER_HISTORY_IDS].shape() == [1, 2]
    np.testing.assert_array_equal(np.frombuffer(inputs[CANDIDATE_IDS]._get_content(), np.int64), [5, 3, 9])


def test_an_empty_history_is_sent_as_a_zero_length_row() -> None:
    (call,) = rank_request("", [5], (), top_k=None).calls(SCHEMA, "r")
    assert by_name(call.inputs)[USER_HISTORY_IDS].shape() == [1, 0]


@pytest.mark.parametrize(
    "build",
    [
        lambda history: rank_request("q", [5], history, None),
        lambda history: rank_cold_request("q", ["a"], None, history, None),
        lambda history: search_request("q", history, 10, None),
    ],
    ids=["rank", "rank_cold", "search"],
)
def test_a_history_longer_than_the_server_takes_is_sent_as_its_most_recent_items(build) -> None:
    history = list(range(1000, 1000 + MAX_HISTORY + 7))  # oldest first
    (call,) = build(history).calls(SCHEMA, "r")
    sent = by_name(call.inputs)[USER_HISTORY_IDS]
    assert sent.shape() == [1, MAX_HISTORY]
    np.testing.assert_array_equal(np.frombuffer(sent._get_content(), np.int64), history[-MAX_HISTORY:])


def test_cold_ranking_sends_texts_and_unknown_features_as_nan() -> None:
    request = rank_cold_request("tent", ["a 2-person tent", "a stove"], None, [], top_k=None)
    (call,) = request.calls(SCHEMA, "r")
    inputs = by_name(call.inputs)
    assert call.model == RANK_COLD
    assert inputs[CANDIDATE_TEXTS].shape() == [1, 2]
    assert inputs[CANDIDATE_FEATURES].shape() == [1, 2, NUM_ITEM_FEATURES]
    assert np.isnan(np.frombuffer(inputs[CANDIDATE_FEATURES]._get_content(), np.float32)).all()
    np.testing.assert_array_equal(request.ids, [0, 1])


def test_rank_results_map_scores_back_to_candidate_ids() -> None:
    request = rank_request("q", [50, 30, 90], [], top_k=2)
    result = request.finish(SCHEMA, [response("r", SCORES, np.array([[0.1, 0.7, 0.4]]))], "r")
    np.testing.assert_array_equal(result.ids, [30, 90])
    np.testing.assert_allclose(result.raw_scores, [0.1, 0.7, 0.4])
    assert result.request_id == "r"


def test_a_score_count_that_differs_from_the_candidates_is_a_server_error() -> None:
    request = rank_request("q", [1, 2, 3], [], top_k=None)
    with pytest.raises(ServerError, match="2 scores for 3 candidates"):
        request.finish(SCHEMA, [response("r", SCORES, np.array([[0.1, 0.2]]))], "r")


def test_no_candidates_means_no_request_and_an_empty_result() -> None:
    request = rank_request("q", [], [], top_k=3)
    assert request.calls(SCHEMA, "r") == []
    assert len(request.finish(SCHEMA, [], "r")) == 0


# --- Argument checks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: rank_request("q", [1, -4], [], None), r"candidate_ids\[1\] = -4: item ids must be >= 0"),
        (lambda: rank_request("q", [1], [3, -1], None), r"user_history_ids\[1\] = -1"),
        (
            lambda: rank_request("q", list(range(DEFAULT_LIMITS.max_candidates + 1)), [], None).calls(SCHEMA, "r"),
            "candidate_ids: 1001 entries, more than the server's max_candidates=1000",
        ),
        (lambda: rank_request("q", [1.5, 2.0], [], None), "candidate_ids: item ids must be integers"),
        (lambda: rank_request("q", [[1, 2]], [], None), r"candidate_ids: expected a flat sequence"),
        (lambda: rank_request("q", [1], [], 0), "top_k = 0: must be a positive integer"),
        (lambda: rank_request(42, [1], [], None), "query: expected str or bytes, got int"),  # type: ignore[arg-type]
        (lambda: embed_request(EMBED_QUERY, "one string"), "texts: expected a list of texts, got one str"),
        (lambda: embed_request(EMBED_QUERY, ["ok", 7]), r"texts\[1\]: expected str or bytes, got int"),  # type: ignore[list-item]
        (
            lambda: rank_cold_request("q", ["a", "b"], [[1, 2, 3, 4]], [], None),
            r"candidate_features: expected shape \(2, 4\).*got \(1, 4\)",
        ),
        (
            lambda: rank_cold_request("q", ["a"], [[1, float("inf"), 3, 4]], [], None),
            r"candidate_features\[0\]\[1\] \(rating\) = inf: use NaN for unknown",
        ),
        (
            lambda: rank_cold_request("q", ["t"] * (DEFAULT_LIMITS.max_candidates + 1), None, [], None).calls(
                SCHEMA, "r"
            ),
            "candidate_texts: 1001 entries, more than the server's max_candidates=1000",
        ),
    ],
    ids=[
        "negative-candidate",
        "negative-history",
        "too-many-candidates",
        "float-ids",
        "nested-ids",
        "top-k-zero",
        "query-not-text",
        "bare-string-texts",
        "non-text-item",
        "features-shape",
        "infinite-feature",
        "too-many-cold-candidates",
    ],
)
def test_bad_arguments_are_refused_before_sending_naming_the_argument(
    build: Callable[[], object], pattern: str
) -> None:
    with pytest.raises(InvalidInputError, match=pattern) as info:
        build()
    assert info.value.status is None and info.value.request_id is None


def test_numpy_id_arrays_and_bytes_texts_are_accepted() -> None:
    request = rank_request(b"caf\xc3\xa9", np.array([3, 1], dtype=np.uint16), np.array([], dtype=np.int32), None)
    assert request.ids.dtype == np.int64
    (call,) = embed_request(EMBED_QUERY, [b"raw", "text"]).calls(SCHEMA, "r")
    assert list(deserialize_bytes_tensor(call.inputs[0]._get_content())) == [b"raw", b"text"]


# --- RankResult -------------------------------------------------------------------------------------


def test_rank_result_sorts_best_first_keeps_ties_in_input_order_and_nan_last() -> None:
    raw = np.array([0.2, np.nan, 0.9, 0.2, 0.5], dtype=np.float32)
    result = RankResult.from_scores(np.array([10, 11, 12, 13, 14]), raw, top_k=None, request_id="r")
    np.testing.assert_array_equal(result.ids, [12, 14, 10, 13, 11])
    np.testing.assert_array_equal(result.indices, [2, 4, 0, 3, 1])
    np.testing.assert_array_equal(result.raw_scores[result.indices], result.scores)


def test_top_k_truncates_the_ranking_but_not_the_raw_scores() -> None:
    raw = np.array([0.1, 0.3, 0.2], dtype=np.float32)
    result = RankResult.from_scores(np.array([7, 8, 9]), raw, top_k=2, request_id="r")
    assert len(result) == 2 and result.raw_scores.shape == (3,)
    assert result.to_dict() == {
        "request_id": "r",
        "results": [
            {"id": 8, "score": pytest.approx(0.3), "index": 1},
            {"id": 9, "score": pytest.approx(0.2), "index": 2},
        ],
    }


# --- Config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "option"),
    [
        (lambda: ClientConfig(url="localhost"), "url"),
        (lambda: ClientConfig(timeout_s=0), "timeout_s"),
        (lambda: ClientConfig(compression_algorithm="brotli"), "compression_algorithm"),  # type: ignore[arg-type]
        (lambda: RetryConfig(max_attempts=0), "retry.max_attempts"),
        (lambda: RetryConfig(initial_backoff_s=3.0, max_backoff_s=1.0), "retry.max_backoff_s"),
        (lambda: RetryConfig(jitter=1.5), "retry.jitter"),
        (lambda: TlsConfig(root_certificates="/nonexistent/ca.pem"), "tls.root_certificates"),  # type: ignore[arg-type]
    ],
)
def test_invalid_options_fail_at_construction_naming_the_option(make: Callable[[], object], option: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{option}="):
        make()


def test_mutual_tls_needs_both_key_and_certificate(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="tls.private_key"):
        TlsConfig(private_key=key)


def test_the_channel_reconnects_at_least_as_often_as_the_client_retries() -> None:
    args = dict(ClientConfig(retry=RetryConfig(max_backoff_s=1.5)).channel_args())
    assert args["grpc.max_reconnect_backoff_ms"] == 1500
    assert args["grpc.max_receive_message_length"] >= 2**30
