"""Both clients against the real embedded tritonserver (the session's shared `triton_server`).

Expected values come from plain tritonclient calls built here by hand (tensor names from the
schema, shapes as the serving README documents them), so the SDK is checked against the raw
protocol rather than against itself.

Tolerance: the SDK and the raw calls send the same requests, but Triton's dynamic batcher may
merge them with different neighbours, and CPU GEMMs are not bitwise batch-invariant; values agree
to EXACT_ATOL, while different inputs differ by orders of magnitude more.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from aisle.cli import build_parser
from aisle.cli import main as aisle_main
from aisle.client import (
    AisleClient,
    AsyncAisleClient,
    ClientConfig,
    DeadlineExceededError,
    InvalidInputError,
    RankResult,
)
from aisle.client.errors import from_triton
from aisle.data.format import ITEMS, Item, read_items
from aisle.model_repository.server import TritonServer
from aisle.schema import (
    CANDIDATE_FEATURES,
    CANDIDATE_IDS,
    CANDIDATE_TEXTS,
    EMBED_ITEM,
    EMBED_QUERY,
    EMBEDDING,
    ENCODER_MAX_BATCH,
    ITEM_TEXT,
    MAX_HISTORY,
    NUM_ITEM_FEATURES,
    QUERY,
    RANK,
    RANK_COLD,
    SCORES,
    SEARCH,
    USER_HISTORY_IDS,
    ServingLimits,
)
from tests.fixtures.server import model_statistics

DEFAULT_LIMITS = ServingLimits()

pytestmark = pytest.mark.server

Raw = grpcclient.InferenceServerClient

EXACT_ATOL = 1e-5
QUERIES = ["running shoes", "", "   ", "waterproof hiking jacket for women", "kaffee 咖啡 ☕", "x " * 200]


@pytest.fixture(scope="module")
def catalog(tiny_data: Path) -> list[Item]:
    return read_items(tiny_data / ITEMS)


@pytest.fixture(scope="module")
def ids(catalog: list[Item]) -> np.ndarray:
    return np.array([item.item_id for item in catalog], dtype=np.int64)


@pytest.fixture(scope="module")
def client(triton_server: TritonServer) -> Iterator[AisleClient]:
    with AisleClient(triton_server.grpc_url) as client:
        yield client


@pytest.fixture(scope="module")
def raw(triton_server: TritonServer) -> Iterator[Raw]:
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as raw:
        yield raw


def raw_infer(raw: Raw, model: str, arrays: dict[str, np.ndarray], output: str) -> np.ndarray:
    """One plain tritonclient request."""
    inputs = []
    for name, array in arrays.items():
        infer_input = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return raw.infer(model, inputs).as_numpy(output)


def raw_embed(raw: Raw, model: str, tensor: str, texts: list[str]) -> np.ndarray:
    chunks = [texts[i : i + ENCODER_MAX_BATCH] for i in range(0, len(texts), ENCODER_MAX_BATCH)]
    return np.concatenate(
        [raw_infer(raw, model, {tensor: np.array(c, dtype=object)[:, None]}, EMBEDDING) for c in chunks]
    )


def raw_rank(raw: Raw, query: str, candidates: np.ndarray, history: np.ndarray) -> np.ndarray:
    arrays = {
        QUERY: np.array([[query]], dtype=object),
        CANDIDATE_IDS: candidates[None].astype(np.int64),
        USER_HISTORY_IDS: history[None].astype(np.int64),
    }
    return raw_infer(raw, RANK, arrays, SCORES)[0]


def raw_rank_cold(raw: Raw, query: str, texts: list[str], features: np.ndarray, history: np.ndarray) -> np.ndarray:
    arrays = {
        QUERY: np.array([[query]], dtype=object),
        CANDIDATE_TEXTS: np.array(texts, dtype=object)[None],
        CANDIDATE_FEATURES: features[None].astype(np.float32),
        USER_HISTORY_IDS: history[None].astype(np.int64),
    }
    return raw_infer(raw, RANK_COLD, arrays, SCORES)[0]


def assert_ranked(result: RankResult, candidates: np.ndarray, expected_raw: np.ndarray, top_k: int | None) -> None:
    """Raw scores equal the raw call's; ids/scores are those candidates sorted best first."""
    np.testing.assert_allclose(result.raw_scores, expected_raw, rtol=0, atol=EXACT_ATOL)
    order = np.argsort(-result.raw_scores, kind="stable")[:top_k]
    np.testing.assert_array_equal(result.ids, candidates[order])
    np.testing.assert_array_equal(result.scores, result.raw_scores[order])
    assert np.all(np.diff(result.scores) <= 0)


# --- Every method equals the raw call ---------------------------------------------------------------


def test_embed_queries_equal_the_raw_embed_query_call_across_chunks(client: AisleClient, raw: Raw) -> None:
    texts = [f"running shoes size {i}" for i in range(ENCODER_MAX_BATCH + 6)] + QUERIES
    embeddings = client.embed_queries(texts)
    assert embeddings.shape == (len(texts), client.schema.embedding_dim) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, raw_embed(raw, EMBED_QUERY, QUERY, texts), rtol=0, atol=EXACT_ATOL)


def test_embed_items_equal_the_raw_embed_item_call(client: AisleClient, raw: Raw, catalog: list[Item]) -> None:
    texts = [item.text() for item in catalog[:20]]
    np.testing.assert_allclose(
        client.embed_items(texts), raw_embed(raw, EMBED_ITEM, ITEM_TEXT, texts), rtol=0, atol=EXACT_ATOL
    )


def test_rank_equals_the_raw_rank_call_and_sorts_best_first(client: AisleClient, raw: Raw, ids: np.ndarray) -> None:
    candidates, history = ids[10:60], ids[[3, 1, 4]]
    result = client.rank("running shoes", candidates, history, top_k=10, request_id="rank-test")
    assert_ranked(result, candidates, raw_rank(raw, "running shoes", candidates, history), top_k=10)
    assert len(result) == 10 and result.request_id == "rank-test"


def test_rank_without_a_query_equals_a_raw_rank_call_with_an_empty_query(
    client: AisleClient, raw: Raw, ids: np.ndarray
) -> None:
    candidates, history = ids[:30], ids[[7, 8, 9, 2]]
    result = client.rank("", candidates, history)
    assert_ranked(result, candidates, raw_rank(raw, "", candidates, history), top_k=None)


def test_recommend_is_search_with_an_empty_query(client: AisleClient, ids: np.ndarray) -> None:
    history = ids[[7, 8, 9, 2]]
    recommended, searched = client.recommend(history, top_k=8), client.search("", user_history_ids=history, top_k=8)
    np.testing.assert_array_equal(recommended.ids, searched.ids)
    np.testing.assert_array_equal(recommended.scores, searched.scores)


def test_rank_with_an_empty_history_equals_the_raw_call(client: AisleClient, raw: Raw, ids: np.ndarray) -> None:
    candidates = ids[:5]
    assert_ranked(client.rank("tent", candidates), candidates, raw_rank(raw, "tent", candidates, ids[:0]), top_k=None)


def test_rank_cold_equals_the_raw_rank_cold_call(
    client: AisleClient, raw: Raw, catalog: list[Item], ids: np.ndarray
) -> None:
    items = catalog[:6]
    texts = [item.text() for item in items]
    features = np.array([item.features() for item in items], dtype=np.float32)
    features[1, 0] = np.nan  # unknown price
    result = client.rank_cold("rain jacket", texts, features, ids[[5, 6]], top_k=3)
    expected = raw_rank_cold(raw, "rain jacket", texts, features, ids[[5, 6]])
    assert_ranked(result, np.arange(len(texts)), expected, top_k=3)


def test_rank_cold_without_features_sends_them_as_unknown(client: AisleClient, raw: Raw, catalog: list[Item]) -> None:
    texts = [item.text() for item in catalog[:4]]
    unknown = np.full((4, NUM_ITEM_FEATURES), np.nan, dtype=np.float32)
    expected = raw_rank_cold(raw, "lamp", texts, unknown, np.zeros(0, np.int64))
    assert_ranked(client.rank_cold("lamp", texts), np.arange(4), expected, top_k=None)


def test_health_and_metadata_describe_the_served_repository(client: AisleClient, raw: Raw) -> None:
    assert client.is_ready()
    client.wait_until_ready(5.0)
    info = client.server_info()
    assert info.ready and set(info.ensembles_ready) == {EMBED_QUERY, EMBED_ITEM, RANK, RANK_COLD, SEARCH}
    assert info.version == raw.get_server_metadata().version and info.name == "triton"
    embedding = next(t for t in raw.get_model_metadata(EMBED_QUERY).outputs if t.name == EMBEDDING)
    assert info.embedding_dim == embedding.shape[-1] == client.schema.embedding_dim


def test_gzip_compressed_calls_return_the_same_results(
    triton_server: TritonServer, client: AisleClient, ids: np.ndarray
) -> None:
    with AisleClient(config=ClientConfig(url=triton_server.grpc_url, compression_algorithm="gzip")) as gzip:
        np.testing.assert_allclose(gzip.embed_queries(QUERIES), client.embed_queries(QUERIES), rtol=0, atol=EXACT_ATOL)
        np.testing.assert_allclose(
            gzip.rank("q", ids[:9]).raw_scores, client.rank("q", ids[:9]).raw_scores, rtol=0, atol=EXACT_ATOL
        )


def test_the_async_client_returns_what_the_sync_client_does(
    triton_server: TritonServer,
    client: AisleClient,
    catalog: list[Item],
    ids: np.ndarray,
) -> None:
    texts = [item.text() for item in catalog[:3]]

    async def calls() -> tuple:
        async with AsyncAisleClient(triton_server.grpc_url) as aclient:
            return (
                await aclient.embed_queries(QUERIES),
                await aclient.embed_items(texts),
                await aclient.rank("shoes", ids[:12], ids[[1]], top_k=4),
                await aclient.recommend(ids[[1, 2]], top_k=6),
                await aclient.rank_cold("shoes", texts),
                await aclient.is_ready(),
                await aclient.server_info(),
            )

    queries, items, ranked, recommended, cold, ready, info = asyncio.run(calls())
    np.testing.assert_allclose(queries, client.embed_queries(QUERIES), rtol=0, atol=EXACT_ATOL)
    np.testing.assert_allclose(items, client.embed_items(texts), rtol=0, atol=EXACT_ATOL)
    assert_ranked(ranked, ids[:12], client.rank("shoes", ids[:12], ids[[1]]).raw_scores, top_k=4)
    synced = client.recommend(ids[[1, 2]], top_k=6)
    np.testing.assert_array_equal(recommended.ids, synced.ids)
    np.testing.assert_allclose(recommended.scores, synced.scores, rtol=0, atol=EXACT_ATOL)
    assert_ranked(cold, np.arange(3), client.rank_cold("shoes", texts).raw_scores, top_k=None)
    assert ready and info == client.server_info()


# --- Concurrency ------------------------------------------------------------------------------------


def test_1000_concurrent_async_calls_each_return_their_own_result(
    triton_server: TritonServer, raw: Raw, ids: np.ndarray
) -> None:
    """100 distinct inputs (ranking and embedding), each asked 10 times, all 1,000 calls in flight at once."""
    rng = np.random.default_rng(0)
    rank_inputs = [
        (f"query {i}", rng.choice(ids, size=int(rng.integers(1, 40)), replace=False), rng.choice(ids, size=i % 4))
        for i in range(50)
    ]
    embed_inputs = [[f"text {i}", f"another text {i * 7}"] for i in range(50)]
    expected_scores = [raw_rank(raw, q, c, h) for q, c, h in rank_inputs]
    expected_embeddings = [raw_embed(raw, EMBED_QUERY, QUERY, texts) for texts in embed_inputs]

    async def run_all() -> list[RankResult | np.ndarray]:
        async with AsyncAisleClient(triton_server.grpc_url) as aclient:
            calls = [
                aclient.rank(*rank_inputs[(i // 2) % 50], request_id=f"call-{i}")
                if i % 2 == 0
                else aclient.embed_queries(embed_inputs[(i // 2) % 50], request_id=f"call-{i}")
                for i in range(1000)
            ]
            return await asyncio.gather(*calls)

    results = asyncio.run(run_all())
    assert len(results) == 1000
    for i, result in enumerate(results):
        k = (i // 2) % 50
        if i % 2 == 0:
            assert isinstance(result, RankResult) and result.request_id == f"call-{i}"
            assert_ranked(result, rank_inputs[k][1], expected_scores[k], top_k=None)
        else:
            np.testing.assert_allclose(result, expected_embeddings[k], rtol=0, atol=EXACT_ATOL)


# --- Errors -----------------------------------------------------------------------------------------


def test_an_unknown_item_id_is_the_servers_invalid_argument_with_its_message_and_request_id(
    client: AisleClient, ids: np.ndarray
) -> None:
    unknown = int(ids.max()) + 1000
    with pytest.raises(InvalidInputError) as info:
        client.rank("shoes", [int(ids[0]), unknown], request_id="bad-id-1")
    assert info.value.status == "INVALID_ARGUMENT" and info.value.request_id == "bad-id-1"
    assert CANDIDATE_IDS in info.value.message and str(unknown) in info.value.message
    assert client.is_ready()


def test_an_unknown_history_id_names_the_history_tensor(client: AisleClient, ids: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match=USER_HISTORY_IDS) as info:
        client.rank("", ids[:3], [int(ids.max()) + 1])
    assert info.value.status == "INVALID_ARGUMENT"


def test_a_history_longer_than_the_server_takes_is_scored_as_its_most_recent_items(
    client: AisleClient, ids: np.ndarray
) -> None:
    """An application sends a shopper's whole history; the server takes `max_history` ids (a raw
    request with more is INVALID_ARGUMENT, tests/test_serving.py), so the SDK sends the newest."""
    history = np.resize(ids, MAX_HISTORY + 9)
    whole = client.rank("tent", ids[:4], history)
    np.testing.assert_array_equal(whole.raw_scores, client.rank("tent", ids[:4], history[-MAX_HISTORY:]).raw_scores)
    assert not np.array_equal(whole.raw_scores, client.rank("tent", ids[:4], history[:MAX_HISTORY]).raw_scores)


def test_text_that_is_not_utf8_is_refused_by_the_server_naming_the_tensor(client: AisleClient) -> None:
    with pytest.raises(InvalidInputError, match=f"{QUERY}.*not valid UTF-8") as info:
        client.embed_queries([b"ok", b"caf\xe9"])
    assert info.value.status == "INVALID_ARGUMENT"


@dataclass(frozen=True)
class BadInput:
    """One bad input, as an SDK call and as the same tensors sent raw."""

    call: Callable[[AisleClient, np.ndarray], object]
    argument: str  # what the client's refusal names
    model: str
    tensors: Callable[[np.ndarray], dict[str, np.ndarray]]  # raw inputs besides QUERY
    tensor: str  # what the server's INVALID_ARGUMENT names


NO_HISTORY = np.zeros((1, 0), np.int64)
BAD_INPUTS = {
    "negative candidate id": BadInput(
        lambda c, ids: c.rank("q", [int(ids[0]), -3]),
        "candidate_ids",
        RANK,
        lambda ids: {CANDIDATE_IDS: np.array([[ids[0], -3]], np.int64), USER_HISTORY_IDS: NO_HISTORY},
        CANDIDATE_IDS,
    ),
    "too many candidates": BadInput(
        lambda c, ids: c.rank("q", np.resize(ids, DEFAULT_LIMITS.max_candidates + 1)),
        "candidate_ids",
        RANK,
        lambda ids: {
            CANDIDATE_IDS: np.resize(ids, (1, DEFAULT_LIMITS.max_candidates + 1)),
            USER_HISTORY_IDS: NO_HISTORY,
        },
        CANDIDATE_IDS,
    ),
    "cold features not matching the texts": BadInput(
        lambda c, ids: c.rank_cold("q", ["a", "b"], np.zeros((3, 4))),
        "candidate_features",
        RANK_COLD,
        lambda ids: {
            CANDIDATE_TEXTS: np.array([["a", "b"]], dtype=object),
            CANDIDATE_FEATURES: np.zeros((1, 3, 4), np.float32),
            USER_HISTORY_IDS: NO_HISTORY,
        },
        CANDIDATE_FEATURES,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_each_bad_input_is_refused_by_the_client_and_maps_to_invalid_input_from_the_server(
    case: str, client: AisleClient, raw: Raw, ids: np.ndarray
) -> None:
    bad = BAD_INPUTS[case]
    with pytest.raises(InvalidInputError, match=f"^{bad.argument}") as refused:
        bad.call(client, ids)
    assert refused.value.status is None  # refused before sending
    with pytest.raises(InferenceServerException) as answered:
        raw_infer(raw, bad.model, {QUERY: np.array([["q"]], dtype=object), **bad.tensors(ids)}, SCORES)
    mapped = from_triton(answered.value, request_id="raw", what=bad.model)
    assert isinstance(mapped, InvalidInputError) and mapped.status == "INVALID_ARGUMENT"
    assert bad.tensor in mapped.message
    assert client.is_ready()


def test_a_deadline_too_short_for_a_large_batch_raises_deadline_exceeded_and_the_client_recovers(
    client: AisleClient, catalog: list[Item]
) -> None:
    texts = [item.text() * 3 for item in catalog[:256]]
    with pytest.raises(DeadlineExceededError) as info:
        client.embed_items(texts, timeout_s=0.02, request_id="too-slow")
    assert info.value.request_id is not None and info.value.request_id.startswith("too-slow")
    assert client.embed_queries(["still works"]).shape[0] == 1


# --- CLI --------------------------------------------------------------------------------------------


def test_cli_search_prints_the_clients_ranking_as_json(
    triton_server: TritonServer,
    client: AisleClient,
    ids: np.ndarray,
    capsys: pytest.CaptureFixture[str],
) -> None:
    candidates = ",".join(str(i) for i in ids[:8])
    code = aisle_main(["search", "trail shoes", "--ids", candidates, "--history", str(ids[3]), "--top-k", "3",
                       "--url", triton_server.grpc_url, "--json"])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    expected = client.rank("trail shoes", ids[:8], ids[[3]], top_k=3)
    assert [r["id"] for r in printed["results"]] == expected.ids.tolist()
    np.testing.assert_allclose([r["score"] for r in printed["results"]], expected.scores, atol=EXACT_ATOL)


def test_cli_recommend_and_embed_print_tables(
    triton_server: TritonServer,
    ids: np.ndarray,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = triton_server.grpc_url
    assert (
        aisle_main(["recommend", "--history", f"{ids[1]},{ids[2]}", "--ids", f"{ids[4]},{ids[5]}", "--url", url]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "id", "score"] and len(lines) == 3
    assert aisle_main(["embed", "red shoes", "--item", "--url", url]) == 0
    assert "'red shoes': dim" in capsys.readouterr().out


def test_cli_ids_come_comma_separated_as_words_or_in_repeated_options(capsys: pytest.CaptureFixture[str]) -> None:
    parse = build_parser().parse_args
    args = parse(["search", "shoes", "--history", "3,40", "12", "--history", "7", "--exclude-ids", "5", "6,8"])
    assert (args.query, args.history, args.exclude_ids, args.ids) == ("shoes", [3, 40, 12, 7], [5, 6, 8], None)
    assert parse(["recommend", "--history", "1", "2", "3", "--ids", "9,4"]).ids == [9, 4]
    assert parse(["search", "--history", "1", "2", "--", "shoes"]).query == "shoes"
    with pytest.raises(SystemExit):
        parse(["search", "--history", "1", "2", "shoes"])
    assert "got 'shoes'; a search query goes before the id options" in capsys.readouterr().err


def test_cli_reports_a_bad_argument_as_a_user_error(
    triton_server: TritonServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert aisle_main(["search", "q", "--ids=-5,1", "--url", triton_server.grpc_url]) == 2
    assert "candidate_ids[0] = -5" in capsys.readouterr().err


def test_a_failed_chunk_stops_the_calls_other_chunks(triton_server: TritonServer) -> None:
    """The first chunk's texts are not UTF-8: the call fails, and chunks that had not started are
    never sent (one chunk at a time: the failed one, and at most the one or two the pool's thread
    took up before the failure was seen, of eight)."""

    def embed_item_requests() -> int:
        stats = model_statistics(triton_server.grpc_url, EMBED_ITEM)["inference_stats"]
        return sum(int(stats.get(outcome, {}).get("count", 0)) for outcome in ("success", "fail"))

    chunks = 8
    texts: list[str | bytes] = [b"\xff\xfe"] + ["red running shoes"] * (ENCODER_MAX_BATCH * chunks - 1)
    before = embed_item_requests()
    with AisleClient(triton_server.grpc_url, config=ClientConfig(max_concurrent_chunks=1)) as one_at_a_time:
        with pytest.raises(InvalidInputError, match="not valid UTF-8"):
            one_at_a_time.embed_items(texts)
    assert embed_item_requests() - before <= 3
