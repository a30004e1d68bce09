"""Search and recommendation speed by catalog size: the small shop, the full shop, a 1M-item catalog.

    python -m aisle.benchmarks.catalog_scale --repo artifacts/repo --data artifacts/data/small \
        --sizes 5000 1000000 --out artifacts/catalog-scale
    python -m aisle.benchmarks.catalog_scale --repo artifacts/repo-full --data artifacts/data/full \
        --out artifacts/catalog-scale-full

For each size the repository is served by a local embedded tritonserver and loaded by the suite's
Python load generator through the SDK (the same calls a shop makes): embed_query at concurrency 1
and 16 (the yardstick of the speed goals), search and recommend at 1, 4 and 16. Each point carries
Triton's per-step times and the CPU use of generator, server and the rest of the machine. The
in-process stage 1 / stage 2 split (aisle.benchmarks.search_stages) and the server's resident
memory (server + stubs) are recorded per size. Results: scale.json and latency_vs_throughput.png.

A size equal to the repository's catalog serves it as rendered. A larger size is a copy of the
repository whose catalog keeps every real item and adds generated ones, because embedding a
million item texts on 2 cores takes hours: each generated item is a real item's embedding plus
Gaussian noise (sigma NOISE per dimension, renormalised: a "variant" near its parent, so the
catalog keeps the real items' cluster structure), with its parent's features, brand, category and
price, and an id above every real id. The index is what `aisle export repo` would choose for the
size (exact below aisle.retrieval.ANN_MIN_ITEMS, IVF from there) unless --index says otherwise.
Workload histories use real ids, which every size holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from aisle.benchmarks.errors import BenchmarkError

#: Noise per dimension of a generated item around its parent (unit vectors of dim 384: the
#: variant keeps a cosine of ~0.8 with its parent, about as close as two items of one product line).
NOISE = 0.035
#: Rows generated at a time (bounds the temporaries of a 1M-item catalog).
CHUNK = 100_000
SEARCH_LEVELS = (1, 4, 16)
QUERY_LEVELS = (1, 16)


def parent_rows(n_real: int, size: int, seed: int) -> np.ndarray:
    """[size] the real row each catalog row copies: the real rows themselves, then random parents."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.arange(n_real), rng.integers(0, n_real, size - n_real)])


def copy_serving_files(source: Path, out: Path) -> None:
    """Everything of `source` but its catalog data (configs, model sources, graphs, tokenizers) into
    `out`, replacing what `out` held, so a generated catalog can be served by a re-rendered repository."""
    from aisle.retrieval import ATTRIBUTES_FILE, INDEX_FILE

    for stale in (p for p in out.glob("*") if p.is_dir() and not (source / p.name).exists()):
        shutil.rmtree(stale)
    data = shutil.ignore_patterns("__pycache__", "*.npy", INDEX_FILE, ATTRIBUTES_FILE)
    shutil.copytree(source, out, ignore=data, dirs_exist_ok=True)


def scaled_repo(source: Path, out: Path, size: int, *, index_kind: str | None, seed: int = 0) -> Path:
    """A copy of `source` whose catalog holds `size` items (its real ones first); see the module doc."""
    from tqdm import tqdm

    from aisle.export.repo_format import Catalog, RepoManifest, catalog_dir
    from aisle.retrieval import ATTRIBUTES_FILE, INDEX_FILE, FaissIndex, ItemAttributes, build_index, choose_index

    real = Catalog.load(catalog_dir(source))
    attributes = ItemAttributes.load(catalog_dir(source) / ATTRIBUTES_FILE)
    n_real = len(real.item_ids)
    if size < n_real:
        raise BenchmarkError(f"--sizes {size}: smaller than the repository's catalog ({n_real} items)")
    if out.exists():
        shutil.rmtree(out)
    copy_serving_files(source, out)
    parents = parent_rows(n_real, size, seed)
    rng = np.random.default_rng(seed + 1)
    embeddings = np.empty((size, real.dim), np.float32)
    for start in tqdm(range(0, size, CHUNK), desc=f"generating {size} items", unit="chunk"):
        rows = parents[start : start + CHUNK]
        block = np.asarray(real.embeddings)[rows].copy()
        generated = np.arange(start, start + len(rows)) >= n_real
        block[generated] += rng.normal(0.0, NOISE, (int(generated.sum()), real.dim)).astype(np.float32)
        embeddings[start : start + len(rows)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    ids = np.concatenate([real.item_ids, real.item_ids.max() + 1 + np.arange(size - n_real)]).astype(np.int64)
    catalog = Catalog.build(ids, embeddings, np.asarray(real.features)[parents])
    directory = catalog_dir(out)
    catalog.save(directory)
    replace(
        attributes,
        item_ids=ids,
        brand_codes=attributes.brand_codes[parents],
        category_codes=attributes.category_codes[parents],
        prices=attributes.prices[parents],
    ).save(directory / ATTRIBUTES_FILE)
    params = choose_index(size, index_kind)
    index = build_index(embeddings, params)
    if isinstance(index, FaissIndex):
        index.save(directory / INDEX_FILE)
    manifest = RepoManifest.load(source)
    manifest.catalog_items, manifest.index = size, params.to_dict()
    manifest.save(out)
    return out


async def _points(url: str, workloads: dict, measurer, duration_s: float, label: str) -> list:
    from aisle.benchmarks.callers import sdk_call
    from aisle.benchmarks.load import LoadConfig, closed_loop
    from aisle.benchmarks.suite import Measurer
    from aisle.client import AsyncAisleClient

    load = LoadConfig.for_duration(duration_s)
    plan = [("embed_query", c) for c in QUERY_LEVELS]
    plan += [(name, c) for name in ("search", "recommend") for c in SEARCH_LEVELS]
    points = []
    async with AsyncAisleClient(url) as client:
        await client.wait_until_ready(60.0)
        for name, concurrency in plan:
            workload = workloads[name]
            with measurer.around(workload.ensemble) as measured:
                point = await closed_loop(
                    sdk_call(client, workload.ensemble), workload.requests, concurrency, load, workload=name
                )
            points.append(replace(Measurer.finish(point, measured), system=label))
    return points


def cached_scaled_repo(source: Path, out: Path, size: int, index_kind: str | None) -> Path:
    """scaled_repo, unless `out` already holds a catalog of that size of that source with that index
    (a 1M-item catalog takes minutes to generate and index): then only its serving files are
    refreshed from `source`."""
    from aisle.export.repo_format import REPO_MANIFEST, RepoManifest
    from aisle.retrieval import choose_index

    if (out / REPO_MANIFEST).is_file():
        made, base = RepoManifest.load(out), RepoManifest.load(source)
        wanted = choose_index(size, index_kind).to_dict()
        if (made.catalog_items, made.index, made.data_fingerprint) == (size, wanted, base.data_fingerprint):
            copy_serving_files(source, out)
            base.catalog_items, base.index = size, wanted
            base.save(out)
            return out
    return scaled_repo(source, out, size, index_kind=index_kind)


def measure_size(repo: Path, workloads: dict, duration_s: float) -> dict:
    """Serve `repo` and measure it: load points, stage split, server memory."""
    import tritonclient.grpc as grpcclient

    from aisle.benchmarks import search_stages
    from aisle.benchmarks.cpu import find_server_pid, process_tree_rss_bytes
    from aisle.benchmarks.suite import Measurer
    from aisle.export.repo_format import RepoManifest
    from aisle.model_repository.server import ServerConfig, TritonServer, free_ports

    manifest = RepoManifest.load(repo)
    label = f"{manifest.catalog_items} items"
    server = TritonServer(ServerConfig(repo, *free_ports(3)))
    with server:
        pid = find_server_pid(int(server.grpc_url.rsplit(":", 1)[1]))
        if pid is None:
            raise BenchmarkError(f"no tritonserver process found for {server.grpc_url}")
        rss_ready = process_tree_rss_bytes(pid) / 2**20
        triton = grpcclient.InferenceServerClient(server.grpc_url)
        measurer = Measurer(triton, manifest.schema(), pid, {})
        points = asyncio.run(_points(server.grpc_url, workloads, measurer, duration_s, label))
        rss_loaded = process_tree_rss_bytes(pid) / 2**20
        stages = search_stages.measure(repo, server.grpc_url, [workloads["search"], workloads["recommend"]])
        triton.close()
    return {
        "catalog_items": manifest.catalog_items,
        "index": manifest.index or {"kind": "exact"},
        "server_rss_mib": {"ready": rss_ready, "after_load": rss_loaded},
        "stages": stages,
        "points": [p.to_dict() for p in points],
        "failures": measurer.failures,
        "goals": goals([p.to_dict() for p in points]),
    }


def goals(points: list[dict]) -> dict:
    """Issue 12's speed ratios for one catalog size, from its own points."""
    from aisle.benchmarks.targets import SEARCH_LATENCY_RATIO, SEARCH_THROUGHPUT_SHARE

    def point(workload: str, level: int) -> dict:
        return next(p for p in points if p["workload"] == workload and p["level"] == level)

    top = max(SEARCH_LEVELS)
    latency = point("search", 1)["latency"]["p50_ms"] / point("embed_query", 1)["latency"]["p50_ms"]
    throughput = point("search", top)["throughput_rps"] / point("embed_query", top)["throughput_rps"]
    return {
        "search_p50_over_embed_query_c1": latency,
        "search_p50_goal": f"<= {SEARCH_LATENCY_RATIO}",
        f"search_over_embed_query_throughput_c{top}": throughput,
        "search_throughput_goal": f">= {SEARCH_THROUGHPUT_SHARE}",
        "pass": latency <= SEARCH_LATENCY_RATIO and throughput >= SEARCH_THROUGHPUT_SHARE,
    }


def main(argv: list[str] | None = None) -> int:
    from aisle.benchmarks.report import plot_latency
    from aisle.benchmarks.workloads import WorkloadConfig, build_workloads
    from aisle.data.format import load_dataset
    from aisle.export.repo_format import RepoManifest

    parser = argparse.ArgumentParser(
        prog="python -m aisle.benchmarks.catalog_scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--repo", type=Path, required=True, help="a rendered repository (its catalog is the smallest size)"
    )
    parser.add_argument("--data", type=Path, required=True, help="the dataset the workloads are drawn from")
    parser.add_argument("--sizes", type=int, nargs="*", default=[], help="catalog sizes (default: the repository's)")
    parser.add_argument("--index", choices=("exact", "ivf", "hnsw"), default=None, help="index of generated sizes")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per load point (default 6)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    own = RepoManifest.load(args.repo).catalog_items
    workloads = build_workloads(load_dataset(args.data), WorkloadConfig())
    results = []
    for size in args.sizes or [own]:
        repo = (
            args.repo if size == own else scaled_repo(args.repo, args.out / f"repo-{size}", size, index_kind=args.index)
        )
        results.append(measure_size(repo, workloads, args.duration))
        print(
            json.dumps({k: results[-1][k] for k in ("catalog_items", "index", "server_rss_mib", "goals")}),
            file=sys.stderr,
        )
    (args.out / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_latency([p for r in results for p in r["points"]], args.out / "latency_vs_throughput.png")
    print(f"wrote {args.out / 'scale.json'} and latency_vs_throughput.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
