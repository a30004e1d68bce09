"""Search's stage 1 (retriever) and stages 1+2 (catalog_search) on a rendered catalog, in-process;
an ANN index through export and serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aisle.client import AisleClient, Filters
from aisle.export.repo_format import RepoManifest, catalog_dir, graph_file
from aisle.export.repository import RepoSpec, render_repository
from aisle.export.targets import target_named
from aisle.model_repository.catalog_search import CatalogSearch, best_first
from aisle.model_repository.catalog_store import CatalogStore
from aisle.model_repository.context import ModelContext
from aisle.model_repository.errors import InvalidInput
from aisle.model_repository.ort_runner import OrtGraph
from aisle.model_repository.retriever import Retriever
from aisle.model_repository.server import ServerConfig, TritonServer, free_ports
from aisle.model_repository.text_encoder import EmbedsItsText, TextEncoder
from aisle.retrieval import ATTRIBUTES_FILE, INDEX_FILE, PAD_ROW, ExactIndex, ItemAttributes, Popularity
from aisle.schema import (
    BRANDS,
    CATALOG_SEARCH,
    CATEGORY,
    EMBED_QUERY,
    EXCLUDE_BRANDS,
    EXCLUDE_IDS,
    FUSION_HEAD,
    ITEM_IDS,
    ITEM_STORE,
    PRICE_RANGE,
    QUERY,
    QUERY_EMBEDDING,
    SCORES,
    TOP_K,
    USER_HISTORY_IDS,
    ServingLimits,
)

SEARCH_DEPTH, RECOMMEND_DEPTH = 4, 5


@pytest.fixture(scope="module")
def retriever(embedded_repo: Path) -> Retriever:
    store = CatalogStore.open(catalog_dir(embedded_repo))
    attributes = ItemAttributes.load(store.directory / ATTRIBUTES_FILE)
    limits = ServingLimits(search_depth=SEARCH_DEPTH, recommend_depth=RECOMMEND_DEPTH, max_results=SEARCH_DEPTH)
    return Retriever(store, attributes, ExactIndex(store.catalog.embeddings), limits)


def request(dim: int, *, query: np.ndarray | None = None, max_price: float = np.nan) -> dict[str, np.ndarray]:
    return {
        QUERY_EMBEDDING: np.zeros((1, dim), np.float32) if query is None else query[None],
        USER_HISTORY_IDS: np.zeros((1, 0), np.int64),
        TOP_K: np.array([[3]], np.int64),
        CATEGORY: np.array([[b""]], object),
        BRANDS: np.zeros((1, 0), object),
        EXCLUDE_BRANDS: np.zeros((1, 0), object),
        PRICE_RANGE: np.array([[np.nan, max_price]], np.float32),
        EXCLUDE_IDS: np.zeros((1, 0), np.int64),
    }


def candidate_ids(retriever: Retriever, request: dict[str, np.ndarray]) -> np.ndarray:
    (candidates,) = retriever.retrieve([retriever.check(request)])
    rows = candidates.rows
    return np.where(rows != PAD_ROW, retriever.store.catalog.item_ids[rows], PAD_ROW)


def test_no_query_and_no_history_retrieves_the_most_popular_allowed_items(retriever: Retriever) -> None:
    catalog = retriever.store.catalog
    rows, _ = Popularity(np.asarray(catalog.features)).top(RECOMMEND_DEPTH)
    np.testing.assert_array_equal(candidate_ids(retriever, request(catalog.dim)), catalog.item_ids[rows])
    cap = float(np.median(catalog.features[:, 0]))
    allowed = catalog.features[:, 0] <= cap
    rows, _ = Popularity(np.asarray(catalog.features)).top(RECOMMEND_DEPTH, allowed)
    np.testing.assert_array_equal(candidate_ids(retriever, request(catalog.dim, max_price=cap)), catalog.item_ids[rows])


def test_a_query_retrieves_its_nearest_items_and_pads_what_a_filter_leaves_out(retriever: Retriever) -> None:
    catalog = retriever.store.catalog
    query = np.asarray(catalog.embeddings[7])
    nearest = np.argsort(-(np.asarray(catalog.embeddings) @ query), kind="stable")[:SEARCH_DEPTH]
    assert set(candidate_ids(retriever, request(catalog.dim, query=query))) == set(catalog.item_ids[nearest])
    cheapest = float(np.nanmin(catalog.features[:, 0]))
    ids = candidate_ids(retriever, request(catalog.dim, query=query, max_price=cheapest))
    assert ids.shape == (SEARCH_DEPTH,) and (ids[1:] == -1).all() and ids[0] >= 0


def test_catalog_search_scores_each_requests_candidates_with_the_head(
    retriever: Retriever, embedded_repo: Path
) -> None:
    """A batch mixing searches, a feed and filters (two requests sharing each retrieval call):
    each gets what it gets alone, its own depth, the head's scores for its candidates, best first,
    without padding rows."""
    head = OrtGraph(graph_file(embedded_repo, FUSION_HEAD))
    search = CatalogSearch(retriever, head)
    catalog = retriever.store.catalog
    query = np.asarray(catalog.embeddings[7])
    history = {USER_HISTORY_IDS: catalog.item_ids[None, :3]}
    cheapest = float(np.nanmin(catalog.features[:, 0]))
    median = float(np.nanmedian(catalog.features[:, 0]))
    other = np.asarray(catalog.embeddings[11])
    batch = [
        request(catalog.dim, query=query) | history,
        request(catalog.dim, query=other),
        request(catalog.dim) | history,
        request(catalog.dim, query=query, max_price=cheapest),
        request(catalog.dim, query=other, max_price=median) | history,
    ]
    outcomes = search(batch)
    for req, outcome in zip(batch, outcomes):
        (candidates,) = retriever.retrieve([retriever.check(req)])
        scores = head.run(search.head_inputs([candidates]))[SCORES][0]
        ids, best = best_first(scores, search.ids(candidates.rows), 3)
        np.testing.assert_array_equal(outcome[ITEM_IDS][0], ids)
        np.testing.assert_allclose(outcome[SCORES][0], best, rtol=0, atol=1e-6)
        assert np.all(np.diff(outcome[SCORES][0]) <= 0) and PAD_ROW not in outcome[ITEM_IDS][0]
    assert [len(o[ITEM_IDS][0]) for o in outcomes] == [3, 3, 3, 1, 3]


@pytest.mark.server
def test_an_ivf_index_round_trips_through_export_and_serves_the_exact_results(
    serving_checkpoint: Path, tiny_data: Path, onnx_dir: Path, tmp_path: Path, triton_server: TritonServer
) -> None:
    out = tmp_path / "ivf"
    manifest = render_repository(
        RepoSpec(
            serving_checkpoint,
            tiny_data,
            out,
            target_named("embedded"),
            onnx_dir=onnx_dir,
            progress=False,
            index_kind="ivf",
        )
    )
    assert manifest.index["kind"] == "ivf" and RepoManifest.load(out).index == manifest.index
    assert (catalog_dir(out) / INDEX_FILE).is_file()
    server = TritonServer(ServerConfig(out, *free_ports(3)))
    with server, AisleClient(server.grpc_url) as ivf, AisleClient(triton_server.grpc_url) as exact:
        for query, filters in (("running shoes", None), ("tent", Filters(max_price=200.0)), ("", None)):
            got, want = ivf.search(query, top_k=10, filters=filters), exact.search(query, top_k=10, filters=filters)
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-5)


def test_a_batch_of_only_invalid_requests_gets_one_error_each(retriever: Retriever, embedded_repo: Path) -> None:
    search = CatalogSearch(retriever, OrtGraph(graph_file(embedded_repo, FUSION_HEAD)))
    dim = retriever.store.catalog.dim
    outcomes = search([request(dim) | {TOP_K: np.array([[0]], np.int64)}, request(dim, max_price=-1.0)])
    assert [type(o).__name__ for o in outcomes] == ["InvalidInput", "InvalidInput"]
    assert TOP_K in str(outcomes[0]) and "PRICE_RANGE" in str(outcomes[1])


def test_the_embedded_catalog_search_embeds_its_query_text_as_the_two_step_search_does(embedded_repo: Path) -> None:
    """On the embedded target the query encoder is folded into catalog_search, which takes QUERY
    text: each request of a mixed batch gets what embed_query's embedding fed to the unfolded
    logic gives it alone; a query that is not UTF-8 is refused naming QUERY and a bad TOP_K naming
    TOP_K, and the rest of the batch is served. Models with nothing folded keep their logic."""
    context = ModelContext.load(embedded_repo, CATALOG_SEARCH)
    assert context.decl.inputs[0].name == QUERY
    search = CatalogSearch.from_context(context)
    folded = EmbedsItsText.wrap(context, search)
    query_tower = TextEncoder.serving(context, EMBED_QUERY)
    dim = context.schema.embedding_dim
    catalog = search.retriever.store.catalog

    def text_request(text: bytes, **extra: np.ndarray) -> dict[str, np.ndarray]:
        fields = {name: value for name, value in request(dim).items() if name != QUERY_EMBEDDING}
        return fields | {QUERY: np.array([[text]], dtype=object)} | extra

    batch = [
        text_request(b"running shoes"),
        text_request(b"caf\xe9"),
        text_request(b"", **{USER_HISTORY_IDS: catalog.item_ids[None, :2]}),
        text_request(b"tent", **{TOP_K: np.array([[0]], np.int64)}),
        text_request(b"waterproof hiking boots for winter trails", **{PRICE_RANGE: np.array([[10, 90]], np.float32)}),
    ]
    outcomes = folded(batch)
    assert isinstance(outcomes[1], InvalidInput) and QUERY in str(outcomes[1])
    assert isinstance(outcomes[3], InvalidInput) and TOP_K in str(outcomes[3])
    for index in (0, 2, 4):
        fields = {name: value for name, value in batch[index].items() if name != QUERY}
        query = query_tower.embed(batch[index][QUERY].reshape(-1))
        (alone,) = search([fields | {QUERY_EMBEDDING: query}])
        np.testing.assert_array_equal(outcomes[index][ITEM_IDS], alone[ITEM_IDS])
        np.testing.assert_allclose(outcomes[index][SCORES], alone[SCORES], rtol=0, atol=1e-5)
        assert outcomes[index][ITEM_IDS].shape == (1, 3)
    item_store = ModelContext.load(embedded_repo, ITEM_STORE)
    assert EmbedsItsText.wrap(item_store, search) is search
