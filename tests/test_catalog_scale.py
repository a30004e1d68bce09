"""The catalog-size benchmark's generated catalogs: real items kept, generated ones consistent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aisle.benchmarks.catalog_scale import cached_scaled_repo, goals, parent_rows, scaled_repo
from aisle.export.repo_format import Catalog, RepoManifest, catalog_dir
from aisle.model_repository.catalog_search import CatalogSearch
from aisle.model_repository.context import ModelContext
from aisle.retrieval import ATTRIBUTES_FILE, INDEX_FILE, ItemAttributes
from aisle.schema import CATALOG_SEARCH


def test_a_scaled_repository_keeps_the_real_items_and_adds_variants_with_their_parents_attributes(
    embedded_repo: Path, tmp_path: Path
) -> None:
    real = Catalog.load(catalog_dir(embedded_repo))
    size = 4 * len(real.item_ids)
    out = scaled_repo(embedded_repo, tmp_path / "scaled", size, index_kind="ivf")
    catalog = Catalog.load(catalog_dir(out))
    attributes = ItemAttributes.load(catalog_dir(out) / ATTRIBUTES_FILE)
    n = len(real.item_ids)
    assert len(catalog.item_ids) == size and np.all(np.diff(catalog.item_ids) > 0)
    np.testing.assert_array_equal(catalog.item_ids[:n], real.item_ids)
    np.testing.assert_allclose(catalog.embeddings[:n], real.embeddings, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(catalog.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(attributes.item_ids, catalog.item_ids)
    # Each generated item is a variant of its parent: near it, with its features and attributes.
    parents = parent_rows(n, size, seed=0)[n:]
    cosines = np.sum(np.asarray(catalog.embeddings[n:]) * np.asarray(real.embeddings)[parents], axis=1)
    assert cosines.min() > 0.6, cosines.min()
    np.testing.assert_array_equal(attributes.category_codes[n:], attributes.category_codes[parents])
    np.testing.assert_array_equal(attributes.prices[n:], attributes.prices[parents])
    np.testing.assert_array_equal(np.asarray(catalog.features[n:]), np.asarray(real.features)[parents])
    manifest = RepoManifest.load(out)
    assert manifest.catalog_items == size and manifest.index["kind"] == "ivf"
    assert (catalog_dir(out) / INDEX_FILE).is_file()
    search = CatalogSearch.from_context(ModelContext.load(out, CATALOG_SEARCH))
    assert len(search.retriever.store.catalog.item_ids) == size
    # A rerun keeps the generated catalog and refreshes the serving files from the source.
    embeddings = next(catalog_dir(out).glob("embeddings.npy"))
    generated_at = embeddings.stat().st_mtime_ns
    config = out / "search" / "config.pbtxt"
    config.write_text("stale")
    assert cached_scaled_repo(embedded_repo, out, size, "ivf") == out
    assert embeddings.stat().st_mtime_ns == generated_at
    assert config.read_text() == (embedded_repo / "search" / "config.pbtxt").read_text()


def test_goals_are_the_ratios_of_the_sizes_own_points() -> None:
    def point(workload: str, level: int, p50: float, rps: float) -> dict:
        return {"workload": workload, "level": level, "throughput_rps": rps, "latency": {"p50_ms": p50}}

    points = [point("embed_query", 1, 10.0, 90.0), point("embed_query", 16, 80.0, 200.0)]
    points += [point("search", 1, 14.0, 70.0), point("search", 16, 130.0, 110.0)]
    result = goals(points)
    assert result["search_p50_over_embed_query_c1"] == 1.4 and result["search_over_embed_query_throughput_c16"] == 0.55
    assert result["pass"] is False
