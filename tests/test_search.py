"""Whole-catalog search and recommendation, served: a real tritonserver on the tiny shop.

Filters act inside retrieval, so on the tiny catalog (300 items) a filtered search must return
exactly min(top_k, allowed) items however few the filter allows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from aisle.benchmarks.drills.traffic import pending_requests
from aisle.cli import main as aisle_main
from aisle.client import AisleClient, AsyncAisleClient, Filters, InvalidInputError
from aisle.data.format import ITEMS, Item, read_items, write_jsonl
from aisle.export.repo_format import RepoManifest
from aisle.model_repository.server import TritonServer
from aisle.retrieval.attributes import category_path
from aisle.schema import (
    BRANDS,
    CATALOG_SEARCH,
    CATEGORY,
    EXCLUDE_BRANDS,
    EXCLUDE_IDS,
    ITEM_IDS,
    PRICE_RANGE,
    QUERY,
    SEARCH,
    TOP_K,
    USER_HISTORY_IDS,
)
from tests.fixtures.server import model_statistics
from tests.test_serving import http_infer

pytestmark = pytest.mark.server

QUERIES = ["running shoes", "", "waterproof hiking jacket", "coffee grinder"]


@pytest.fixture(scope="module")
def items(tiny_data: Path) -> dict[int, Item]:
    return {item.item_id: item for item in read_items(tiny_data / ITEMS)}


@pytest.fixture(scope="module")
def client(triton_server: TritonServer) -> Iterator[AisleClient]:
    with AisleClient(triton_server.grpc_url) as client:
        yield client


def allows(filters: Filters, item: Item) -> bool:
    """The filter policy, item by item (what the vectorised mask must agree with)."""
    path = category_path(item.category)
    return (
        (filters.category is None or path == filters.category or path.startswith(filters.category + " > "))
        and (not filters.brands or item.brand in filters.brands)
        and item.brand not in filters.exclude_brands
        and (filters.min_price is None or item.price >= filters.min_price)
        and (filters.max_price is None or item.price <= filters.max_price)
        and item.item_id not in filters.exclude_ids
    )


def test_search_returns_top_k_catalog_items_best_first(client: AisleClient, items: dict[int, Item]) -> None:
    result = client.search("running shoes", top_k=7)
    assert len(result) == 7 and len(set(result.ids.tolist())) == 7
    assert set(result.ids.tolist()) <= set(items)
    assert np.all(np.diff(result.scores) <= 0)


@st.composite
def filters_strategy(draw: st.DrawFn, items: dict[int, Item]) -> Filters:
    catalog = list(items.values())
    prefixes = sorted({" > ".join(i.category[:d]) for i in catalog for d in range(1, len(i.category) + 1)})
    brands = sorted({i.brand for i in catalog})
    prices = sorted(i.price for i in catalog)
    low = draw(st.none() | st.sampled_from(prices))
    high = draw(st.none() | st.sampled_from([p for p in prices if low is None or p >= low]))
    return Filters(
        category=draw(st.none() | st.sampled_from(prefixes)),
        brands=tuple(draw(st.lists(st.sampled_from(brands), max_size=3, unique=True))),
        exclude_brands=tuple(draw(st.lists(st.sampled_from(brands), max_size=3, unique=True))),
        min_price=low,
        max_price=high,
        exclude_ids=tuple(draw(st.lists(st.sampled_from(sorted(items)), max_size=20, unique=True))),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_result_honours_every_filter_and_narrow_filters_still_fill_top_k(
    client: AisleClient, items: dict[int, Item], data: st.DataObject
) -> None:
    filters = data.draw(filters_strategy(items))
    query = data.draw(st.sampled_from(QUERIES))
    history = data.draw(st.lists(st.sampled_from(sorted(items)), max_size=3))
    top_k = data.draw(st.integers(1, 40))
    result = client.search(query, user_history_ids=history, top_k=top_k, filters=filters)
    allowed = [item for item in items.values() if allows(filters, item)]
    assert len(result) == min(top_k, len(allowed))
    assert all(allows(filters, items[int(i)]) for i in result.ids)
    assert not set(result.ids.tolist()) & set(filters.exclude_ids)
    assert np.all(np.diff(result.scores) <= 0)


def test_a_filter_that_matches_nothing_is_an_empty_result(client: AisleClient, items: dict[int, Item]) -> None:
    cheapest = min(item.price for item in items.values())
    result = client.search("shoes", filters=Filters(max_price=cheapest / 2))
    assert len(result) == 0 and result.scores.dtype == np.float32


def test_recommend_without_history_returns_popular_items_ranked(client: AisleClient) -> None:
    first, second = client.recommend([], top_k=10), client.recommend([], top_k=10)
    assert len(first) == 10
    np.testing.assert_array_equal(first.ids, second.ids)


def test_an_unknown_brand_names_the_tensor_and_suggests_close_names(
    client: AisleClient, items: dict[int, Item]
) -> None:
    brand = next(iter(items.values())).brand
    with pytest.raises(InvalidInputError, match=rf"{BRANDS}: .*{brand[:-1]}.*{brand}"):
        client.search("shoes", filters=Filters(brands=(brand[:-1],)))


def search_inputs(**overrides: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {
        QUERY: np.array([[b"running shoes"]], object),
        USER_HISTORY_IDS: np.zeros((1, 0), np.int64),
        TOP_K: np.array([[5]], np.int64),
        CATEGORY: np.array([[b""]], object),
        BRANDS: np.zeros((1, 0), object),
        EXCLUDE_BRANDS: np.zeros((1, 0), object),
        PRICE_RANGE: np.full((1, 2), np.nan, np.float32),
        EXCLUDE_IDS: np.zeros((1, 0), np.int64),
    }
    return {**arrays, **overrides}


def raw_search(server: TritonServer, arrays: dict[str, np.ndarray]) -> np.ndarray:
    inputs = []
    for name, array in arrays.items():
        infer_input = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    with grpcclient.InferenceServerClient(server.grpc_url) as raw:
        return raw.infer(SEARCH, inputs).as_numpy(ITEM_IDS)


def test_over_http_json_zero_and_a_max_above_every_price_leave_the_price_open(triton_server: TritonServer) -> None:
    """JSON has no NaN, so the README tells HTTP/JSON callers to send [0, 1e30] for an open range:
    the same results as NaN's open range over gRPC."""
    json_range = search_inputs(**{PRICE_RANGE: np.array([[0, 1e30]], np.float32)})
    ids = http_infer(triton_server, SEARCH, json_range, ITEM_IDS)
    np.testing.assert_array_equal(ids.astype(np.int64), raw_search(triton_server, search_inputs()))


BAD_SEARCHES = {
    "top-k-zero": ({TOP_K: np.array([[0]], np.int64)}, TOP_K, "0"),
    "top-k-above-max": ({TOP_K: np.array([[101]], np.int64)}, TOP_K, "max_results=100"),
    "unknown-history": ({USER_HISTORY_IDS: np.array([[987654]], np.int64)}, USER_HISTORY_IDS, "987654"),
    "negative-history": ({USER_HISTORY_IDS: np.array([[-3]], np.int64)}, USER_HISTORY_IDS, "-3"),
    "min-above-max": ({PRICE_RANGE: np.array([[50, 10]], np.float32)}, PRICE_RANGE, "50"),
    "infinite-price": ({PRICE_RANGE: np.array([[np.inf, np.nan]], np.float32)}, PRICE_RANGE, "inf"),
    "negative-price": ({PRICE_RANGE: np.array([[-1, np.nan]], np.float32)}, PRICE_RANGE, "-1"),
    "unknown-category": ({CATEGORY: np.array([[b"Shoez"]], object)}, CATEGORY, "Shoez"),
    "negative-excluded-id": ({EXCLUDE_IDS: np.array([[4, -7]], np.int64)}, EXCLUDE_IDS, "-7"),
    "too-many-excluded-ids": ({EXCLUDE_IDS: np.arange(1001, dtype=np.int64)[None]}, EXCLUDE_IDS, "1001"),
    "brand-not-utf8": ({EXCLUDE_BRANDS: np.array([[b"\xc3("]], object)}, EXCLUDE_BRANDS, "UTF-8"),
    "too-many-brands": ({BRANDS: np.array([[b"x"] * 101], object)}, BRANDS, "max_filter_brands=100"),
}


@pytest.mark.parametrize(("overrides", "tensor", "value"), BAD_SEARCHES.values(), ids=BAD_SEARCHES.keys())
def test_bad_search_is_invalid_argument_naming_the_tensor(
    triton_server: TritonServer, overrides: dict, tensor: str, value: str
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        raw_search(triton_server, search_inputs(**overrides))
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert tensor in caught.value.message() and value in caught.value.message(), caught.value.message()


def test_a_burst_of_bad_searches_leaves_the_server_ready_with_nothing_in_flight(triton_server: TritonServer) -> None:
    for overrides, _, _ in list(BAD_SEARCHES.values()) * 3:
        with pytest.raises(InferenceServerException):
            raw_search(triton_server, search_inputs(**overrides))
    assert len(raw_search(triton_server, search_inputs())[0]) == 5
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as raw:
        assert raw.is_server_ready() and raw.is_model_ready(SEARCH)
    pending = pending_requests(triton_server.metrics_url)
    assert SEARCH in pending and CATALOG_SEARCH in pending
    assert all(count == 0 for count in pending.values()), pending


def search_executions(server: TritonServer) -> tuple[int, int]:
    """catalog_search's (inferences, executions) so far, from Triton's statistics."""
    stats = model_statistics(server.grpc_url, CATALOG_SEARCH)
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_concurrent_searches_of_different_shapes_batch_together_and_answer_as_alone(
    triton_server: TritonServer, client: AisleClient, items: dict[int, Item]
) -> None:
    """Requests whose history and filter lengths differ are merged into one catalog_search execution
    (ragged batching) and each gets exactly what it gets when sent alone."""
    ids = sorted(items)
    brands = sorted({item.brand for item in items.values()})
    calls = [
        {
            "query": ("running shoes", "wireless headphones", "")[k % 3],
            "user_history_ids": tuple(ids[k : k + k % 5]),
            "top_k": 3 + k % 4,
            "filters": Filters(exclude_brands=tuple(brands[: k % 3]), exclude_ids=tuple(ids[: k % 4])),
        }
        for k in range(24)
    ]
    alone = [client.search(**call) for call in calls]
    before = search_executions(triton_server)

    async def together() -> list:
        async with AsyncAisleClient(triton_server.grpc_url) as aio:
            return await asyncio.gather(*(aio.search(**call) for call in calls))

    merged = asyncio.run(together())
    inferences, executions = (now - then for now, then in zip(search_executions(triton_server), before))
    assert inferences == len(calls) and executions < inferences, (inferences, executions)
    for single, batched in zip(alone, merged):
        np.testing.assert_array_equal(batched.ids, single.ids)
        np.testing.assert_allclose(batched.scores, single.scores, rtol=0, atol=1e-5)


def test_the_client_refuses_what_the_server_limits_before_sending(client: AisleClient) -> None:
    with pytest.raises(InvalidInputError, match="top_k: 101 results asked, more than the server's max_results=100"):
        client.search("shoes", top_k=101)
    with pytest.raises(InvalidInputError, match="filters.exclude_ids: 1001 entries"):
        client.search("shoes", filters=Filters(exclude_ids=tuple(range(1001))))


def test_search_and_recommend_cli_print_titles_brands_and_prices(
    triton_server: TritonServer,
    tiny_data: Path,
    items: dict[int, Item],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = ["--url", triton_server.grpc_url, "--data", str(tiny_data)]
    assert aisle_main(["search", "running shoes", "--top-k", "3", "--max-price", "1000000", *url]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and "title | brand | category | price" in lines[0]
    item = items[int(lines[1].split()[1])]
    assert item.title in lines[1] and item.brand in lines[1] and f"{item.price:.2f}" in lines[1]
    # A later --data (e.g. the items given to `aisle catalog upsert`) wins; ids in none are marked.
    renamed = tmp_path / "renamed.jsonl"
    write_jsonl(renamed, [dataclasses.replace(item, title="Renamed Thing")])
    assert aisle_main(["search", "running shoes", "--top-k", "3", *url, "--data", str(renamed)]) == 0
    assert "Renamed Thing |" in capsys.readouterr().out.splitlines()[1]
    only_renamed = ["--url", triton_server.grpc_url, "--data", str(renamed)]
    assert aisle_main(["search", "running shoes", "--top-k", "3", *only_renamed]) == 0
    assert "(not in --data" in capsys.readouterr().out.splitlines()[2]
    history = ",".join(str(i) for i in sorted(items)[:3])
    assert aisle_main(["recommend", "--history", history, "--top-k", "2", "--json", *url]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 2
    # No history: a new visitor's shelf (the popularity fallback), not a usage error.
    assert aisle_main(["recommend", "--top-k", "2", "--json", *url]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 2
    assert math.isfinite(RepoManifest.load(triton_server.config.repo).catalog_items)


def test_served_search_equals_the_offline_reference_on_the_exact_index(
    client: AisleClient, serving_checkpoint: Path, tiny_data: Path, items: dict[int, Item]
) -> None:
    """Same ids, scores within 1e-4: the checkpoint's PyTorch towers and head through the reference
    ranking of `aisle evaluate` (search_depth / recommend_depth candidates, then the head) against the server."""
    from aisle.data.format import load_dataset
    from aisle.modeling.loading import embed_texts, load_checkpoint
    from aisle.modeling.user import user_vector
    from aisle.tokenization import Bucketing, load_tokenizer
    from aisle.training.catalog_eval import reference_ranking

    ckpt = load_checkpoint(serving_checkpoint)
    limits = ckpt.manifest.limits
    ids = np.array(sorted(items), dtype=np.int64)
    item_tokenizer = load_tokenizer(ckpt.item_dir, limits.item_buckets[-1])
    texts = [items[int(i)].text() for i in ids]
    catalog = embed_texts(ckpt.item_tower, item_tokenizer, texts, Bucketing(limits.item_buckets)).numpy()
    features = np.array([items[int(i)].features() for i in ids], dtype=np.float32)
    sessions = [s for s in load_dataset(tiny_data).sessions if s.history][:6]
    queries = [s.query for s in sessions] + ["", ""]
    histories = [s.history for s in sessions] + [sessions[0].history, ()]
    query_tokenizer = load_tokenizer(ckpt.query_dir, limits.query_buckets[-1])
    query_vectors = embed_texts(ckpt.query_tower, query_tokenizer, queries, Bucketing(limits.query_buckets)).numpy()
    users = np.stack(
        [
            user_vector(catalog[np.searchsorted(ids, h)], limits.history_decay)
            if h
            else np.zeros(catalog.shape[1], np.float32)
            for h in histories
        ]
    ).astype(np.float32)
    reference = reference_ranking(ckpt.head, query_vectors, users, catalog, features, limits=limits, k=10)
    for i, (query, history) in enumerate(zip(queries, histories)):
        served = client.search(query, user_history_ids=list(history), top_k=10)
        np.testing.assert_array_equal(served.ids, ids[reference.rows[i]], err_msg=f"query {query!r}")
        np.testing.assert_allclose(served.scores, reference.scores[i], rtol=0, atol=1e-4)
