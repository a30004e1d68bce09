"""The python models' logic, without Triton: tokenizer, item store, user profile, cold encoder, ORT runner."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

from aisle.export.repo_format import Catalog
from aisle.export.triton_config import read_config
from aisle.model_repository.batching import group_by_shape, run_stacked
from aisle.model_repository.cold_items import ColdItemEncoder
from aisle.model_repository.context import ModelContext
from aisle.model_repository.errors import InvalidInput
from aisle.model_repository.item_store import ItemStore
from aisle.model_repository.ort_runner import OrtGraph
from aisle.model_repository.tokenizer_logic import BatchTokenizer, public_inputs
from aisle.model_repository.user_profile import UserProfile
from aisle.model_repository.validation import CatalogIndex, RequestValidator, decode_texts
from aisle.modeling.user import user_vector
from aisle.schema import (
    ATTENTION_MASK,
    CANDIDATE_FEATURES,
    CANDIDATE_IDS,
    CANDIDATE_TEXTS,
    EMBED_QUERY,
    EMBEDDING,
    FUSION_HEAD,
    HISTORY_DECAY,
    INPUT_IDS,
    INTRA_OP_THREADS_PARAMETER,
    ITEM_EMBEDDINGS,
    ITEM_FEATURES_TENSOR,
    ITEM_TOKENIZER,
    QUERY,
    QUERY_ENCODER,
    QUERY_TOKENIZER,
    TEXT,
    USER_EMBEDDING,
    USER_HISTORY_IDS,
    Role,
    ServingLimits,
    build_schema,
    validated,
)
from aisle.tokenization import Bucketing, encode_batch, load_tokenizer

BUCKETS = Bucketing((8, 16, 32))
#: The cut the query tokenizer applies to its texts (ServingLimits.max_text_bytes of BUCKETS).
MAX_TEXT_BYTES = ServingLimits().max_text_bytes(BUCKETS.buckets)
LONG_TEXT = "running shoes with extra cushioning " * 40


@pytest.fixture(scope="module")
def tokenizer(base_model_dir: Path):
    return load_tokenizer(base_model_dir, BUCKETS.max_length)


@pytest.fixture(scope="module")
def batch_tokenizer(tokenizer) -> BatchTokenizer:
    return BatchTokenizer(tokenizer, BUCKETS, max_text_bytes=MAX_TEXT_BYTES, source="QUERY")


def text_request(*texts: str | bytes) -> dict[str, np.ndarray]:
    values = [t.encode() if isinstance(t, str) else t for t in texts]
    return {TEXT: np.array(values, dtype=object).reshape(-1, 1)}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    rng = np.random.default_rng(0)
    ids = np.array([10, 11, 12, 20, 30], np.int64)
    return Catalog.build(ids, rng.standard_normal((5, 6)).astype(np.float32), rng.random((5, 4)).astype(np.float32))


# --- tokenizer -------------------------------------------------------------------------------------


def test_each_request_of_a_batch_gets_exactly_what_tokenizing_it_alone_gives(batch_tokenizer, tokenizer) -> None:
    requests = [
        text_request("red shoes"),
        text_request("a much longer query about trail running shoes"),
        text_request(""),
    ]
    outcomes = batch_tokenizer(requests)
    for request, outcome in zip(requests, outcomes):
        texts = [t.decode() for t in request[TEXT].reshape(-1)]
        ids, mask = encode_batch(tokenizer, texts, BUCKETS)
        np.testing.assert_array_equal(outcome[INPUT_IDS], ids)
        np.testing.assert_array_equal(outcome[ATTENTION_MASK], mask)


def test_requests_are_padded_to_their_own_bucket_not_the_batchs_longest(batch_tokenizer) -> None:
    outcomes = batch_tokenizer([text_request("shoes"), text_request("word " * 20)])
    assert [o[INPUT_IDS].shape for o in outcomes] == [(1, 8), (1, 32)]


def test_whole_dynamic_batch_is_tokenized_in_one_tokenizers_call(tokenizer) -> None:
    calls = []

    class CountingTokenizer:
        def encode_batch(self, texts):
            calls.append(len(texts))
            return tokenizer.encode_batch(texts)

        def token_to_id(self, token):
            return tokenizer.token_to_id(token)

    BatchTokenizer(CountingTokenizer(), BUCKETS, max_text_bytes=MAX_TEXT_BYTES)(
        [text_request("a", "b"), text_request("c")]
    )
    assert calls == [3]


@pytest.mark.parametrize("text", ["", "   \t\n "], ids=["empty", "whitespace"])
def test_blank_text_keeps_special_tokens_with_an_all_zero_mask(batch_tokenizer, text: str) -> None:
    (outcome,) = batch_tokenizer([text_request(text)])
    assert outcome[INPUT_IDS].shape == (1, 8)
    assert outcome[ATTENTION_MASK].sum() == 0


@pytest.mark.parametrize(
    "text", ["running shoes 🏃‍♀️👟🔥", "跑步鞋 男款 轻便", "ランニングシューズ"], ids=["emoji", "cjk", "kana"]
)
def test_emoji_and_cjk_text_tokenize_to_a_nonempty_mask(batch_tokenizer, tokenizer, text: str) -> None:
    (outcome,) = batch_tokenizer([text_request(text)])
    expected = tokenizer.encode(text).ids
    assert outcome[ATTENTION_MASK].sum() == len(expected) > 2
    assert outcome[INPUT_IDS][0, : len(expected)].tolist() == expected


def test_very_long_text_is_truncated_to_the_largest_bucket(batch_tokenizer) -> None:
    (outcome,) = batch_tokenizer([text_request(LONG_TEXT)])
    assert outcome[INPUT_IDS].shape == (1, 32)
    assert outcome[ATTENTION_MASK].sum() == 32


def test_invalid_utf8_rejects_only_its_request_naming_the_public_tensor(batch_tokenizer) -> None:
    outcomes = batch_tokenizer([text_request("fine"), text_request("ok", b"caf\xe9")])
    assert outcomes[0][INPUT_IDS].shape == (1, 8)
    assert isinstance(outcomes[1], InvalidInput)
    assert outcomes[1].tensor == "QUERY"
    assert "[1, 0]" in str(outcomes[1]) and "UTF-8" in str(outcomes[1])


def test_decode_texts_reports_the_byte_offset() -> None:
    with pytest.raises(InvalidInput, match=r"CANDIDATE_TEXTS: element \[0, 1\].*at byte 2"):
        decode_texts(np.array([[b"ok", b"ab\xff"]], dtype=object), CANDIDATE_TEXTS)


def test_tokenizer_errors_name_the_ensemble_input_the_client_sent() -> None:
    schema = build_schema(8)
    assert public_inputs(schema, QUERY_TOKENIZER, TEXT) == "QUERY"
    assert public_inputs(schema, ITEM_TOKENIZER, TEXT) == "ITEM_TEXT"


# --- item store --------------------------------------------------------------------------------------


def store_request(candidates: list[int], history: list[int], query: bytes = b"shoes") -> dict[str, np.ndarray]:
    """One rank request as the item store receives it (rank's inputs)."""
    return {
        QUERY: np.array([[query]], dtype=object),
        CANDIDATE_IDS: np.array([candidates], np.int64),
        USER_HISTORY_IDS: np.array([history], np.int64).reshape(1, len(history)),
    }


def item_store(catalog: Catalog, max_candidates: int = 10, max_history: int = 5) -> ItemStore:
    return ItemStore(catalog, build_schema(6, ServingLimits(max_candidates=max_candidates, max_history=max_history)))


def test_item_store_returns_rows_of_the_requested_ids_in_request_order(catalog: Catalog) -> None:
    (outcome,) = item_store(catalog)([store_request([30, 10, 30], [])])
    rows = [4, 0, 4]
    np.testing.assert_array_equal(outcome[ITEM_EMBEDDINGS], catalog.embeddings[rows][None])
    np.testing.assert_array_equal(outcome[ITEM_FEATURES_TENSOR], catalog.features[rows][None])


def test_item_store_passes_the_checked_query_on_and_builds_the_user_vector(catalog: Catalog) -> None:
    request = store_request([10], [12, 10, 30], query="cr\u00e8me \u2615".encode())
    (outcome,) = item_store(catalog)([request])
    assert set(outcome) == {validated(QUERY), ITEM_EMBEDDINGS, ITEM_FEATURES_TENSOR, USER_EMBEDDING}
    np.testing.assert_array_equal(outcome[validated(QUERY)], request[QUERY])
    # The same user vector the user_profile model (and training) computes.
    (profile,) = UserProfile(catalog, max_history=5, decay=HISTORY_DECAY)(
        [{USER_HISTORY_IDS: request[USER_HISTORY_IDS]}]
    )
    np.testing.assert_array_equal(outcome[USER_EMBEDDING], profile[USER_EMBEDDING])
    np.testing.assert_array_equal(outcome[USER_EMBEDDING][0], user_vector(catalog.embeddings[[2, 0, 4]], HISTORY_DECAY))


def test_item_store_gives_an_empty_history_the_zero_user_vector(catalog: Catalog) -> None:
    (outcome,) = item_store(catalog)([store_request([10, 11], [])])
    np.testing.assert_array_equal(outcome[USER_EMBEDDING], np.zeros((1, 6), np.float32))


@pytest.mark.parametrize(
    ("request_", "tensor", "message"),
    [
        (store_request([10, -3], []), CANDIDATE_IDS, r"CANDIDATE_IDS: \[0, 1\] = -3 is negative"),
        (
            store_request([10, 15], []),
            CANDIDATE_IDS,
            r"CANDIDATE_IDS: \[0, 1\] = 15 is not an item of the served catalog \(5 items, ids 10..30\)",
        ),
        (store_request([99], []), CANDIDATE_IDS, r"= 99 is not an item"),
        (
            store_request([10] * 4, []),
            CANDIDATE_IDS,
            r"CANDIDATE_IDS: 4 candidates per request is more than max_candidates=3",
        ),
        (store_request([10], [11, 7]), USER_HISTORY_IDS, r"USER_HISTORY_IDS: \[0, 1\] = 7 is not an item"),
        (
            store_request([10], [10, 11, 12]),
            USER_HISTORY_IDS,
            r"USER_HISTORY_IDS: 3 history items per request is more than max_history=2",
        ),
        (store_request([10], [], query=b"ab\xff"), QUERY, r"QUERY: element \[0, 0\] is not valid UTF-8"),
    ],
    ids=["negative", "unknown-between", "unknown-above", "too-many", "unknown-history", "long-history", "utf8"],
)
def test_item_store_rejects_each_bad_input_naming_tensor_position_and_value(
    catalog: Catalog, request_, tensor: str, message: str
) -> None:
    good, bad = item_store(catalog, max_candidates=3, max_history=2)([store_request([11], [12]), request_])
    assert good[ITEM_EMBEDDINGS].shape == (1, 1, 6)
    assert isinstance(bad, InvalidInput)
    assert bad.tensor == tensor
    assert re.search(message, str(bad)), str(bad)


# --- user profile --------------------------------------------------------------------------------------


def test_user_vector_of_each_row_is_the_training_user_vector(catalog: Catalog) -> None:
    profile = UserProfile(catalog, max_history=5, decay=0.8)
    (outcome,) = profile([{USER_HISTORY_IDS: np.array([[12, 10, 30], [20, 20, 11]], np.int64)}])
    for row, rows in enumerate(([2, 0, 4], [3, 3, 1])):
        np.testing.assert_array_equal(outcome[USER_EMBEDDING][row], user_vector(catalog.embeddings[rows], 0.8))


def test_empty_history_is_the_zero_user_vector(catalog: Catalog) -> None:
    (outcome,) = UserProfile(catalog, max_history=5, decay=0.8)([{USER_HISTORY_IDS: np.zeros((2, 0), np.int64)}])
    np.testing.assert_array_equal(outcome[USER_EMBEDDING], np.zeros((2, 6), np.float32))


def test_history_longer_than_declared_is_rejected_with_the_limit(catalog: Catalog) -> None:
    (outcome,) = UserProfile(catalog, max_history=2, decay=0.8)([{USER_HISTORY_IDS: np.array([[10, 11, 12]])}])
    assert isinstance(outcome, InvalidInput)
    assert str(outcome) == "USER_HISTORY_IDS: 3 history items per request is more than max_history=2"


def test_unknown_history_id_is_rejected_naming_the_history_tensor(catalog: Catalog) -> None:
    (outcome,) = UserProfile(catalog, max_history=5, decay=0.8)([{USER_HISTORY_IDS: np.array([[10, 7]])}])
    assert isinstance(outcome, InvalidInput) and outcome.tensor == USER_HISTORY_IDS
    assert "[0, 1] = 7" in str(outcome)


# --- cold encoder --------------------------------------------------------------------------------------


def fake_text_embedder(calls: list[int]):
    """Stands in for the BLS call: a deterministic embedding of each text's length and first byte."""

    def embed(texts: np.ndarray) -> np.ndarray:
        calls.append(len(texts))
        return np.array([[len(t), t[0] if t else 0, 1.0] for t in texts], np.float32)

    return embed


def cold_request(texts: list[list[str]], features_width: int = 4) -> dict[str, np.ndarray]:
    array = np.array([[t.encode() for t in row] for row in texts], dtype=object)
    return {CANDIDATE_TEXTS: array, CANDIDATE_FEATURES: np.ones((*array.shape, features_width), np.float32)}


def test_cold_encoder_embeds_all_texts_of_a_batch_in_encoder_sized_chunks() -> None:
    calls: list[int] = []
    encoder = ColdItemEncoder(
        fake_text_embedder(calls), dim=3, max_candidates=10, num_features=4, chunk_size=4, max_text_bytes=100
    )
    first, second = encoder([cold_request([["a", "bb", "ccc"], ["d", "", "f"]]), cold_request([["gg", "h"]])])
    assert calls == [4, 4]
    assert first[ITEM_EMBEDDINGS].shape == (2, 3, 3) and second[ITEM_EMBEDDINGS].shape == (1, 2, 3)
    assert first[ITEM_EMBEDDINGS][:, :, 0].tolist() == [[1, 2, 3], [1, 0, 1]]
    assert second[ITEM_EMBEDDINGS][0, :, 1].tolist() == [ord("g"), ord("h")]
    np.testing.assert_array_equal(first[ITEM_FEATURES_TENSOR], np.ones((2, 3, 4)))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (cold_request([["a", "b"]], features_width=5), r"CANDIDATE_FEATURES: shape \[1, 2, 5\] does not match"),
        (cold_request([["a"] * 11]), "CANDIDATE_TEXTS: 11 candidates per request is more than max_candidates=10"),
        (
            {CANDIDATE_TEXTS: np.array([[b"\xc3"]], object), CANDIDATE_FEATURES: np.ones((1, 1, 4), np.float32)},
            r"CANDIDATE_TEXTS: element \[0, 0\] is not valid UTF-8",
        ),
    ],
    ids=["feature-width", "too-many", "utf8"],
)
def test_cold_encoder_rejects_bad_candidates_without_embedding_them(request_, message: str) -> None:
    calls: list[int] = []
    encoder = ColdItemEncoder(
        fake_text_embedder(calls), dim=3, max_candidates=10, num_features=4, chunk_size=4, max_text_bytes=100
    )
    (outcome,) = encoder([request_])
    assert isinstance(outcome, InvalidInput)
    assert re.search(message, str(outcome)), str(outcome)
    assert calls == []


# --- request validator -------------------------------------------------------------------------------


COLD_INPUTS = [QUERY, CANDIDATE_TEXTS, CANDIDATE_FEATURES, USER_HISTORY_IDS]


def cold_rank_request(
    texts: list[str | bytes], history: list[int], query: bytes = b"shoes", width: int = 4
) -> dict[str, np.ndarray]:
    """One rank_cold request as its validator receives it (bytes texts are sent as they are)."""
    return {
        QUERY: np.array([[query]], dtype=object),
        CANDIDATE_TEXTS: np.array([[t if isinstance(t, bytes) else t.encode() for t in texts]], dtype=object),
        CANDIDATE_FEATURES: np.ones((1, len(texts), width), np.float32),
        USER_HISTORY_IDS: np.array([history], np.int64).reshape(1, len(history)),
    }


@pytest.fixture(scope="module")
def cold_validator(catalog: Catalog) -> RequestValidator:
    schema = build_schema(6, ServingLimits(max_candidates=3, max_history=2))
    return RequestValidator(COLD_INPUTS, CatalogIndex(catalog.item_ids), schema)


def test_validator_passes_valid_inputs_on_unchanged_under_their_valid_names(cold_validator) -> None:
    request = cold_rank_request(["a", "b"], [10, 30])
    (outcome,) = cold_validator([request])
    assert set(outcome) == {validated(name) for name in COLD_INPUTS}
    for name, array in request.items():
        np.testing.assert_array_equal(outcome[validated(name)], array)


def test_validator_with_the_catalog_builds_the_user_vector_of_the_ids_it_checked(catalog: Catalog) -> None:
    """rank_cold's one catalog reader: history ids checked and averaged on one catalog version."""
    schema = build_schema(6, ServingLimits(max_candidates=3, max_history=5, history_decay=HISTORY_DECAY))
    validator = RequestValidator(COLD_INPUTS, CatalogIndex(catalog.item_ids), schema, catalog)
    (outcome,) = validator([cold_rank_request(["a"], [12, 10, 30])])
    assert set(outcome) == {validated(name) for name in COLD_INPUTS} | {USER_EMBEDDING}
    np.testing.assert_array_equal(outcome[USER_EMBEDDING][0], user_vector(catalog.embeddings[[2, 0, 4]], HISTORY_DECAY))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (cold_rank_request(["a"], [], query=b"\xff"), r"^QUERY: element \[0, 0\] is not valid UTF-8"),
        (cold_rank_request(["a", b"b\xe9"], []), r"^CANDIDATE_TEXTS: element \[0, 1\] is not valid UTF-8"),
        (cold_rank_request(["a"] * 4, []), r"^CANDIDATE_TEXTS: 4 candidates per request is more than max_candidates=3"),
        (cold_rank_request(["a", "b"], [], width=3), r"^CANDIDATE_FEATURES: shape \[1, 2, 3\] does not match"),
        (cold_rank_request(["a"], [-1]), r"^USER_HISTORY_IDS: \[0, 0\] = -1 is negative"),
        (cold_rank_request(["a"], [10, 13]), r"^USER_HISTORY_IDS: \[0, 1\] = 13 is not an item"),
        (
            cold_rank_request(["a"], [10, 11, 12]),
            r"^USER_HISTORY_IDS: 3 history items per request is more than max_history=2",
        ),
    ],
    ids=["utf8", "utf8-candidate", "too-many", "feature-width", "negative-history", "unknown-history", "long-history"],
)
def test_validator_rejects_each_bad_input_naming_it(cold_validator, request_, message: str) -> None:
    good, bad = cold_validator([cold_rank_request(["a"], [12]), request_])
    assert validated(CANDIDATE_TEXTS) in good
    assert isinstance(bad, InvalidInput) and re.search(message, str(bad)), str(bad)


# --- batching and the ORT runner ------------------------------------------------------------------------


def test_group_by_shape_keeps_first_seen_order() -> None:
    requests = [{"X": np.zeros((1, 8))}, {"X": np.zeros((2, 16))}, {"X": np.zeros((3, 8))}]
    assert group_by_shape(requests) == [[0, 2], [1]]


def test_run_stacked_runs_once_per_shape_and_splits_back() -> None:
    calls = []

    def double(tensors):
        calls.append(tensors["X"].shape)
        return {"Y": tensors["X"] * 2}

    requests = [{"X": np.full((1, 2), 1.0)}, {"X": np.full((2, 3), 2.0)}, {"X": np.full((3, 2), 3.0)}]
    results = run_stacked(requests, double)
    assert calls == [(4, 2), (2, 3)]
    for request, result in zip(requests, results):
        np.testing.assert_array_equal(result["Y"], request["X"] * 2)


def test_encoder_graph_gives_a_sample_alone_what_it_gives_it_inside_a_padded_batch(onnx_dir: Path, tokenizer) -> None:
    graph = OrtGraph(onnx_dir / "query_encoder.onnx")
    texts = ["red shoes", "waterproof hiking boots for winter", ""]
    ids, mask = encode_batch(tokenizer, texts, BUCKETS)
    (batched,) = graph([{INPUT_IDS: ids, ATTENTION_MASK: mask}])
    for row, text in enumerate(texts):
        alone_ids, alone_mask = encode_batch(tokenizer, [text], BUCKETS)
        (alone,) = graph([{INPUT_IDS: alone_ids, ATTENTION_MASK: alone_mask}])
        np.testing.assert_allclose(alone[EMBEDDING][0], batched[EMBEDDING][row], atol=1e-5)
    np.testing.assert_array_equal(batched[EMBEDDING][2], 0.0)


def test_the_embedded_query_encoder_tokenizes_a_mixed_batch_as_each_request_alone(embedded_repo: Path) -> None:
    """Requests of different buckets in one batch, and a rejected one, each get what they get alone."""
    from aisle.model_repository.text_encoder import TextEncoder

    context = ModelContext.load(embedded_repo, QUERY_ENCODER)
    assert context.decl.role is Role.TEXT_ENCODER
    encoder = TextEncoder.from_context(context)
    requests = [text_request("red shoes"), text_request("ok", b"caf\xe9"), text_request("word " * 20, "")]
    outcomes = encoder(requests)
    assert isinstance(outcomes[1], InvalidInput) and "QUERY" in str(outcomes[1])
    for request, outcome in zip(requests[::2], outcomes[::2], strict=True):
        (alone,) = encoder([request])
        assert outcome[EMBEDDING].shape == (len(request[TEXT]), context.schema.embedding_dim)
        np.testing.assert_allclose(outcome[EMBEDDING], alone[EMBEDDING], atol=1e-5)
    np.testing.assert_array_equal(outcomes[2][EMBEDDING][1], 0.0)
    # The same tower as the ensemble's wiring gives anywhere in the repository (cold items use this).
    via_ensemble = TextEncoder.serving(context, EMBED_QUERY).embed(np.array([b"red shoes"], dtype=object))
    np.testing.assert_allclose(via_ensemble, outcomes[0][EMBEDDING], atol=1e-5)


def test_the_embedded_query_encoder_cuts_each_run_to_its_longest_text_and_embeds_as_bucket_padding_does(
    embedded_repo: Path,
) -> None:
    """Each bucket's run is as wide as its longest text (padding only adds cost), and every text,
    blank included, gets the embedding the full bucket padding gives it."""
    from aisle.model_repository.text_encoder import TextEncoder

    encoder = TextEncoder.from_context(ModelContext.load(embedded_repo, QUERY_ENCODER))
    graph_run, widths = encoder.graph.run, []

    def recording_run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        widths.append(feeds[INPUT_IDS].shape[1])
        return graph_run(feeds)

    encoder.graph.run = recording_run
    texts = ["red shoes", "shoes", "", "waterproof hiking boots for winter with extra grip"]
    outcomes = encoder([text_request(text) for text in texts])
    tokenizer, bucketing = encoder.tokenizer.tokenizer, encoder.tokenizer.bucketing
    lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    by_bucket: dict[int, list[int]] = {}
    for text, n in zip(texts, lengths):
        by_bucket.setdefault(bucketing.bucket_for(n), []).append(n if text else 0)
    assert widths == [max(group) for group in by_bucket.values()]
    assert len(by_bucket) == 2 and all(w < b for w, b in zip(widths, by_bucket))  # both runs cut
    for text, outcome in zip(texts, outcomes, strict=True):
        ids, mask = encode_batch(tokenizer, [text], bucketing)
        padded = graph_run({INPUT_IDS: ids, ATTENTION_MASK: mask})[EMBEDDING]
        np.testing.assert_allclose(outcome[EMBEDDING], padded, atol=1e-5)
    np.testing.assert_array_equal(outcomes[2][EMBEDDING], 0.0)


def test_a_model_runs_its_graph_on_the_threads_its_rendered_config_declares(embedded_repo: Path) -> None:
    """The head runs single-threaded where the schema says so; otherwise a model's instances share the cores."""
    config = read_config(embedded_repo / FUSION_HEAD)
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters[INTRA_OP_THREADS_PARAMETER] == str(build_schema(8).model(FUSION_HEAD).intra_op_threads) == "1"
    head = OrtGraph.from_context(ModelContext.load(embedded_repo, FUSION_HEAD, parameters=parameters))
    assert head.session.get_session_options().intra_op_num_threads == 1
    alone = OrtGraph.from_context(ModelContext.load(embedded_repo, QUERY_ENCODER))  # none declared
    assert alone.session.get_session_options().intra_op_num_threads == 0  # onnxruntime's default
    shared = OrtGraph.from_context(ModelContext.load(embedded_repo, QUERY_ENCODER, instances=2))
    assert shared.session.get_session_options().intra_op_num_threads == max(1, len(os.sched_getaffinity(0)) // 2)
