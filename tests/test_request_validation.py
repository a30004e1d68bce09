"""Property-based fuzzing of the request validators and the byte cut, without a server.

What must hold for any input Triton lets through (dtype and rank already checked by it): a
validator either accepts the request or returns InvalidInput naming one of its tensors; it never
raises anything else (a stray exception would become INTERNAL, or worse, stall an ensemble). And the
cut by bytes must not change what an ordinary text tokenizes to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aisle.export.repo_format import Catalog, RetiredItems
from aisle.model_repository.errors import InvalidInput
from aisle.model_repository.item_store import ItemStore
from aisle.model_repository.tokenizer_logic import BatchTokenizer
from aisle.model_repository.validation import CatalogIndex, RequestValidator, check_features, decode_texts, utf8_prefix
from aisle.modeling.user import user_vector
from aisle.schema import (
    CANDIDATE_FEATURES,
    CANDIDATE_IDS,
    CANDIDATE_TEXTS,
    INPUT_IDS,
    NUM_ITEM_FEATURES,
    QUERY,
    TEXT,
    USER_EMBEDDING,
    USER_HISTORY_IDS,
    ServingLimits,
    build_schema,
    validated,
)
from aisle.tokenization import Bucketing, load_tokenizer

LIMITS = ServingLimits(max_candidates=12, max_history=6)
SCHEMA = build_schema(6, LIMITS)
ITEM_IDS = np.array([3, 10, 11, 12, 20, 30, 4000], np.int64)
#: Items deleted from the live catalog: a history may name them, a candidate may not.
RETIRED_IDS = np.array([5, 25], np.int64)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Words as shops and shoppers write them: latin (accents), digits, CJK, emoji, punctuation.
WORD = st.text(
    alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyzéüß0123456789跑步鞋男款-/.,🏃👟")), min_size=1, max_size=20
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    rng = np.random.default_rng(0)
    n = len(ITEM_IDS)
    retired = RetiredItems.build(RETIRED_IDS, rng.standard_normal((len(RETIRED_IDS), 6)).astype(np.float32))
    return Catalog.build(
        ITEM_IDS, rng.standard_normal((n, 6)).astype(np.float32), rng.random((n, 4)).astype(np.float32), retired
    )


# --- the byte cut ------------------------------------------------------------------------------------


@given(text=st.text(), max_bytes=st.integers(0, 64))
def test_utf8_prefix_is_the_longest_whole_character_prefix_within_the_limit(text: str, max_bytes: int) -> None:
    data = text.encode()
    cut = utf8_prefix(data, max_bytes)
    assert data.startswith(cut) and len(cut) <= max_bytes
    decoded = cut.decode("utf-8")  # never splits a character
    assert text.startswith(decoded)
    if len(data) > max_bytes:  # and leaves out only the character the limit falls inside
        assert len(cut) > max_bytes - 4


def test_bytes_past_the_cut_are_never_read() -> None:
    texts = np.array([[b"running shoes" + b"\xff" * 10]], dtype=object)
    assert decode_texts(texts, QUERY, max_bytes=13) == ["running shoes"]
    with pytest.raises(InvalidInput, match="QUERY: element"):
        decode_texts(texts, QUERY)


@pytest.fixture(scope="module")
def tokenizers(base_model_dir: Path) -> dict[str, BatchTokenizer]:
    """Uncut tokenizers and the served, cutting ones, for the query and item buckets."""
    made = {}
    for name, buckets in (("query", LIMITS.query_buckets), ("item", LIMITS.item_buckets)):
        tokenizer = load_tokenizer(base_model_dir, buckets[-1])
        made[name] = BatchTokenizer(tokenizer, Bucketing(buckets), max_text_bytes=LIMITS.max_text_bytes(buckets))
        made[f"{name}-uncut"] = BatchTokenizer(tokenizer, Bucketing(buckets), max_text_bytes=2**40)
    return made


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(WORD, min_size=1, max_size=60), repeat=st.integers(1, 400), kind=st.sampled_from(["query", "item"])
)
def test_the_cut_keeps_the_ids_of_ordinary_texts_longer_than_the_largest_bucket(
    tokenizers: dict[str, BatchTokenizer], words: list[str], repeat: int, kind: str
) -> None:
    text = " ".join(words * repeat).encode()
    request = {TEXT: np.array([[text]], dtype=object)}
    (cut,) = tokenizers[kind]([request])
    (uncut,) = tokenizers[f"{kind}-uncut"]([request])
    np.testing.assert_array_equal(cut[INPUT_IDS], uncut[INPUT_IDS])


def test_a_10mb_text_costs_what_its_cut_costs(tokenizers: dict[str, BatchTokenizer]) -> None:
    import time

    text = b"trail running shoes with extra cushioning " * (10 * 2**20 // 42)
    start = time.perf_counter()
    (outcome,) = tokenizers["query"]([{TEXT: np.array([[text]], dtype=object)}])
    assert time.perf_counter() - start < 0.5  # uncut: ~8 s of tokenizing on the reference CPU
    assert outcome[INPUT_IDS].shape == (1, LIMITS.query_buckets[-1])


def test_text_byte_limits_follow_the_largest_bucket() -> None:
    assert LIMITS.max_query_bytes == LIMITS.query_buckets[-1] * LIMITS.text_bytes_per_token
    assert LIMITS.max_item_text_bytes == LIMITS.item_buckets[-1] * LIMITS.text_bytes_per_token
    with pytest.raises(ValueError, match="text_bytes_per_token=0: must be at least 1"):
        ServingLimits(text_bytes_per_token=0)


# --- infinite features --------------------------------------------------------------------------------


def test_infinite_features_are_refused_naming_position_and_nan_is_unknown() -> None:
    texts = np.array([[b"a", b"b"]], dtype=object)
    features = np.full((1, 2, NUM_ITEM_FEATURES), np.nan, np.float32)
    check_features(features, texts, NUM_ITEM_FEATURES)  # NaN: unknown, accepted
    features[0, 1, 3] = -np.inf
    with pytest.raises(InvalidInput, match=r"CANDIDATE_FEATURES: \[0, 1, 3\] = -inf is infinite"):
        check_features(features, texts, NUM_ITEM_FEATURES)


def test_a_history_counts_a_deleted_item_with_its_kept_embedding_and_a_candidate_may_not_name_it(
    catalog: Catalog,
) -> None:
    retired = catalog.retired_items
    request = {
        QUERY: np.array([[b"lamp"]], dtype=object),
        CANDIDATE_IDS: ITEM_IDS[None, :2],
        USER_HISTORY_IDS: np.array([[ITEM_IDS[0], RETIRED_IDS[1]]]),
    }
    (outcome,) = ItemStore(catalog, SCHEMA)([request])
    history = np.stack([catalog.embeddings[0], retired.embeddings[1]])
    np.testing.assert_allclose(outcome[USER_EMBEDDING][0], user_vector(history, LIMITS.history_decay), rtol=1e-6)
    (refused,) = ItemStore(catalog, SCHEMA)([{**request, CANDIDATE_IDS: RETIRED_IDS[None, :1]}])
    assert str(refused) == "CANDIDATE_IDS: [0, 0] = 5 was deleted from the catalog (only user histories may name it)"
    (unknown,) = ItemStore(catalog, SCHEMA)([{**request, USER_HISTORY_IDS: np.array([[3, 7]])}])
    assert str(unknown) == "USER_HISTORY_IDS: [0, 1] = 7 is not an item of the served catalog (7 items, ids 3..4000)"


# --- fuzzing the validators ------------------------------------------------------------------------------

ids = hnp.arrays(
    np.int64,
    st.tuples(st.just(1), st.integers(0, 15)),
    elements=st.sampled_from([*ITEM_IDS.tolist(), *RETIRED_IDS.tolist()]) | st.integers(-(2**63), 2**63 - 1),
)
texts = st.binary(max_size=40) | WORD.map(str.encode)
features_value = st.floats(width=32, allow_nan=True, allow_infinity=True)


def outcome_is_well_formed(outcome: object, sent: set[str]) -> None:
    """Either output tensors or an InvalidInput that names a tensor of the request."""
    if isinstance(outcome, InvalidInput):
        assert outcome.tensor in sent and str(outcome).startswith(f"{outcome.tensor}: ")
    else:
        assert isinstance(outcome, dict) and outcome


def expected_valid(candidates: np.ndarray, history: np.ndarray, query: bytes) -> bool:
    try:
        query.decode("utf-8")
    except UnicodeDecodeError:
        return False
    served = set(ITEM_IDS.tolist())
    return (
        candidates.shape[-1] <= LIMITS.max_candidates
        and history.shape[-1] <= LIMITS.max_history
        and set(candidates.reshape(-1).tolist()) <= served
        and set(history.reshape(-1).tolist()) <= served | set(RETIRED_IDS.tolist())
    )


@FUZZ
@given(candidates=ids, history=ids, query=texts)
def test_item_store_accepts_exactly_the_valid_requests_and_names_the_tensor_otherwise(
    catalog: Catalog, candidates: np.ndarray, history: np.ndarray, query: bytes
) -> None:
    request = {QUERY: np.array([[query]], dtype=object), CANDIDATE_IDS: candidates, USER_HISTORY_IDS: history}
    (outcome,) = ItemStore(catalog, SCHEMA)([request])
    outcome_is_well_formed(outcome, set(request))
    assert isinstance(outcome, dict) == expected_valid(candidates, history, query)


@FUZZ
@given(
    data=st.data(),
    count=st.integers(0, 14),
    history=ids,
    query=texts,
)
def test_rank_cold_validator_never_fails_otherwise_than_naming_a_tensor(
    catalog: Catalog, data: st.DataObject, count: int, history: np.ndarray, query: bytes
) -> None:
    rows = data.draw(st.sampled_from([count, count + 1]))  # sometimes one feature row too many
    request = {
        QUERY: np.array([[query]], dtype=object),
        CANDIDATE_TEXTS: np.array([data.draw(st.lists(texts, min_size=count, max_size=count))], dtype=object).reshape(
            1, count
        ),
        CANDIDATE_FEATURES: data.draw(hnp.arrays(np.float32, (1, rows, NUM_ITEM_FEATURES), elements=features_value)),
        USER_HISTORY_IDS: history,
    }
    validator = RequestValidator(list(request), CatalogIndex.of(catalog), SCHEMA)
    (outcome,) = validator([request])
    outcome_is_well_formed(outcome, set(request))
    if rows != count or np.isinf(request[CANDIDATE_FEATURES]).any():
        assert isinstance(outcome, InvalidInput)


def test_first_steps_pass_on_the_cut_texts_not_what_was_sent(catalog: Catalog) -> None:
    big = "crème brûlée ".encode() * 100_000
    (stored,) = ItemStore(catalog, SCHEMA)(
        [
            {
                QUERY: np.array([[big]], dtype=object),
                CANDIDATE_IDS: ITEM_IDS[None, :2],
                USER_HISTORY_IDS: ITEM_IDS[None, :0],
            }
        ]
    )
    assert stored[validated(QUERY)].shape == (1, 1)
    assert stored[validated(QUERY)][0, 0] == utf8_prefix(big, LIMITS.max_query_bytes)
    texts = np.array([[big, b"kettle"]], dtype=object)
    request = {
        QUERY: np.array([[b"tea"]], dtype=object),
        CANDIDATE_TEXTS: texts,
        CANDIDATE_FEATURES: np.zeros((1, 2, NUM_ITEM_FEATURES), np.float32),
        USER_HISTORY_IDS: ITEM_IDS[None, :1],
    }
    (checked,) = RequestValidator(list(request), CatalogIndex(catalog.item_ids), SCHEMA)([request])
    assert checked[validated(CANDIDATE_TEXTS)].tolist() == [[utf8_prefix(big, LIMITS.max_item_text_bytes), b"kettle"]]
    np.testing.assert_array_equal(checked[validated(USER_HISTORY_IDS)], request[USER_HISTORY_IDS])
