"""Simple-loop measurements of a running server: p50 latencies, bucket vs max-length padding,
and the dynamic batcher's queue delay. Reusable functions (the benchmark suite can call them)
plus `python -m aisle.model_repository.measure` which prints one JSON report.

These are deliberately plain: one gRPC client per thread, wall-clock timing around each call.
On a machine whose cores the client shares with the server, the numbers include that contention.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aisle.schema import (
    ATTENTION_MASK,
    CANDIDATE_IDS,
    EMBED_QUERY,
    EMBEDDING,
    INPUT_IDS,
    ITEM_ENCODER,
    QUERY,
    RANK,
    SCORES,
    USER_HISTORY_IDS,
    Role,
)

Inputs = dict[str, np.ndarray]
WIRE_TYPES = {"O": "BYTES", "i": "INT64", "f": "FP32"}


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds over `count` calls."""

    count: int
    p50_ms: float
    p90_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencyStats:
        ms = sorted(s * 1000 for s in seconds)
        return cls(len(ms), statistics.median(ms), ms[int(0.9 * (len(ms) - 1))], statistics.fmean(ms))


@dataclass(frozen=True)
class LoadResult:
    """A closed-loop load: `concurrency` callers, each sending its next request when one returns."""

    concurrency: int
    requests: int
    seconds: float
    requests_per_s: float
    rows_per_s: float
    latency: LatencyStats


def infer(client, model: str, inputs: Inputs, output: str) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    wire = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), WIRE_TYPES[array.dtype.kind])
        tensor.set_data_from_numpy(array)
        wire.append(tensor)
    return client.infer(model, wire, client_timeout=120).as_numpy(output)


def time_calls(call: Callable[[], object], *, iterations: int, warmup: int = 5) -> LatencyStats:
    """Latency of `call` run back to back (after `warmup` untimed calls)."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return LatencyStats.of(seconds)


def closed_loop(
    url: str, model: str, requests: list[Inputs], output: str, *, concurrency: int, rounds: int = 1
) -> LoadResult:
    """Send `requests` (`rounds` times over) from `concurrency` threads; throughput and latency."""
    import tritonclient.grpc as grpcclient

    queue = list(requests) * rounds
    lock = threading.Lock()
    seconds: list[float] = []
    rows = [0]

    def worker() -> None:
        client = grpcclient.InferenceServerClient(url)
        while True:
            with lock:
                if not queue:
                    return
                inputs = queue.pop()
            start = time.perf_counter()
            infer(client, model, inputs, output)
            with lock:
                seconds.append(time.perf_counter() - start)
                rows[0] += len(next(iter(inputs.values())))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return LoadResult(
        concurrency, len(seconds), elapsed, len(seconds) / elapsed, rows[0] / elapsed, LatencyStats.of(seconds)
    )


def texts(values: list[str]) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=object).reshape(-1, 1)


def rank_request(query: str, candidates: list[int], history: list[int]) -> Inputs:
    return {
        QUERY: texts([query]),
        CANDIDATE_IDS: np.array([candidates], np.int64),
        USER_HISTORY_IDS: np.array([history], np.int64).reshape(1, len(history)),
    }


def latencies(url: str, queries: list[str], item_ids: list[int], *, iterations: int = 200) -> dict[str, LatencyStats]:
    """p50 of embed_query at batch 1 and of rank with 100 candidates and 10 history items."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    cycle = iter(range(10**9))

    def embed_query() -> object:
        return infer(client, EMBED_QUERY, {QUERY: texts([queries[next(cycle) % len(queries)]])}, EMBEDDING)

    def rank() -> object:
        offset = next(cycle) % max(1, len(item_ids) - 110)
        request = rank_request(queries[offset % len(queries)], item_ids[offset : offset + 100], item_ids[-10:])
        return infer(client, RANK, request, SCORES)

    return {
        "embed_query_batch1": time_calls(embed_query, iterations=iterations),
        "rank_100_candidates_10_history": time_calls(rank, iterations=iterations),
    }


def bucket_vs_padding(
    url: str, item_texts: list[str], tokenizer_dir: Path, buckets: tuple[int, ...], *, concurrency: int = 8
) -> dict[str, object]:
    """Item-encoder throughput on the same texts, tokenised with the length buckets vs padded to the max.

    Both variants send pre-tokenised ids straight to the item_encoder model (no tokenizer hop), so
    the only difference is the sequence length: per-request bucket vs always the largest bucket.
    Two shapes of traffic: single-text requests merged by the dynamic batcher, and batches of 64.
    """
    from aisle.tokenization import Bucketing, encode_batch, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir, buckets[-1])
    bucketing, padded = Bucketing(buckets), Bucketing((buckets[-1],))
    lengths = [len(e.ids) for e in tokenizer.encode_batch(item_texts)]
    report: dict[str, object] = {
        "texts": len(item_texts),
        "bucket_share": {b: sum(bucketing.bucket_for(n) == b for n in lengths) / len(lengths) for b in buckets},
    }
    for label, size in (("single_text_requests", 1), ("batch64_requests", 64)):
        chunks = [item_texts[i : i + size] for i in range(0, len(item_texts), size)]
        for name, scheme in (("buckets", bucketing), ("pad_to_max", padded)):
            requests = []
            for chunk in chunks:
                ids, mask = encode_batch(tokenizer, chunk, scheme)
                requests.append({INPUT_IDS: ids, ATTENTION_MASK: mask})
            result = closed_loop(url, ITEM_ENCODER, requests, EMBEDDING, concurrency=concurrency)
            report[f"{label}/{name}"] = asdict(result)
    return report


@dataclass(frozen=True)
class SweepPoint:
    """One max_queue_delay setting: latency alone (concurrency 1) and throughput under load."""

    idle: LoadResult
    loaded: LoadResult


def queue_delay_sweep(
    repo: Path,
    delays_us: list[int],
    requests: list[Inputs],
    *,
    ensemble: str,
    output: str,
    roles: frozenset[Role],
    concurrency: int = 8,
    rounds: int = 2,
) -> dict[int, SweepPoint]:
    """`ensemble` alone and under closed-loop load, once per max_queue_delay of the models with `roles`.

    Each point renders a copy of the repository with the delay changed and starts its own server.
    """
    from aisle.export.repo_format import RepoManifest
    from aisle.export.triton_config import read_config, write_config
    from aisle.model_repository.server import ServerConfig, TritonServer, free_ports

    schema = RepoManifest.load(repo).schema()
    names = [m.name for m in schema.models if m.role in roles and m.batching.max_queue_delay_us is not None]
    results: dict[int, SweepPoint] = {}
    for delay in delays_us:
        with tempfile.TemporaryDirectory(prefix="aisle-delay-") as scratch:
            copy = Path(scratch) / "repo"
            shutil.copytree(repo, copy)
            for name in names:
                config = read_config(copy / name)
                config.dynamic_batching.max_queue_delay_microseconds = delay
                write_config(config, copy / name)
            grpc_port, http_port, metrics_port = free_ports(3)
            with TritonServer(ServerConfig(copy, grpc_port, http_port, metrics_port)) as server:
                url = server.grpc_url
                closed_loop(url, ensemble, requests[:50], output, concurrency=concurrency)
                idle = closed_loop(url, ensemble, requests[:100], output, concurrency=1)
                loaded = closed_loop(url, ensemble, requests, output, concurrency=concurrency, rounds=rounds)
                results[delay] = SweepPoint(idle, loaded)
    return results


def zipf_draws(texts: list[str], count: int, *, exponent: float = 1.1, seed: int = 0) -> list[str]:
    """`count` texts drawn with Zipf weights over `texts` (the first is the most frequent), as
    head queries recur in a shop's search log."""
    weights = 1.0 / np.arange(1, len(texts) + 1) ** exponent
    picks = np.random.default_rng(seed).choice(len(texts), size=count, p=weights / weights.sum())
    return [texts[i] for i in picks]


def cache_hits(client, model: str) -> int:
    """How many requests to `model` Triton's response cache has answered since the server started."""
    stats = client.get_inference_statistics(model_name=model)
    return sum(s.inference_stats.cache_hit.count for s in stats.model_stats)


def response_cache_comparison(
    repo: Path, queries: list[str], cache_mb: int, *, draws: int = 2000, concurrency: int = 8
) -> dict[int, dict]:
    """embed_query on Zipf-repeated queries, on a server without a response cache and one with
    `cache_mb` MiB: throughput, latency and the query encoder's cache hits, by cache size."""
    import tritonclient.grpc as grpcclient

    from aisle.model_repository.server import ServerConfig, TritonServer, free_ports
    from aisle.schema import QUERY_ENCODER

    drawn = zipf_draws(queries, draws)
    requests = [{QUERY: texts([q])} for q in drawn]
    distinct = len(set(drawn))
    results: dict[int, dict] = {}
    for size in (0, cache_mb):
        with TritonServer(ServerConfig(repo, *free_ports(3), response_cache_mb=size)) as server:
            load = closed_loop(server.grpc_url, EMBED_QUERY, requests, EMBEDDING, concurrency=concurrency)
            hits = cache_hits(grpcclient.InferenceServerClient(server.grpc_url), QUERY_ENCODER)
            results[size] = {"load": asdict(load), "encoder_cache_hits": hits, "distinct_queries": distinct}
    return results


def main(argv: list[str] | None = None) -> int:
    from aisle.data.format import load_dataset
    from aisle.export.repo_format import MODEL_VERSION, RepoManifest
    from aisle.schema import ITEM_TOKENIZER

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="gRPC address of a running server, e.g. 127.0.0.1:8001")
    parser.add_argument("--repo", type=Path, required=True, help="the repository it serves")
    parser.add_argument("--data", type=Path, required=True, help="dataset whose queries and items drive the load")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument(
        "--delay-sweep-us", type=int, nargs="*", default=[], help="also sweep the encoders' delay on embed_query"
    )
    parser.add_argument(
        "--rank-delay-sweep-us",
        type=int,
        nargs="*",
        default=[],
        help="also sweep the delay of rank's other steps (tokenizer, item store, fusion head) on rank",
    )
    parser.add_argument(
        "--cache-comparison-mb",
        type=int,
        default=0,
        help="also compare embed_query on Zipf-repeated queries without and with a response cache of this size",
    )
    args = parser.parse_args(argv)

    dataset = load_dataset(args.data)
    queries = [q.text for q in dataset.queries]
    item_ids = [item.item_id for item in dataset.items]
    manifest = RepoManifest.load(args.repo)
    measured = latencies(args.url, queries, item_ids, iterations=args.iterations)
    tokenizer_dir = args.repo / ITEM_TOKENIZER / MODEL_VERSION
    item_texts = [item.text() for item in dataset.items]
    report: dict[str, object] = {
        "latency": {name: asdict(stats) for name, stats in measured.items()},
        "item_buckets": bucket_vs_padding(args.url, item_texts, tokenizer_dir, manifest.limits.item_buckets),
    }
    if args.delay_sweep_us:
        sweep = queue_delay_sweep(
            args.repo,
            args.delay_sweep_us,
            [{QUERY: texts([q])} for q in queries],
            ensemble=EMBED_QUERY,
            output=EMBEDDING,
            roles=frozenset({Role.ENCODER}),
        )
        report["encoder_queue_delay_sweep"] = {delay: asdict(point) for delay, point in sweep.items()}
    if args.rank_delay_sweep_us:
        span = max(1, len(item_ids) - 110)
        requests = [rank_request(q, item_ids[n % span : n % span + 100], item_ids[-10:]) for n, q in enumerate(queries)]
        sweep = queue_delay_sweep(
            args.repo,
            args.rank_delay_sweep_us,
            requests,
            ensemble=RANK,
            output=SCORES,
            roles=frozenset({Role.TOKENIZER, Role.ITEM_STORE, Role.FUSION_HEAD}),
        )
        report["rank_queue_delay_sweep"] = {delay: asdict(point) for delay, point in sweep.items()}
    if args.cache_comparison_mb:
        report["response_cache"] = response_cache_comparison(args.repo, queries, args.cache_comparison_mb)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
