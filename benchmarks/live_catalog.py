"""The live-catalog drill: catalog upserts and a delete under mixed search + rank load, then freshness.

    python -m aisle.benchmarks.live_catalog --repo REPO --data DATA --out DIR [--duration 60]

Starts its own tritonserver on a copy of REPO (the original is never written), then:
1. load: `concurrency` closed-loop workers alternate search and rank requests (benchmarks/workloads),
   through the SDK with retries off, so every failure counts;
2. during it: `upserts` upserts of `upsert_items` new items each (generated items, fresh ids and
   titles), after each one every new item is searched by its own title and must be found; then one
   delete of `delete_items` ids (half rendered ones no load request names as a candidate, those in
   load histories first, where the catalog has that many; the rest new items), after which no
   search result may hold a deleted id (the load's and one search per deleted title), rank with a
   deleted candidate must fail INVALID_ARGUMENT naming it, and a rank whose history names a deleted
   item must score exactly as before the delete (the item is retired, its embedding kept);
3. server RSS (tritonserver + stubs, /proc) before the first upsert and after the fifth;
4. after the load, quiet: a probe set's results; freshness: `freshness_items` new items upserted,
   split into embedding, writing (files + index + served.json) and the time until a search finds a
   new item after upsert returned; then rollback, after which the probe results must be identical
   (ids and scores, bit for bit).

Every figure is measured by this run; the report says how many cores the machine had.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aisle.benchmarks.errors import BenchmarkError
from aisle.data.format import Dataset, Item

if TYPE_CHECKING:
    from aisle.model_repository.server import TritonServer

#: Worker i sends search requests when i is even, rank requests when odd.
MIXED = ("search", "rank")


@dataclass(frozen=True)
class DrillConfig:
    """One drill.

    duration_s: load length; the catalog changes are spread over it.
    concurrency: closed-loop workers (half search, half rank).
    upserts / upsert_items: how many upserts of how many new items each.
    delete_items: ids removed by the one delete (half rendered items no request names, the rest new items).
    freshness_items: new items of the freshness measurement after the load (0 skips it).
    warmup_s: load before the first upsert, after which the server's memory is first read: enough
        for the load to have touched the catalog's pages (seconds on a small catalog; on 1,000,000
        items with IVF, ~30 s before the probed lists are all in).
    title_top_k: results searched per title check (a new item must be among them); the default is
        the served max_results, which equals search's retrieval depth: "retrievable" = in stage 1's
        candidates. How many were also in the top 10 is reported beside.
    embed_url: embed through the server's embed_item instead of the local ONNX item tower.
    items_preset: generator preset the new items are drawn from (aisle.data.generator.PRESETS).
    """

    duration_s: float = 60.0
    concurrency: int = 16
    upserts: int = 5
    upsert_items: int = 200
    delete_items: int = 100
    freshness_items: int = 1000
    warmup_s: float = 3.0
    title_top_k: int = 100
    embed_url: bool = False
    items_preset: str = "small"
    seed: int = 1

    def __post_init__(self) -> None:
        if self.concurrency < 2 or self.upserts < 1 or self.upsert_items < 2 or self.delete_items < 2:
            raise BenchmarkError("drill needs concurrency >= 2, upserts >= 1, upsert_items >= 2, delete_items >= 2")


@dataclass
class DrillReport:
    """What the drill measured. `violations` lists every broken guarantee (empty: all held)."""

    requests: int = 0
    failed: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    by_ensemble: dict[str, int] = field(default_factory=dict)
    upserts: list[dict] = field(default_factory=list)
    delete: dict = field(default_factory=dict)
    title_checks: int = 0
    title_misses: list[int] = field(default_factory=list)
    title_top10: int = 0
    deleted_ids: list[int] = field(default_factory=list)
    deleted_seen: int = 0
    rank_deleted_error: str = ""
    #: Largest score change of a rank whose history names a deleted item, before -> after the delete
    #: (retired items keep their embedding for histories: 0 expected); None if that rank failed.
    history_deleted_change: float | None = None
    deleted_in_load_histories: int = 0  # deleted ids the load's own requests name in their histories
    #: The server's memory (tritonserver + stubs, PSS: a page the stubs share counts once) after
    #: the warm-up and after the upserts: all of it, and the anonymous part that leaked objects
    #: would grow (checked). File pages move with the page cache (a freshly written version is
    #: cached whole, so touching it maps more of it), so versions kept open are checked by
    #: `stale_versions` instead.
    pss_before_mb: float = 0.0
    pss_after_upserts_mb: float = 0.0
    anon_before_mb: float = 0.0
    anon_after_upserts_mb: float = 0.0
    anon_change_pct: float = 0.0
    #: Server processes mapping files of more than one catalog version after the upserts (pid ->
    #: versions): a switch that failed to release the version it left. Expected: none.
    stale_versions: dict[str, list[int]] = field(default_factory=dict)
    rollback_identical: bool | None = None
    rollback: dict = field(default_factory=dict)
    freshness: dict = field(default_factory=dict)
    duration_s: float = 0.0
    cpu_cores: int = os.cpu_count() or 0
    violations: list[str] = field(default_factory=list)

    def check(self, memory_tolerance_pct: float = 10.0) -> None:
        """Fill `violations` from the measurements."""
        v = self.violations
        if self.failed:
            v.append(f"{self.failed} of {self.requests} load requests failed: {self.failures}")
        if self.title_misses:
            v.append(f"{len(self.title_misses)} new items not found by their title, e.g. {self.title_misses[:5]}")
        if self.deleted_seen:
            v.append(f"{self.deleted_seen} search results after the delete held a deleted id")
        if "INVALID_ARGUMENT" not in self.rank_deleted_error and "InvalidInput" not in self.rank_deleted_error:
            v.append(f"rank with a deleted id did not fail INVALID_ARGUMENT: {self.rank_deleted_error!r}")
        if self.history_deleted_change is None or self.history_deleted_change > 1e-5:
            v.append(f"a history naming a deleted item changed its scores by {self.history_deleted_change}")
        if abs(self.anon_change_pct) > memory_tolerance_pct:
            v.append(
                f"server anonymous memory changed {self.anon_change_pct:+.1f}% over the upserts "
                f"(> {memory_tolerance_pct}%)"
            )
        if self.stale_versions:
            v.append(f"server processes still map an old catalog version: {self.stale_versions}")
        if self.rollback_identical is False:
            v.append("rollback did not restore the previous results exactly")


def new_items(existing: Sequence[Item], count: int, seed: int, first_id: int, preset: str = "small") -> list[Item]:
    """`count` generated items with ids from `first_id` on and titles `existing` do not already hold."""
    from aisle.data.generator import PRESETS, generate

    titles = {item.title for item in existing}
    next_id = first_id
    items: list[Item] = []
    attempt = 0
    while len(items) < count:
        for item in generate(PRESETS[preset], seed + attempt, preset=preset).items:
            if item.title not in titles:
                titles.add(item.title)
                items.append(dataclasses.replace(item, item_id=next_id + len(items), cold_start=False))
                if len(items) == count:
                    break
        attempt += 1
    return items


def _client(url: str):
    from aisle.client import AsyncAisleClient, ClientConfig, RetryConfig

    # Retries off: a request that fails once is a failure, never hidden by a second attempt.
    return AsyncAisleClient(config=ClientConfig(url=url, retry=RetryConfig(max_attempts=1)))


class Load:
    """Closed-loop mixed search + rank load that keeps every search result with its start time."""

    def __init__(self, client, searches: Sequence[dict], ranks: Sequence[dict], concurrency: int) -> None:
        from aisle.benchmarks.callers import sdk_call
        from aisle.schema import RANK, SEARCH

        self.calls = {"search": sdk_call(client, SEARCH), "rank": sdk_call(client, RANK)}
        self.requests = {"search": searches, "rank": ranks}
        self.concurrency = concurrency
        self.stopping = asyncio.Event()
        self.results: list[tuple[float, np.ndarray]] = []  # (start, ids) of every search
        self.count = {"search": 0, "rank": 0}
        self.failures: dict[str, str] = {}
        self.failed = 0

    async def worker(self, k: int) -> None:
        kind = MIXED[k % 2]
        requests, call, index = self.requests[kind], self.calls[kind], k
        while not self.stopping.is_set():
            start = time.perf_counter()
            try:
                result = await call(requests[index % len(requests)])
                if kind == "search":
                    self.results.append((start, np.asarray(result.ids)))
            except Exception as e:  # counted and named, never raised: the drill must finish to report
                self.failed += 1
                self.failures.setdefault(type(e).__name__, str(e)[:300])
            self.count[kind] += 1
            index += self.concurrency
            await asyncio.sleep(0)

    def start(self) -> list[asyncio.Task]:
        return [asyncio.create_task(self.worker(k)) for k in range(self.concurrency)]


async def _title_ranks(client, items: Sequence[Item], top_k: int, parallel: int = 8) -> list[int | None]:
    """Each item's position in a search for its own title (None: not among the top_k)."""
    gate = asyncio.Semaphore(parallel)

    async def one(item: Item) -> int | None:
        async with gate:
            result = await client.search(item.title, top_k=top_k)
        ids = np.asarray(result.ids).tolist()
        return ids.index(item.item_id) if item.item_id in ids else None

    return list(await asyncio.gather(*(one(item) for item in items)))


def _misses(items: Sequence[Item], ranks: Sequence[int | None]) -> list[int]:
    return [item.item_id for item, rank in zip(items, ranks) if rank is None]


async def _probe(client, searches: Sequence[dict], ranks: Sequence[dict]) -> list[tuple[list, list]]:
    """Results of a fixed probe set (ids and scores), to compare before and after a rollback."""
    from aisle.benchmarks.callers import sdk_call
    from aisle.schema import RANK, SEARCH

    search, rank = sdk_call(client, SEARCH), sdk_call(client, RANK)
    out = []
    for request in searches:
        r = await search(request)
        out.append((np.asarray(r.ids).tolist(), np.asarray(r.scores).tolist()))
    for request in ranks:
        r = await rank(request)
        out.append((np.asarray(r.ids).tolist(), np.asarray(r.scores).tolist()))
    return out


def _deletable_ids(dataset: Dataset, requests: Sequence[dict]) -> tuple[np.ndarray, int]:
    """Rendered item ids no load request names as a candidate (a rank naming one would rightly fail
    after the delete), those in load requests' histories first (those requests must keep working),
    and how many of them the histories name."""
    from aisle.schema import CANDIDATE_IDS, USER_HISTORY_IDS

    named: dict[str, set[int]] = {CANDIDATE_IDS: set(), USER_HISTORY_IDS: set()}
    for request in requests:
        for tensor, ids in named.items():
            if tensor in request:
                ids.update(np.asarray(request[tensor]).tolist())
    allowed = {i.item_id for i in dataset.items} - named[CANDIDATE_IDS]
    in_histories = allowed & named[USER_HISTORY_IDS]
    return np.array([*sorted(in_histories), *sorted(allowed - in_histories)], np.int64), len(in_histories)


def versions_mapped(server_pid: int, repo: Path) -> dict[int, set[int]]:
    """Per process of the server tree, the catalog versions whose files it maps (processes mapping
    none left out). A reader holds one: it releases the version it switched away from."""
    from aisle.benchmarks.cpu import mapped_files, process_tree
    from aisle.export.repo_format import BASE_CATALOG_VERSION, catalog_dir, catalog_versions_dir

    rendered, later = catalog_dir(repo).resolve(), catalog_versions_dir(repo).resolve()
    found: dict[int, set[int]] = {}
    for pid in process_tree(server_pid):
        versions = set()
        for path in mapped_files(pid):
            if path.is_relative_to(later):
                versions.add(int(path.relative_to(later).parts[0]))
            elif path.is_relative_to(rendered):
                versions.add(BASE_CATALOG_VERSION)
        if versions:
            found[pid] = versions
    return found


def reader_open_seconds(metrics_url: str, version: int) -> dict[str, float]:
    """Seconds each catalog reader (model/instance) already on `version` took to open it: what the
    batch that switched it waited for (the readers' aisle_catalog_open_seconds gauges)."""
    from aisle.benchmarks.drills.traffic import metric_samples
    from aisle.model_repository.catalog_store import CATALOG_OPEN_SECONDS_METRIC, CATALOG_VERSION_METRIC

    def reader(labels: dict[str, str]) -> str:
        return f"{labels['model']}/{labels['instance']}"

    versions = metric_samples(metrics_url, CATALOG_VERSION_METRIC)
    on_version = {reader(labels) for labels, value in versions if value == version}
    samples = metric_samples(metrics_url, CATALOG_OPEN_SECONDS_METRIC)
    return {reader(labels): value for labels, value in samples if reader(labels) in on_version}


async def run_drill(server: TritonServer, dataset: Dataset, config: DrillConfig) -> DrillReport:
    """The drill against a running server (it writes catalog versions into the repository served)."""
    from aisle.benchmarks.cpu import process_tree_pss_bytes
    from aisle.benchmarks.workloads import WorkloadConfig, rank_workload, search_workload
    from aisle.client import InvalidInputError
    from aisle.export.live_catalog import delete, rollback, upsert
    from aisle.export.live_catalog_cli import remote_embedder
    from aisle.export.repo_format import Catalog, served_catalog_dir

    url, repo = server.grpc_url, Path(server.config.repo)
    report = DrillReport()
    workloads = WorkloadConfig(requests=128, seed=config.seed)
    searches = search_workload(dataset, workloads).requests
    ranks = rank_workload(dataset, workloads).requests
    count = config.upserts * config.upsert_items + config.freshness_items
    # Above every id the served catalog holds or retired: a catalog grown past the dataset (the
    # scaled catalogs of benchmarks/catalog_scale.py) holds ids the dataset does not.
    served = Catalog.load(served_catalog_dir(repo))
    first_id = int(max(served.item_ids.max(), served.retired_items.item_ids.max(initial=0))) + 1
    fresh = new_items(dataset.items, count, config.seed, first_id, config.items_preset)
    batches = [fresh[k * config.upsert_items : (k + 1) * config.upsert_items] for k in range(config.upserts)]
    freshness_batch = fresh[config.upserts * config.upsert_items :]
    deletable, in_histories = _deletable_ids(dataset, [*searches, *ranks])
    # Half rendered items (named in load histories where possible), as many as there are; the rest new items.
    old = deletable[: config.delete_items // 2]
    report.deleted_in_load_histories = min(len(old), in_histories)
    doomed_new = [item for batch in batches for item in batch][: config.delete_items - len(old)]
    doomed = np.concatenate([[i.item_id for i in doomed_new], old]).astype(np.int64)
    kept_ids = [i.item_id for i in dataset.items if i.item_id not in set(doomed.tolist())][:5]
    embed = remote_embedder(url) if config.embed_url else None
    # Spread the changes over the load: upserts, delete, then a tail of load on the final version.
    pause_s = config.duration_s / (config.upserts + 2)

    def memory_mb(field: str = "Pss") -> float:
        return process_tree_pss_bytes(server.pid, field) / 2**20

    async with _client(url) as client, _client(url) as checker:
        load = Load(client, searches, ranks, config.concurrency)
        began = time.perf_counter()
        tasks = load.start()
        try:
            await asyncio.sleep(config.warmup_s)
            report.pss_before_mb, report.anon_before_mb = memory_mb(), memory_mb("Pss_Anon")
            for k, batch in enumerate(batches):
                called = time.perf_counter()
                result = await asyncio.to_thread(upsert, repo, batch, embed=embed)
                returned = time.perf_counter()
                positions = await _title_ranks(checker, batch, config.title_top_k)
                misses = _misses(batch, positions)
                report.title_checks += len(batch)
                report.title_misses.extend(misses)
                report.title_top10 += sum(r is not None and r < 10 for r in positions)
                report.upserts.append(
                    {
                        **dataclasses.asdict(result),
                        "call_to_return_s": returned - called,
                        "title_check_s": time.perf_counter() - returned,
                        "misses": len(misses),
                        "reader_open_s": reader_open_seconds(server.metrics_url, result.version),
                    }
                )
                print(f"upsert {k + 1}: {result.summary()}; {len(misses)} of {len(batch)} titles not found", flush=True)
                await asyncio.sleep(max(0.0, pause_s - (time.perf_counter() - called)))
            report.pss_after_upserts_mb, report.anon_after_upserts_mb = memory_mb(), memory_mb("Pss_Anon")
            report.anon_change_pct = 100 * (report.anon_after_upserts_mb / report.anon_before_mb - 1)
            mapped = versions_mapped(server.pid, repo)
            report.stale_versions = {str(pid): sorted(v) for pid, v in mapped.items() if len(v) > 1}
            history_rank = ("lamp", kept_ids, [int(doomed[-1])])
            before = await checker.rank(*history_rank)
            result = await asyncio.to_thread(delete, repo, doomed.tolist())
            deleted_at = time.perf_counter()
            report.delete = dataclasses.asdict(result)
            report.deleted_ids = doomed.tolist()
            print(f"delete: {result.summary()}", flush=True)
            gone = set(doomed.tolist())
            for item in doomed_new:
                hit = await checker.search(item.title, top_k=config.title_top_k)
                report.deleted_seen += bool(gone & set(np.asarray(hit.ids).tolist()))
            try:
                await checker.rank("lamp", [int(doomed[0]), int(doomed[-1])], [])
                report.rank_deleted_error = "rank with deleted ids succeeded"
            except InvalidInputError as e:
                report.rank_deleted_error = f"INVALID_ARGUMENT: {e}"
                if str(int(doomed[0])) not in str(e):
                    report.violations.append(f"rank's error does not name the deleted id {int(doomed[0])}: {e}")
            with contextlib.suppress(InvalidInputError):
                after = await checker.rank(*history_rank)
                report.history_deleted_change = float(np.abs(after.raw_scores - before.raw_scores).max())
            await asyncio.sleep(max(0.0, config.duration_s - (time.perf_counter() - began)))
        finally:
            load.stopping.set()
            await asyncio.gather(*tasks)
        report.duration_s = time.perf_counter() - began
        report.requests = sum(load.count.values())
        report.by_ensemble = dict(load.count)
        report.failed, report.failures = load.failed, load.failures
        report.deleted_seen += sum(bool(gone & set(ids.tolist())) for start, ids in load.results if start >= deleted_at)
        # Quiet from here: probes run one at a time, so batching cannot move a score's last bits.
        before = await _probe(checker, searches[:16], ranks[:16])
        if config.freshness_items:
            report.freshness = await _freshness(checker, repo, freshness_batch, embed, config.title_top_k)
        else:
            await asyncio.to_thread(upsert, repo, freshness_batch or batches[0][:1], embed=embed)
        started = time.perf_counter()
        back = rollback(repo)
        after = await _probe(checker, searches[:16], ranks[:16])
        report.rollback = {**dataclasses.asdict(back), "rollback_and_probe_s": time.perf_counter() - started}
        report.rollback_identical = after == before
    report.check()
    return report


async def _freshness(client, repo: Path, items: Sequence[Item], embed, top_k: int) -> dict:
    """Seconds from calling upsert to a new item being found by its title, split into its parts."""
    from aisle.export.live_catalog import upsert

    probe = items[-1]
    called = time.perf_counter()
    result = await asyncio.to_thread(upsert, repo, items, embed=embed)
    returned = time.perf_counter()
    while True:
        hit = await client.search(probe.title, top_k=top_k)
        if probe.item_id in set(np.asarray(hit.ids).tolist()):
            break
        if time.perf_counter() - returned > 60:
            raise BenchmarkError(f"new item {probe.item_id} not searchable 60 s after upsert returned")
    visible = time.perf_counter()
    positions = await _title_ranks(client, items, top_k)
    return {
        "items": len(items),
        "embed_s": result.embed_s,
        "write_s": result.write_s,
        "return_to_searchable_s": visible - returned,
        "swap_s": result.write_s + (visible - returned),
        "call_to_searchable_s": visible - called,
        "not_found_by_title": len(_misses(items, positions)),
        "found_in_top10": sum(r is not None and r < 10 for r in positions),
    }


#: The catalog readers a model-control switch would have to load a new version of.
CATALOG_READERS = ("item_store", "catalog_search", "rank_cold_validator")


async def model_control_study(
    url: str, http_url: str, repo: Path, dataset: Dataset, *, concurrency: int = 16, switches: int = 3
) -> dict:
    """The alternative switch, measured for the README's comparison: under the same mixed load, each
    catalog reader gets a new model version directory (a copy of version 1) that Triton's
    model-control API loads (`POST /v2/repository/models/<m>/load`; version policy latest: Triton
    loads the new version, then unloads the old one). Reports failed requests and load seconds."""
    import urllib.request

    from aisle.benchmarks.workloads import WorkloadConfig, rank_workload, search_workload

    workloads = WorkloadConfig(requests=128)
    searches = search_workload(dataset, workloads).requests
    ranks = rank_workload(dataset, workloads).requests

    def load_model(model: str) -> None:
        request = urllib.request.Request(f"http://{http_url}/v2/repository/models/{model}/load", data=b"{}")
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()

    seconds: list[float] = []
    async with _client(url) as client:
        load = Load(client, searches, ranks, concurrency)
        tasks = load.start()
        try:
            await asyncio.sleep(3.0)
            for k in range(switches):
                for model in CATALOG_READERS:
                    shutil.copytree(repo / model / "1", repo / model / str(k + 2))
                started = time.perf_counter()
                for model in CATALOG_READERS:
                    await asyncio.to_thread(load_model, model)
                seconds.append(time.perf_counter() - started)
                await asyncio.sleep(3.0)
        finally:
            load.stopping.set()
            await asyncio.gather(*tasks)
    return {
        "requests": sum(load.count.values()),
        "failed": load.failed,
        "failures": load.failures,
        "switch_s": seconds,
        "cpu_cores": os.cpu_count(),
    }


def refresh_model_sources(repo: Path) -> None:
    """Copy this aisle's python model sources over a rendered repository's (one rendered before the
    catalog readers followed served.json would not switch)."""
    from aisle.export.repo_format import MODEL_VERSION, RepoManifest
    from aisle.export.repository import model_source
    from aisle.export.targets import target_named
    from aisle.export.triton_config import PYTHON_SOURCES

    manifest = RepoManifest.load(repo)
    target = target_named(manifest.target)
    for decl in manifest.schema().models:
        if target.runtime(decl.role).is_python:
            shutil.copy2(model_source(PYTHON_SOURCES[decl.role]), repo / decl.name / MODEL_VERSION / "model.py")


def main(argv: list[str] | None = None) -> int:
    from aisle.data.format import load_dataset
    from aisle.model_repository.server import ServerConfig, TritonServer, free_ports

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="rendered embedded repository (copied, not changed)")
    parser.add_argument("--data", type=Path, required=True, help="the dataset it was rendered from")
    parser.add_argument("--out", type=Path, required=True, help="directory for report.json")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--upserts", type=int, default=5)
    parser.add_argument("--upsert-items", type=int, default=200)
    parser.add_argument("--delete-items", type=int, default=100)
    parser.add_argument("--freshness-items", type=int, default=1000)
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of load before the first upsert and memory reading"
    )
    parser.add_argument("--embed-url", action="store_true", help="embed through the server's embed_item")
    parser.add_argument(
        "--model-control-study",
        action="store_true",
        help="instead of the drill: switch by loading new model versions through Triton's model-control API",
    )
    args = parser.parse_args(argv)
    config = DrillConfig(
        duration_s=args.duration,
        concurrency=args.concurrency,
        upserts=args.upserts,
        upsert_items=args.upsert_items,
        delete_items=args.delete_items,
        freshness_items=args.freshness_items,
        warmup_s=args.warmup,
        embed_url=args.embed_url,
    )
    dataset = load_dataset(args.data)
    with tempfile.TemporaryDirectory(prefix="aisle-live-") as scratch:
        repo = Path(scratch) / "repo"
        shutil.copytree(args.repo, repo, ignore=shutil.ignore_patterns("catalog_versions"))
        refresh_model_sources(repo)
        grpc_port, http_port, metrics_port = free_ports(3)
        server = TritonServer(ServerConfig(repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port))
        with server:
            if args.model_control_study:
                study = asyncio.run(
                    model_control_study(server.grpc_url, server.http_url, repo, dataset, concurrency=args.concurrency)
                )
            else:
                report = asyncio.run(run_drill(server, dataset, config))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model_control_study:
        (args.out / "model_control_study.json").write_text(json.dumps(study, indent=2) + "\n")
        print(json.dumps(study))
        return 1 if study["failed"] else 0
    (args.out / "report.json").write_text(json.dumps(dataclasses.asdict(report), indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in dataclasses.asdict(report).items() if k not in ("upserts",)}, default=str))
    return 1 if report.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
