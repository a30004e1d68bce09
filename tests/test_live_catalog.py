"""Live catalog: `aisle catalog upsert|delete|rollback` on a copy of the session's repository, and the
bounded drill (upserts and a delete under mixed search + rank load) against a real tritonserver.

The session's `embedded_repo` and `triton_server` are shared with other tests and never written:
every test here works on its own copy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aisle.data.format import Item

pytestmark = pytest.mark.slow


@pytest.fixture()
def repo(embedded_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the rendered repository (catalog writes go into it)."""
    out = tmp_path / "repo"
    shutil.copytree(embedded_repo, out)
    return out


@pytest.fixture(scope="module")
def catalog_items(tiny_data: Path) -> list[Item]:
    from aisle.data.format import load_dataset

    return load_dataset(tiny_data).items


def _write_items(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _record(item: Item, **changes) -> dict:
    record = dataclasses.asdict(dataclasses.replace(item, **changes))
    record["category"] = list(record["category"])
    return record


def _served(repo: Path) -> tuple:
    """Everything a failed change must leave as it was: served state and the version directories."""
    from aisle.export.live_catalog import LOCK_FILE
    from aisle.export.repo_format import ServedCatalog, catalog_versions_dir

    root = catalog_versions_dir(repo)
    names = sorted(p.name for p in root.iterdir() if p.name != LOCK_FILE) if root.is_dir() else []
    return ServedCatalog.read(repo), names


GOOD = {
    "item_id": 90001,
    "title": "Trail Runner 3 Shoe",
    "brand": "Acme",
    "category": ["Shoes", "Running Shoes"],
    "price": 59.0,
    "rating": 4.2,
    "review_count": 10,
    "popularity": 1.5,
}


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([json.dumps({k: v for k, v in GOOD.items() if k != "price"})], ":1: field 'price' is missing"),
        ([json.dumps(GOOD), json.dumps({**GOOD, "rating": "high"})], ":2: field 'rating' must be a number in 0..5"),
        ([json.dumps({**GOOD, "item_id": "7"})], ":1: field 'item_id' must be a non-negative integer"),
        ([json.dumps({**GOOD, "category": "Shoes"})], ":1: field 'category' must be a list of strings"),
        ([json.dumps(GOOD), "", json.dumps(GOOD)], ":3: field 'item_id' = 90001 is a duplicate (first on line 1)"),
        (["{not json"], ":1: invalid JSON"),
        ([], "the items file is empty"),
    ],
    ids=["missing", "wrong-type", "id-as-string", "category-string", "duplicate", "invalid-json", "empty"],
)
def test_bad_items_file_fails_naming_line_and_field_before_anything_is_written(
    repo: Path, tmp_path: Path, lines: list[str], expected: str, capsys: pytest.CaptureFixture
) -> None:
    from aisle.cli import main

    before = _served(repo)
    path = _write_items(tmp_path / "items.jsonl", lines)
    assert main(["catalog", "upsert", "--repo", str(repo), "--items", str(path)]) == 2
    assert expected in capsys.readouterr().err
    assert _served(repo) == before


def test_price_change_alone_keeps_the_embedding_and_a_text_change_reembeds(
    repo: Path, catalog_items: list[Item]
) -> None:
    from aisle.export.live_catalog import local_embedder, upsert
    from aisle.export.repo_format import Catalog, served_catalog_dir

    embedded: list[str] = []
    local = local_embedder(repo)

    def counting(texts):
        embedded.extend(texts)
        return local(texts)

    first, second = catalog_items[0], catalog_items[1]
    before = Catalog.load(served_catalog_dir(repo))
    row = int(np.searchsorted(before.item_ids, first.item_id))
    old_embedding = np.array(before.embeddings[row])
    cheaper = dataclasses.replace(first, price=first.price / 2, popularity=first.popularity + 3)
    retitled = dataclasses.replace(second, title=second.title + " Deluxe Edition")
    report = upsert(repo, [cheaper, retitled], embed=counting)
    assert (report.changed, report.embedded, report.added) == (2, 1, 0)
    assert embedded == [retitled.text()]
    after = Catalog.load(served_catalog_dir(repo))
    np.testing.assert_array_equal(after.embeddings[row], old_embedding)
    assert after.features[row][0] == pytest.approx(first.price / 2)


def test_an_ivf_catalog_update_keeps_its_centroids_and_the_lists_of_unchanged_items(
    embedded_repo: Path, tmp_path: Path, catalog_items: list[Item]
) -> None:
    """Items added, retitled, repriced and deleted: the new version's index has the served one's
    centroids and, list for list, what adding the whole new catalog to them gives (unchanged items
    where they were, the others assigned); --retrain-index trains the centroids anew."""
    from aisle.benchmarks.catalog_scale import scaled_repo
    from aisle.export.live_catalog import delete, local_embedder, upsert
    from aisle.export.repo_format import Catalog, RepoManifest, served_catalog_dir
    from aisle.retrieval import INDEX_FILE, FaissIndex, IndexParams
    from tests.test_retrieval_index import assert_lists_as_added_afresh

    repo = scaled_repo(embedded_repo, tmp_path / "ivf", 2000, index_kind="ivf")
    params = IndexParams.from_dict(RepoManifest.load(repo).index)

    def served() -> tuple[Catalog, object]:
        directory = served_catalog_dir(repo)
        catalog = Catalog.load(directory)
        return catalog, FaissIndex.load(directory / INDEX_FILE, catalog.embeddings, params).index

    def centroids(index) -> np.ndarray:  # an IVF index's coarse quantizer holds them
        return index.quantizer.reconstruct_n(0, index.nlist)

    _, rendered = served()
    first, second, third = catalog_items[:3]
    new = dataclasses.replace(first, item_id=int(first.item_id) + 10_000_000, title="Saffron Linen Hammock Chair")
    retitled = dataclasses.replace(second, title=second.title + " Deluxe Edition")
    repriced = dataclasses.replace(first, price=first.price / 2)
    embed = local_embedder(repo)
    upsert(repo, [new, retitled, repriced], embed=embed)
    delete(repo, [third.item_id])

    catalog, updated = served()
    np.testing.assert_array_equal(centroids(updated), centroids(rendered))
    assert_lists_as_added_afresh(updated, updated.quantizer, np.asarray(catalog.embeddings))

    upsert(repo, [dataclasses.replace(repriced, price=first.price)], embed=embed, retrain_index=True)
    _, retrained = served()
    assert not np.array_equal(centroids(retrained), centroids(rendered))


def test_failure_halfway_leaves_the_served_version_untouched(
    repo: Path, catalog_items: list[Item], monkeypatch: pytest.MonkeyPatch
) -> None:
    import aisle.export.live_catalog as live

    new = dataclasses.replace(catalog_items[0], item_id=90002, title="Brand New Lamp")
    before = _served(repo)

    def server_gone(texts):
        raise ConnectionError("server at 127.0.0.1:1 went away")

    with pytest.raises(ConnectionError):
        live.upsert(repo, [new], embed=server_gone)
    assert _served(repo) == before

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(live, "write_index", disk_full)
    with pytest.raises(OSError, match="No space left"):
        live.upsert(repo, [new])
    assert _served(repo) == before  # no half-written version directory either

    def damaged(directory: Path, *args, **kwargs) -> None:  # written, but unreadable from disk
        (directory / "embeddings.npy").write_bytes(b"\x93NUMPY damaged")

    monkeypatch.setattr(live, "write_index", damaged)
    with pytest.raises(ValueError):
        live.upsert(repo, [new])
    assert _served(repo) == before  # a version no reader could open is never served


def test_a_rendered_repository_has_its_empty_versions_directory_for_a_deployment_to_mount(repo: Path) -> None:
    from aisle.export.repo_format import ServedCatalog, catalog_versions_dir

    assert catalog_versions_dir(repo).is_dir() and not any(catalog_versions_dir(repo).iterdir())
    assert ServedCatalog.read(repo) == ServedCatalog()  # version 1, the rendered catalog


def test_versions_at_the_repository_top_level_are_refused_with_where_they_belong(repo: Path) -> None:
    """Where an older aisle wrote them tritonserver refuses to start; serving version 1 instead would
    silently drop every change."""
    from aisle.export.repo_format import RepoManifest, RepositoryError, catalog_versions_dir

    (repo / "catalog_versions").mkdir()
    with pytest.raises(RepositoryError, match=f"refuses to start; move it to {catalog_versions_dir(repo)}"):
        RepoManifest.load(repo)


def test_delete_refuses_unknown_ids_and_rollback_needs_a_previous_version(repo: Path) -> None:
    from aisle.export.live_catalog import CatalogUpdateError, delete, rollback

    with pytest.raises(CatalogUpdateError, match=r"not in the served catalog .*\[987654\]"):
        delete(repo, [987654])
    with pytest.raises(CatalogUpdateError, match="no previous version is kept"):
        rollback(repo)


def test_a_deleted_item_is_retired_for_histories_until_upserted_again_or_forgotten(
    repo: Path, catalog_items: list[Item]
) -> None:
    from aisle.export.live_catalog import CatalogUpdateError, delete, upsert
    from aisle.export.repo_format import Catalog, served_catalog_dir
    from aisle.model_repository.validation import CatalogIndex

    first, second = catalog_items[0].item_id, catalog_items[1].item_id
    rendered = Catalog.load(served_catalog_dir(repo))
    row = int(np.searchsorted(rendered.item_ids, first))
    embedding = np.array(rendered.embeddings[row])

    report = delete(repo, [first, second])
    assert (report.deleted, report.retired, report.forgotten) == (2, 2, 0)
    assert "2 deleted items kept for user histories" in report.summary()
    catalog = Catalog.load(served_catalog_dir(repo))
    assert first not in catalog.item_ids and catalog.retired_items.item_ids.tolist() == sorted([first, second])
    history_row = CatalogIndex.load(served_catalog_dir(repo)).history_rows(np.array([[first]]), "H")
    np.testing.assert_array_equal(catalog.history_embeddings(history_row)[0, 0], embedding)

    upsert(repo, [catalog_items[0]])  # back in stock: served again, no longer retired
    catalog = Catalog.load(served_catalog_dir(repo))
    assert first in catalog.item_ids and catalog.retired_items.item_ids.tolist() == [second]

    with pytest.raises(CatalogUpdateError, match=rf"not in the served catalog .*\[{second}\]; 1 of them already"):
        delete(repo, [second])  # already deleted: only --forget takes it
    report = delete(repo, [first, second], forget=True)
    assert (report.deleted, report.retired, report.forgotten) == (1, 0, 2)
    catalog = Catalog.load(served_catalog_dir(repo))
    assert catalog.retired is None and first not in catalog.item_ids


def test_a_version_that_cannot_open_is_reported_keeps_the_open_one_and_is_retried_without_requests(
    repo: Path, catalog_items: list[Item], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aisle.export.live_catalog import upsert
    from aisle.export.repo_format import served_catalog_dir
    from aisle.model_repository.catalog_store import CATALOG_STATE_ENV, FollowsServedCatalog, failed_catalog_switches
    from aisle.model_repository.context import ModelContext
    from aisle.model_repository.item_store import ItemStore

    opened: list[Path] = []

    def build(context: ModelContext) -> ItemStore:
        opened.append(served_catalog_dir(context.repo))
        return ItemStore.from_context(context)

    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv(CATALOG_STATE_ENV, str(state))
    monkeypatch.setattr(FollowsServedCatalog, "RETRY_S", 0.3)
    follower = FollowsServedCatalog(ModelContext.load(repo, "item_store"), build)
    first = follower.current()
    upsert(repo, [dataclasses.replace(catalog_items[0], price=1.0)])
    broken = served_catalog_dir(repo)
    embeddings = broken / "embeddings.npy"
    good = embeddings.read_bytes()
    embeddings.write_bytes(good[:100])  # a damaged disk, a hand edit: the version cannot open
    assert follower.current() is first and follower.current() is first
    assert opened.count(broken) == 1  # the second batch did not try again
    (reason,) = failed_catalog_switches(state)
    assert reason.startswith(f"item_store: catalog version '{broken.name}' did not open")
    embeddings.write_bytes(good)
    deadline = time.monotonic() + 10
    while follower.logic is first and time.monotonic() < deadline:  # no request: the stub's own retry
        time.sleep(0.05)
    assert follower.current() is not first and opened.count(broken) >= 2
    assert failed_catalog_switches(state) == []


def test_keeps_the_last_versions_and_removes_older_ones(repo: Path, catalog_items: list[Item]) -> None:
    from aisle.export.live_catalog import rollback, upsert
    from aisle.export.repo_format import ServedCatalog

    item = catalog_items[3]
    for k in range(4):  # price only: nothing is embedded
        upsert(repo, [dataclasses.replace(item, price=item.price + k + 1)], keep=3)
    state, on_disk = _served(repo)
    assert (state.version, state.previous) == (5, (4, 3))
    assert [name for name in on_disk if name.isdigit()] == ["3", "4", "5"]
    assert rollback(repo).version == 4
    assert ServedCatalog.read(repo) == ServedCatalog(4, (3,))


def test_status_shows_the_served_version_the_rollback_stack_and_what_each_holds(
    repo: Path, catalog_items: list[Item], capsys: pytest.CaptureFixture
) -> None:
    from aisle.cli import main
    from aisle.export.live_catalog import delete

    delete(repo, [catalog_items[0].item_id])
    assert main(["catalog", "status", "--repo", str(repo), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    items = len(catalog_items)
    assert (status["served"], status["previous"]) == (2, [1])
    assert status["versions"]["2"]["items"] == items - 1 and status["versions"]["2"]["retired"] == 1
    assert status["versions"]["1"]["items"] == items and status["versions"]["1"]["retired"] == 0
    assert main(["catalog", "status", "--repo", str(repo)]) == 0
    assert capsys.readouterr().out.startswith(f"version 2 (served): {items - 1} items, 1 deleted items kept")


# --- against a real tritonserver ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(embedded_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Its own tritonserver on its own copy of the repository, since the drill changes the catalog."""
    from aisle.model_repository.server import ServerConfig, TritonServer, free_ports

    repo = tmp_path_factory.mktemp("live") / "repo"
    shutil.copytree(embedded_repo, repo)
    grpc_port, http_port, metrics_port, health_port = free_ports(4)
    server = TritonServer(
        ServerConfig(repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, health_port=health_port)
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.mark.server
def test_upserts_and_delete_under_load_fail_no_request(live_server, tiny_data: Path) -> None:
    """Bounded drill: mixed search + rank load while the catalog changes; every guarantee checked."""
    from aisle.benchmarks.live_catalog import DrillConfig, run_drill
    from aisle.data.format import load_dataset

    config = DrillConfig(
        duration_s=15,
        concurrency=8,
        upserts=2,
        upsert_items=20,
        delete_items=10,
        freshness_items=20,
        items_preset="tiny",
    )
    report = asyncio.run(run_drill(live_server, load_dataset(tiny_data), config))
    assert report.violations == []
    assert report.failed == 0 and report.requests > 50
    # Each upsert's searches switched a catalog_search instance, which says how long its open took.
    for upsert in report.upserts:
        opened = [s for reader, s in upsert["reader_open_s"].items() if reader.startswith("catalog_search/")]
        assert opened and all(0 < s < 10 for s in opened), upsert["reader_open_s"]
    assert report.title_checks == 40 and report.deleted_seen == 0
    assert "was deleted from the catalog (only user histories may name it)" in report.rank_deleted_error
    assert report.history_deleted_change == 0.0
    assert report.rollback_identical is True
    assert report.freshness["not_found_by_title"] == 0


@pytest.mark.server
def test_upsert_through_the_server_embeds_as_the_local_item_tower(live_server, catalog_items: list[Item]) -> None:
    """`--url`: the server's embed_item does the work; the stored embeddings equal the local graph's."""
    from aisle.client import AisleClient
    from aisle.export.live_catalog import local_embedder, upsert
    from aisle.export.live_catalog_cli import remote_embedder
    from aisle.export.repo_format import Catalog, served_catalog_dir

    repo = Path(live_server.config.repo)
    items = [
        dataclasses.replace(catalog_items[k], item_id=80000 + k, title=f"Zanzibar Quill {k} Notebook") for k in range(3)
    ]
    report = upsert(repo, items, embed=remote_embedder(live_server.grpc_url))
    assert (report.added, report.embedded) == (3, 3)
    catalog = Catalog.load(served_catalog_dir(repo))
    rows = np.searchsorted(catalog.item_ids, [item.item_id for item in items])
    local = local_embedder(repo)([item.text() for item in items])
    np.testing.assert_allclose(catalog.embeddings[rows], local, atol=1e-5)
    with AisleClient(live_server.grpc_url) as client:
        assert items[1].item_id in client.search(items[1].title, top_k=100).ids.tolist()


@pytest.mark.server
def test_a_server_restarted_after_a_catalog_change_starts_and_serves_the_changed_catalog(
    live_server, catalog_items: list[Item]
) -> None:
    """A replica restarting on a repository that has live versions (a failover, a rollout) must start:
    tritonserver takes every top-level directory of the repository for a model."""
    from aisle.client import AisleClient
    from aisle.export.live_catalog import local_embedder, upsert

    repo = Path(live_server.config.repo)
    item = dataclasses.replace(catalog_items[0], item_id=81000, title="Quetzal Velvet Reading Armchair")
    upsert(repo, [item], embed=local_embedder(repo))
    live_server.stop()
    live_server.start()
    with AisleClient(live_server.grpc_url) as client:
        assert item.item_id in client.search(item.title, top_k=10).ids.tolist()


@pytest.mark.server
def test_histories_naming_a_deleted_item_keep_their_scores_until_it_is_forgotten(
    live_server, catalog_items: list[Item]
) -> None:
    """Shops discontinue items every day, and the histories applications send keep naming them:
    every catalog reader (rank's item store, search's retriever, rank_cold's validator) must keep
    serving them with the user vector they had, while the item itself is never a result again."""
    from aisle.client import AisleClient, InvalidInputError
    from aisle.export.live_catalog import delete, local_embedder, upsert

    repo = Path(live_server.config.repo)
    gone = dataclasses.replace(catalog_items[2], item_id=82000, title="Obsidian Pour-Over Coffee Kettle")
    upsert(repo, [gone], embed=local_embedder(repo))
    history = [catalog_items[3].item_id, gone.item_id]
    candidates = [i.item_id for i in catalog_items[4:9]]
    texts, features = ["a steel kettle", "a paper filter"], np.full((2, 4), np.nan, np.float32)
    with AisleClient(live_server.grpc_url) as client:

        def served() -> tuple:
            return (
                client.rank("coffee", candidates, history).raw_scores,
                client.rank_cold("coffee", texts, features, history).raw_scores,
                client.search("", user_history_ids=history, top_k=20),
            )

        rank_before, cold_before, shelf_before = served()
        assert gone.item_id in client.search(gone.title, top_k=5).ids.tolist()
        delete(repo, [gone.item_id])
        rank_after, cold_after, shelf_after = served()
        np.testing.assert_allclose(rank_after, rank_before, atol=1e-6)
        np.testing.assert_allclose(cold_after, cold_before, atol=1e-6)
        assert gone.item_id not in client.search(gone.title, top_k=5, user_history_ids=history).ids.tolist()
        before = dict(zip(shelf_before.ids.tolist(), shelf_before.scores.tolist()))
        common = [
            (score, before[i]) for i, score in zip(shelf_after.ids.tolist(), shelf_after.scores.tolist()) if i in before
        ]
        assert len(common) >= 15 and all(abs(a - b) < 1e-5 for a, b in common)
        with pytest.raises(InvalidInputError, match=f"= {gone.item_id} was deleted from the catalog"):
            client.rank("coffee", [gone.item_id], history)
        delete(repo, [gone.item_id], forget=True)
        with pytest.raises(InvalidInputError, match=f"= {gone.item_id} is not an item of the served catalog"):
            client.search("", user_history_ids=history)


def _ready(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _catalog_gauges(server, name: str) -> dict[str, float]:
    """Each catalog_search instance's value of gauge `name` on the server's /metrics."""
    from aisle.benchmarks.drills.traffic import metric_samples

    samples = metric_samples(server.metrics_url, name)
    return {labels["instance"]: value for labels, value in samples if labels.get("model") == "catalog_search"}


@pytest.mark.server
def test_a_replica_whose_reader_cannot_open_the_served_version_is_not_ready_until_it_recovers_by_itself(
    live_server, catalog_items: list[Item]
) -> None:
    """It would answer from the old version (a deleted item still found here): not ready, so a
    balancer stops sending traffic; the stub retries by itself, with no request arriving."""
    from aisle.client import AisleClient
    from aisle.export.live_catalog import local_embedder, upsert
    from aisle.export.repo_format import ServedCatalog, served_catalog_dir

    repo = Path(live_server.config.repo)
    item = dataclasses.replace(catalog_items[1], item_id=83000, title="Saffron Linen Hammock Chair")
    upsert(repo, [item], embed=local_embedder(repo))
    served = ServedCatalog.read(repo).version
    embeddings = served_catalog_dir(repo) / "embeddings.npy"
    good = embeddings.read_bytes()

    def replace(data: bytes) -> None:  # a new file: a reader that mapped the old one keeps it whole
        staging = embeddings.with_name("replacing.npy")
        staging.write_bytes(data)
        staging.replace(embeddings)

    replace(good[:100])
    with AisleClient(live_server.grpc_url) as client:
        assert item.item_id not in client.search(item.title, top_k=10).ids.tolist()  # the open version
        status, reason = _ready(live_server.readiness_url)
        assert status == 503 and f"catalog_search: catalog version '{embeddings.parent.name}' did not open" in reason
        failed = _catalog_gauges(live_server, "aisle_catalog_switch_failed")
        assert sorted(failed.values()) == [0.0, 1.0]  # the instance that took the search, of two
        (stale,) = [instance for instance, value in failed.items() if value == 1.0]
        assert _catalog_gauges(live_server, "aisle_catalog_version")[stale] < served  # the version it has open
        replace(good)
        deadline = time.monotonic() + 40
        while _ready(live_server.readiness_url)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _ready(live_server.readiness_url) == (200, "ready\n")
        assert _catalog_gauges(live_server, "aisle_catalog_switch_failed")[stale] == 0.0
        assert _catalog_gauges(live_server, "aisle_catalog_version")[stale] == served
        assert 0 < _catalog_gauges(live_server, "aisle_catalog_open_seconds")[stale] < 10
        assert item.item_id in client.search(item.title, top_k=10).ids.tolist()
