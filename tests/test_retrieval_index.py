"""aisle.retrieval's indexes: exact = brute force, ANN recall, filters inside the search, files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aisle.benchmarks import ann
from aisle.data.generator import PRESETS, generate
from aisle.retrieval import (
    ANN_MIN_ITEMS,
    PAD_ROW,
    ExactIndex,
    FaissIndex,
    Filters,
    IndexParams,
    ItemAttributes,
    RetrievalError,
    choose_index,
    filter_mask,
    load_index,
)
from aisle.retrieval.index import EXACT, HNSW, IVF, ivf_params

DIM = 32


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(embeddings: np.ndarray, query: np.ndarray, k: int, mask: np.ndarray | None) -> list[int]:
    """Top-k rows by a full sort of every allowed row's score, one query."""
    scores = embeddings @ query
    rows = [r for r in np.argsort(-scores, kind="stable") if mask is None or mask[r]]
    return [int(r) for r in rows[:k]]


@pytest.fixture(scope="module")
def catalog() -> tuple[ItemAttributes, np.ndarray]:
    """The tiny generated shop's attributes and random unit embeddings, one per row."""
    attributes = ItemAttributes.from_items(generate(PRESETS["tiny"], 0, preset="tiny").items)
    return attributes, unit_rows(np.random.default_rng(1), len(attributes))


@pytest.fixture(scope="module")
def indexes(catalog) -> dict[str, object]:
    """Every index kind over the catalog; the ANN ones never take the exact path by filter size."""
    _, embeddings = catalog
    no_fallback = {"exact_fallback_rows": 0}
    return {
        EXACT: ExactIndex(embeddings),
        IVF: FaissIndex.build(embeddings, IndexParams(kind=IVF, nlist=8, nprobe=2, **no_fallback)),
        HNSW: FaissIndex.build(embeddings, IndexParams(kind=HNSW, hnsw_m=8, **no_fallback)),
    }


@pytest.mark.parametrize("k", [1, 7, 50])
def test_exact_index_returns_the_brute_force_answer(k: int) -> None:
    rng = np.random.default_rng(k)
    embeddings, queries = unit_rows(rng, 500), unit_rows(rng, 5)
    shared = rng.random(500) < 0.3
    per_query = rng.random((5, 500)) < 0.5
    index = ExactIndex(embeddings)
    for mask in (None, shared, per_query):
        rows, scores = index.search(queries, k, mask)
        for i, query in enumerate(queries):
            row_mask = mask if mask is None or mask.ndim == 1 else mask[i]
            assert rows[i].tolist() == brute_force(embeddings, query, k, row_mask)
            np.testing.assert_allclose(scores[i], embeddings[rows[i]] @ query, rtol=1e-5, atol=1e-6)


def test_exact_index_breaks_ties_by_row_and_pads_past_the_allowed_rows() -> None:
    rng = np.random.default_rng(3)
    embeddings = np.repeat(unit_rows(rng, 10), 3, axis=0)  # rows 3i, 3i+1, 3i+2 are equal
    query = embeddings[4:5]
    rows, scores = ExactIndex(embeddings).search(query, 5)
    assert rows[0, :3].tolist() == [3, 4, 5] and scores[0, 0] == scores[0, 2]
    allowed = np.zeros(30, dtype=bool)
    allowed[[5, 4, 17]] = True
    rows, scores = ExactIndex(embeddings).search(query, 5, allowed)
    assert rows[0, :2].tolist() == [4, 5] and rows[0, 3:].tolist() == [PAD_ROW, PAD_ROW]
    assert np.isneginf(scores[0, 3:]).all() and np.isfinite(scores[0, :3]).all()


def test_ivf_recall_at_the_chosen_parameters_reaches_target() -> None:
    """The default IVF parameters of a 20k catalog vs exact, on the benchmark's clustered vectors."""
    rng = np.random.default_rng(0)
    n = 20_000
    lines = ann.line_centres(n, 384, rng)
    embeddings, queries = ann.clustered_embeddings(n, lines, rng), ann.clustered_embeddings(100, lines, rng)
    params = ivf_params(n)
    truth, _ = ExactIndex(embeddings).search(queries, 100)
    found, scores = FaissIndex.build(embeddings, params).search(queries, 100)
    recall = np.mean([len(np.intersect1d(f, t)) / 100 for f, t in zip(found, truth)])
    assert recall >= 0.95, f"recall@100 {recall:.3f} at {params}"
    # IVF-Flat scores are exact inner products of the rows it finds.
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", queries, embeddings[found]), atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), kind=st.sampled_from([EXACT, IVF, HNSW]), k=st.integers(1, 120))
def test_every_result_honours_every_filter(catalog, indexes, data, kind, k) -> None:
    attributes, embeddings = catalog
    prices = attributes.prices
    low = data.draw(st.none() | st.floats(0, float(prices.max()), allow_nan=False))
    ids = [int(i) for i in attributes.item_ids]
    filters = Filters(
        category=data.draw(st.none() | st.sampled_from(sorted(attributes.prefixes))),
        brands=tuple(data.draw(st.lists(st.sampled_from(attributes.brands), max_size=6, unique=True))),
        exclude_brands=tuple(data.draw(st.lists(st.sampled_from(attributes.brands), max_size=3, unique=True))),
        min_price=low,
        max_price=data.draw(st.none() | st.floats(low or 0, float(prices.max()) + 1, allow_nan=False)),
        exclude_ids=tuple(data.draw(st.lists(st.sampled_from(ids), max_size=30))),
    )
    mask = filter_mask(filters, attributes, max_exclude_ids=30)
    allowed = len(attributes) if mask is None else int(mask.sum())
    query = unit_rows(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))), 1)
    rows, scores = indexes[kind].search(query, k, mask)
    found = rows[0][rows[0] != PAD_ROW]
    assert len(found) == min(k, allowed)  # a narrow filter still fills every slot it can
    assert (rows[0][len(found) :] == PAD_ROW).all() and len(set(found.tolist())) == len(found)
    assert np.all(np.diff(scores[0][: len(found)]) <= 1e-6)  # best first
    if mask is not None:
        assert mask[found].all()
    assert not set(attributes.item_ids[found].tolist()) & set(filters.exclude_ids)


@pytest.mark.parametrize("kind", [EXACT, IVF, HNSW])
def test_a_filter_that_allows_nothing_returns_only_padding(catalog, indexes, kind) -> None:
    _, embeddings = catalog
    rows, scores = indexes[kind].search(embeddings[:3], 10, np.zeros(len(embeddings), dtype=bool))
    assert (rows == PAD_ROW).all() and np.isneginf(scores).all()


def test_per_query_masks_apply_to_their_own_query(catalog, indexes) -> None:
    _, embeddings = catalog
    masks = np.zeros((2, len(embeddings)), dtype=bool)
    masks[0, :100], masks[1, 100:] = True, True
    for kind in (EXACT, IVF, HNSW):
        rows, _ = indexes[kind].search(embeddings[:2], 20, masks)
        assert (rows[0] < 100).all() and (rows[1] >= 100).all()


def test_selective_filter_takes_the_exact_path(catalog) -> None:
    _, embeddings = catalog
    index = FaissIndex.build(embeddings, IndexParams(kind=IVF, nlist=8, nprobe=1, exact_fallback_rows=50))
    mask = np.zeros(len(embeddings), dtype=bool)
    mask[::7] = True  # 43 rows <= 50: searched exactly, so the answer is the brute-force one
    rows, _ = index.search(embeddings[5:6], 10, mask)
    assert rows[0].tolist() == brute_force(embeddings, embeddings[5], 10, mask)


@pytest.mark.parametrize("kind", [IVF, HNSW])
def test_ann_index_round_trips_through_its_file_and_maps_it_instead_of_copying(
    catalog, indexes, tmp_path, kind: str
) -> None:
    _, embeddings = catalog
    index = indexes[kind]
    path = tmp_path / f"{kind}.faiss"
    index.save(path)
    loaded = load_index(path, embeddings, IndexParams.from_dict(index.params.to_dict()))
    queries = embeddings[:4]
    for a, b in zip(index.search(queries, 25), loaded.search(queries, 25)):
        np.testing.assert_array_equal(a, b)
    # The vectors are a view of the file (shared page cache), not a copy on this process's heap.
    assert str(path) in Path("/proc/self/maps").read_text()


def test_ann_index_load_refuses_a_mismatched_catalog_or_a_missing_file(catalog, indexes, tmp_path) -> None:
    _, embeddings = catalog
    index = indexes[IVF]
    index.save(tmp_path / "index.faiss")
    with pytest.raises(RetrievalError, match="rebuild the index"):
        load_index(tmp_path / "index.faiss", embeddings[:-1], index.params)
    with pytest.raises(RetrievalError, match="not found"):
        load_index(tmp_path / "missing.faiss", embeddings, index.params)


def test_index_params_are_validated_and_recorded_as_a_dict() -> None:
    params = ivf_params(1_000_000)
    assert IndexParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    with pytest.raises(RetrievalError, match="unknown field 'probes'"):
        IndexParams.from_dict({"kind": IVF, "probes": 3})
    with pytest.raises(RetrievalError, match="nprobe=9 must be in 1..nlist=8"):
        IndexParams(kind=IVF, nlist=8, nprobe=9)
    with pytest.raises(RetrievalError, match="kind='flat'"):
        IndexParams(kind="flat")


def test_choose_index_switches_to_ann_at_the_measured_size() -> None:
    assert choose_index(ANN_MIN_ITEMS - 1).kind == EXACT
    assert choose_index(ANN_MIN_ITEMS).kind == IVF
    assert choose_index(ANN_MIN_ITEMS, override=EXACT).kind == EXACT
    assert choose_index(1000, override=HNSW).kind == HNSW
    with pytest.raises(RetrievalError, match="kind='annoy'"):
        choose_index(1000, override="annoy")


def test_search_rejects_bad_arguments_by_name(indexes, catalog) -> None:
    _, embeddings = catalog
    for index in indexes.values():
        with pytest.raises(RetrievalError, match=r"queries: expected shape \[B, 32\]"):
            index.search(embeddings[:2, :5], 3)
        with pytest.raises(RetrievalError, match="k=0"):
            index.search(embeddings[:2], 0)
        with pytest.raises(RetrievalError, match="mask: expected bool"):
            index.search(embeddings[:2], 3, np.ones(7, dtype=bool))


def test_ann_benchmark_writes_its_report(tmp_path) -> None:
    document = ann.run(tmp_path, [3000], dim=64, k=50, queries=20, budget_s=0.2, hnsw_max_size=3000)
    result = document["results"][0]
    assert {"exact", "ivf", "hnsw", "filtered"} <= result.keys()
    assert result["ivf"]["qps_batch1"] > 0 and 0 <= result["ivf"]["recall_at_100"] <= 1
    assert json.loads((tmp_path / ann.RESULT_JSON).read_text())["results"][0]["items"] == 3000
    assert (tmp_path / ann.RESULT_PLOT).stat().st_size > 0


def assert_lists_as_added_afresh(updated: Any, centroids: Any, vectors: np.ndarray) -> Any:
    """`updated` (a faiss IVF index) holds, list for list, the rows that adding every row of
    `vectors` to an empty index on `centroids` (a coarse quantizer) places there; returns that index."""
    from aisle.retrieval.index import load_faiss

    faiss = load_faiss()
    nlist = faiss.extract_index_ivf(updated).nlist
    reference = faiss.IndexIVFFlat(faiss.clone_index(centroids), vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    reference.add(np.ascontiguousarray(vectors))
    for number in range(nlist):
        lists = [faiss.extract_index_ivf(i).invlists for i in (updated, reference)]
        ids = [faiss.rev_swig_ptr(inv.get_ids(number), inv.list_size(number)).tolist() for inv in lists]
        assert ids[0] == ids[1], f"list {number}"
    return reference


def test_an_updated_ivf_index_is_the_index_its_centroids_give_the_changed_catalog(catalog, indexes) -> None:
    """Rows deleted, changed and added, then reordered (new ids sort between old ones): the update
    keeps unchanged rows in their lists and assigns the others, list for list what adding the
    whole changed catalog to an index with the same centroids gives."""
    from aisle.retrieval.index import load_faiss

    _, embeddings = catalog
    index = indexes[IVF]
    rng = np.random.default_rng(3)
    kept = np.sort(rng.choice(len(embeddings), size=len(embeddings) - 10, replace=False))
    previous_rows = np.concatenate([kept, np.full(20, -1)])
    vectors = np.concatenate([embeddings[kept], unit_rows(rng, 20)])
    vectors[:5], previous_rows[:5] = unit_rows(rng, 5), -1  # five items whose text changed
    order = rng.permutation(len(vectors))
    vectors, previous_rows = vectors[order], previous_rows[order]

    updated = index.updated(vectors, previous_rows)

    centroids = load_faiss().extract_index_ivf(index.index).quantizer
    reference = assert_lists_as_added_afresh(updated.index, centroids, vectors)
    expected = FaissIndex(reference, vectors, index.params)
    for a, b in zip(updated.search(vectors[:6], 25), expected.search(vectors[:6], 25)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RetrievalError, match="previous_rows"):
        index.updated(vectors, np.full(len(vectors), len(embeddings)))
    with pytest.raises(RetrievalError, match="only an IVF index"):
        indexes[HNSW].updated(vectors, previous_rows)
