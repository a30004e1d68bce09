"""Studies of single serving decisions, each on the suite's load generator and workloads.

`aisle bench` measures everything against the targets; a study isolates one decision that the
README reports, and prints one JSON report:

    python -m aisle.benchmarks.studies latency --url HOST:8001 --data DATA
    python -m aisle.benchmarks.studies buckets --repo REPO --data DATA
    python -m aisle.benchmarks.studies queue-delay --repo REPO --data DATA \\
        --encoder-us 0 500 1000 2000 --rank-us 0 250 500 1000
    python -m aisle.benchmarks.studies instances --repo REPO --data DATA --counts 2 1 --rounds 2
    python -m aisle.benchmarks.studies response-cache --repo REPO --data DATA --cache-mb 64
    python -m aisle.benchmarks.studies client-cpu --repo REPO --data DATA
    python -m aisle.benchmarks.studies first-calls --repo REPO --data DATA

latency: embed_query (one query) and rank (100 candidates, a session's history), one caller.
buckets: the item encoder on the same item texts tokenised to their length bucket vs padded to the
    largest bucket, as single-text requests (merged by the dynamic batcher) and batches of 64.
queue-delay: each max_queue_delay_us setting on its own server: one caller, and `--concurrency`.
instances: the query encoder's instance count (each instance takes cores / instances threads) on its
    own server, embed_query with one caller, 4 and `--concurrency`; the counts alternate for
    `--rounds` rounds, since the machine's speed drifts between runs.
response-cache: Zipf-repeated queries, each sent once from an empty cache, on a server without a
    response cache and on one with `--cache-mb` MiB; the query encoder's cache hits.
client-cpu: the client's own CPU per embed_query call, one caller: aisle's AsyncAisleClient against
    tritonclient's bare aio client on the same requests, and against gRPC's own floor (grpc.aio
    sending requests serialised beforehand, the answer left unparsed), alternating; on a machine
    shared with the server, what the client spends is taken from the server.
first-calls: on a server just started, each ensemble's first `--calls` requests one by one (wall ms,
    and each composing model's compute ms from Triton's statistics): what warmup leaves for the
    first shoppers after a start or a reload.

Requests go straight to the named model over gRPC (callers.raw_call): the server's cost without
the SDK's checks. latency and buckets use the server at --url, else start one on --repo;
queue-delay and response-cache start their own, one per setting. On a machine whose cores the
load generator shares with the server, every number includes that contention.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from aisle.benchmarks.callers import batch_of_one, raw_call, sdk_call
from aisle.benchmarks.drills.traffic import MODEL_INFER_METHOD, infer_request_bytes
from aisle.benchmarks.errors import BenchmarkError
from aisle.benchmarks.load import Call, LoadConfig, LoadPoint, closed_loop, single_pass
from aisle.benchmarks.targets import UNKNOWN
from aisle.benchmarks.workloads import (
    Workload,
    WorkloadConfig,
    build_workloads,
    item_workload,
    query_workload,
    rank_workload,
    zipf_query_workload,
)
from aisle.errors import AisleError
from aisle.schema import ATTENTION_MASK, INPUT_IDS, ITEM_ENCODER, ITEM_TEXT, QUERY, QUERY_ENCODER, Role, Schema

#: Calls each client makes before the client-cpu study starts timing it (channel set-up, first calls).
WARMUP_CALLS = 20
#: What each queue-delay sweep changes (models with these roles) and the workload it loads them with.
SWEEPS = {
    "encoder": ("embed_query", frozenset({Role.ENCODER, Role.TEXT_ENCODER})),
    "rank": ("rank", frozenset({Role.TOKENIZER, Role.ITEM_STORE, Role.FUSION_HEAD})),
}


def served_target(repo: Path | None) -> str:
    """The target `repo` was rendered for; a server known by its url alone does not say."""
    if repo is None:
        return UNKNOWN
    from aisle.export.repo_format import RepoManifest

    return RepoManifest.load(repo).target


@contextmanager
def serving(url: str | None, repo: Path | None, *, response_cache_mb: int = 0) -> Iterator[str]:
    """`url` itself, or the url of an embedded server on `repo` started for the study (stopped after)."""
    if url:
        yield url
        return
    if repo is None:
        raise BenchmarkError("no server: give the url of a running one or a repository to start one on")
    from aisle.model_repository.server import ServerConfig, TritonServer, free_ports

    with TritonServer(ServerConfig(repo, *free_ports(3), response_cache_mb=response_cache_mb)) as server:
        yield server.grpc_url


def measure(url: str, model: str, run: Callable[[Call], Awaitable[LoadPoint]]) -> LoadPoint:
    """`run` driving raw calls of `model` on the server at `url`, with a client of its own event loop."""

    async def main() -> LoadPoint:
        from tritonclient.grpc.aio import InferenceServerClient

        client = InferenceServerClient(url)
        try:
            return await run(raw_call(client, model))
        finally:
            await client.close()

    return asyncio.run(main())


def closed(url: str, model: str, requests: Sequence[dict], concurrency: int, load: LoadConfig, name: str) -> LoadPoint:
    """The suite's windowed closed loop of raw calls."""
    return measure(url, model, lambda call: closed_loop(call, requests, concurrency, load, workload=name))


def batched(workload: Workload) -> list[dict]:
    return [batch_of_one(request) for request in workload.requests]


def latencies(url: str, workloads: Sequence[Workload], load: LoadConfig) -> dict[str, LoadPoint]:
    """Each workload's ensemble called by one caller, back to back."""
    return {w.name: closed(url, w.ensemble, batched(w), 1, load, w.name) for w in workloads}


def bucket_vs_padding(
    url: str,
    texts: list[str],
    tokenizer_dir: Path,
    buckets: tuple[int, ...],
    load: LoadConfig,
    *,
    concurrency: int = 8,
    batch: int = 64,
) -> dict[str, object]:
    """Item-encoder throughput on `texts` tokenised with the length buckets vs padded to the largest,
    as single-text requests (merged by the dynamic batcher) and as requests of `batch` texts.

    Both variants send pre-tokenised ids straight to the item_encoder model (no tokenizer hop), so
    the only difference is the sequence length. A request of `batch` texts holds one bucket, as the
    suite's raw ORT baseline does (aisle.benchmarks.baselines.pretokenize says why).
    """
    from aisle.benchmarks.baselines import pretokenize
    from aisle.tokenization import Bucketing, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir, buckets[-1])
    bucketing = Bucketing(buckets)
    found = [bucketing.bucket_for(len(e.ids)) for e in tokenizer.encode_batch(texts)]
    report: dict[str, object] = {"texts": len(texts), "bucket_share": {b: found.count(b) / len(found) for b in buckets}}
    for label, size in (("single_text_requests", 1), (f"batch{batch}_requests", batch)):
        for name, scheme in (("buckets", bucketing), ("pad_to_max", Bucketing((buckets[-1],)))):
            batches = pretokenize(texts, tokenizer, scheme, size, cut=False)
            requests = [{INPUT_IDS: ids, ATTENTION_MASK: mask} for ids, mask in batches]
            point = closed(url, ITEM_ENCODER, requests, concurrency, load, f"{label}/{name}")
            report[f"{label}/{name}"] = {
                **point.to_dict(),
                "texts_per_s": point.throughput_rps * len(texts) / len(requests),
                "padded_tokens_per_text": sum(ids.size for ids, _ in batches) / len(texts),
            }
    return report


@dataclass(frozen=True)
class SweepPoint:
    """One max_queue_delay setting: latency alone (one caller) and throughput under load."""

    idle: LoadPoint
    loaded: LoadPoint


def edited_copy(repo: Path, out: Path, names: Sequence[str], edit: Callable[[object], None]) -> None:
    """Copy `repo` to `out`, then apply `edit` to the ModelConfig of each model in `names`."""
    from aisle.export.triton_config import read_config, write_config

    shutil.copytree(repo, out)
    for name in names:
        config = read_config(out / name)
        edit(config)
        write_config(config, out / name)


def with_queue_delay(repo: Path, out: Path, delay_us: int, roles: frozenset[Role]) -> list[str]:
    """Copy `repo` to `out` with every batching model of `roles` waiting `delay_us`; their names."""
    from aisle.export.repo_format import RepoManifest

    models = RepoManifest.load(repo).schema().models
    names = [m.name for m in models if m.role in roles and m.batching.max_queue_delay_us is not None]

    def delay(config) -> None:
        config.dynamic_batching.max_queue_delay_microseconds = delay_us

    edited_copy(repo, out, names, delay)
    return names


def queue_delay_sweep(
    repo: Path, delays_us: list[int], workload: Workload, roles: frozenset[Role], load: LoadConfig, *, concurrency: int
) -> dict[int, SweepPoint]:
    """`workload` alone and under closed-loop load, once per delay of the models with `roles`,
    each on a copy of the repository with that delay, served by its own server."""
    from tqdm import tqdm

    requests = batched(workload)
    results: dict[int, SweepPoint] = {}
    for delay in tqdm(delays_us, desc=f"queue delay sweep on {workload.name}", unit="server"):
        with tempfile.TemporaryDirectory(prefix="aisle-delay-") as scratch:
            copy = Path(scratch) / "repo"
            with_queue_delay(repo, copy, delay, roles)
            with serving(None, copy) as url:
                idle = closed(url, workload.ensemble, requests, 1, load, workload.name)
                loaded = closed(url, workload.ensemble, requests, concurrency, load, workload.name)
        results[delay] = SweepPoint(idle, loaded)
    return results


def instances_sweep(
    repo: Path,
    counts: Sequence[int],
    workload: Workload,
    load: LoadConfig,
    *,
    concurrencies: Sequence[int],
    rounds: int,
) -> dict[int, list[dict[int, LoadPoint]]]:
    """`workload` at each concurrency on a copy of the repository whose query encoder runs `count`
    instances, for each count in turn, `rounds` times: count -> one {concurrency: point} per round."""
    from tqdm import tqdm

    requests = batched(workload)
    results: dict[int, list[dict[int, LoadPoint]]] = {count: [] for count in counts}
    order = [count for _ in range(rounds) for count in counts]
    for count in tqdm(order, desc="query encoder instances", unit="server"):

        def instances(config, count: int = count) -> None:
            config.instance_group[0].count = count

        with tempfile.TemporaryDirectory(prefix="aisle-instances-") as scratch:
            copy = Path(scratch) / "repo"
            edited_copy(repo, copy, [QUERY_ENCODER], instances)
            with serving(None, copy) as url:
                points = {c: closed(url, workload.ensemble, requests, c, load, workload.name) for c in concurrencies}
        results[count].append(points)
    return results


def response_cache_comparison(repo: Path, workload: Workload, cache_mb: int, *, concurrency: int) -> dict[int, dict]:
    """`workload` (repeated queries) sent once, in order, on a server without a response cache and
    on one with `cache_mb` MiB, both starting empty: throughput, latency and the query encoder's
    cache hits, by cache size."""
    import tritonclient.grpc as grpcclient
    from tqdm import tqdm

    from aisle.benchmarks.server_stats import cache_hits

    requests = batched(workload)
    results: dict[int, dict] = {}
    for size in tqdm((0, cache_mb), desc="response cache", unit="server"):
        with serving(None, repo, response_cache_mb=size) as url:
            point = measure(url, workload.ensemble, lambda call: single_pass(call, requests, concurrency))
            client = grpcclient.InferenceServerClient(url)
            hits = cache_hits(client, QUERY_ENCODER)
            client.close()
        results[size] = {
            "load": point.to_dict(),
            "requests": len(requests),
            "distinct_queries": len(set(workload.texts(QUERY))),
            "encoder_cache_hits": hits,
        }
    return results


# --- command line ----------------------------------------------------------------------------------


def _dataset(args: argparse.Namespace):
    from aisle.data.format import load_dataset

    return load_dataset(args.data)


def _latency(args: argparse.Namespace) -> dict:
    dataset, config = _dataset(args), WorkloadConfig()
    with serving(args.url, args.repo) as url:
        points = latencies(url, [query_workload(dataset, config), rank_workload(dataset, config)], args.load)
    return {"latency": {name: point.to_dict() for name, point in points.items()}}


def _buckets(args: argparse.Namespace) -> dict:
    from aisle.export.repo_format import MODEL_VERSION, RepoManifest
    from aisle.schema import ITEM_TOKENIZER

    texts = item_workload(_dataset(args), WorkloadConfig()).texts(ITEM_TEXT)
    buckets = RepoManifest.load(args.repo).limits.item_buckets
    with serving(args.url, args.repo) as url:
        tokenizer_dir = args.repo / ITEM_TOKENIZER / MODEL_VERSION
        report = bucket_vs_padding(
            url, texts, tokenizer_dir, buckets, args.load, concurrency=args.concurrency, batch=args.batch
        )
    return {"item_buckets": report}


def _queue_delay(args: argparse.Namespace) -> dict:
    dataset, config = _dataset(args), WorkloadConfig()
    builders = {"embed_query": query_workload, "rank": rank_workload}
    report = {}
    for sweep, delays in (("encoder", args.encoder_us), ("rank", args.rank_us)):
        workload_name, roles = SWEEPS[sweep]
        workload = builders[workload_name](dataset, config)
        points = queue_delay_sweep(args.repo, delays, workload, roles, args.load, concurrency=args.concurrency)
        report[f"{sweep}_queue_delay_sweep"] = {delay: asdict(point) for delay, point in points.items()}
    return report


def prebuilt_call(channel, workload: Workload) -> Call:
    """ModelInfer on a grpc.aio channel with each request serialised beforehand and the answer left
    as bytes: what a Python gRPC call costs with no client library around it."""
    # Keyed by the workload's own request objects, which are what the study's calls pass in.
    payloads = {id(r): infer_request_bytes(workload.ensemble, batch_of_one(r)) for r in workload.requests}
    infer = channel.unary_unary(MODEL_INFER_METHOD)

    async def call(request: dict) -> object:
        return await infer(payloads[id(request)])

    return call


def client_cpu(url: str, workload: Workload, *, calls: int, rounds: int = 2) -> dict[str, list[dict[str, float]]]:
    """Client CPU ms and wall ms per call (the process's CPU time, gRPC's own threads included), for
    `calls` sequential calls of `workload` by each client, alternating `rounds` times."""
    from tritonclient.grpc.aio import InferenceServerClient

    from aisle.client import AsyncAisleClient

    async def timed(call: Call) -> dict[str, float]:
        requests = [workload.requests[i % len(workload.requests)] for i in range(calls)]
        for request in requests[:WARMUP_CALLS]:
            await call(request)
        wall, cpu = time.perf_counter(), time.process_time()
        for request in requests:
            await call(request)
        return {
            "client_cpu_ms": (time.process_time() - cpu) / calls * 1e3,
            "wall_ms": (time.perf_counter() - wall) / calls * 1e3,
        }

    async def main() -> dict[str, list[dict[str, float]]]:
        bare = InferenceServerClient(url)
        channel = grpc.aio.insecure_channel(url)
        report: dict[str, list[dict[str, float]]] = {"grpc_aio_floor": [], "tritonclient_aio": [], "aisle_sdk": []}
        try:
            async with AsyncAisleClient(url) as sdk:
                raw = raw_call(bare, workload.ensemble)
                floor = prebuilt_call(channel, workload)
                for _ in range(rounds):
                    report["grpc_aio_floor"].append(await timed(floor))
                    report["tritonclient_aio"].append(await timed(lambda request: raw(batch_of_one(request))))
                    report["aisle_sdk"].append(await timed(sdk_call(sdk, workload.ensemble)))
        finally:
            await bare.close()
            await channel.close()
        return report

    return asyncio.run(main())


def _client_cpu(args: argparse.Namespace) -> dict:
    workload = query_workload(_dataset(args), WorkloadConfig())
    with serving(args.url, args.repo) as url:
        return {"client_cpu": client_cpu(url, workload, calls=args.calls)}


def first_calls(url: str, schema: Schema, workloads: Sequence[Workload], calls: int) -> dict[str, list[dict]]:
    """Per workload, its first `calls` requests one at a time: wall ms and the compute ms of each
    composing model they reached (server_stats.step_times over Triton's statistics around each call)."""
    import tritonclient.grpc as grpcclient

    from aisle.benchmarks.server_stats import snapshot, step_times, window_of_one_call

    stats = grpcclient.InferenceServerClient(url)

    async def one(call: Call, request: dict, ensemble: str) -> dict:
        before, start = snapshot(stats), time.perf_counter()
        await call(batch_of_one(request))
        wall_ms = (time.perf_counter() - start) * 1e3
        decl = schema.ensemble(ensemble)
        steps = step_times(decl, window_of_one_call(stats, before, decl))
        return {"wall_ms": wall_ms, "compute_ms": {step.model: step.compute_ms for step in steps}}

    async def main() -> dict[str, list[dict]]:
        from tritonclient.grpc.aio import InferenceServerClient

        client = InferenceServerClient(url)
        try:
            return {
                w.name: [await one(raw_call(client, w.ensemble), r, w.ensemble) for r in w.requests[:calls]]
                for w in workloads
            }
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    finally:
        stats.close()


def _first_calls(args: argparse.Namespace) -> dict:
    from aisle.export.repo_format import RepoManifest

    workloads = build_workloads(_dataset(args), WorkloadConfig())
    schema = RepoManifest.load(args.repo).schema()
    with serving(None, args.repo) as url:
        return {"first_calls": first_calls(url, schema, list(workloads.values()), args.calls)}


def _instances(args: argparse.Namespace) -> dict:
    workload = query_workload(_dataset(args), WorkloadConfig())
    concurrencies = sorted({1, 4, args.concurrency})
    sweep = instances_sweep(
        args.repo, args.counts, workload, args.load, concurrencies=concurrencies, rounds=args.rounds
    )
    return {
        "query_encoder_instances": {
            count: [{c: point.to_dict() for c, point in points.items()} for points in rounds]
            for count, rounds in sweep.items()
        }
    }


def _response_cache(args: argparse.Namespace) -> dict:
    workload = zipf_query_workload(_dataset(args), WorkloadConfig(requests=args.draws))
    report = response_cache_comparison(args.repo, workload, args.cache_mb, concurrency=args.concurrency)
    return {"response_cache": report}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aisle.benchmarks.studies",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    studies = parser.add_subparsers(dest="study", required=True, metavar="STUDY")

    def study(name: str, handler: Callable, about: str, *, url: bool, repo_required: bool = True, loaded: bool = True):
        sub = studies.add_parser(name, help=about, description=about)
        sub.add_argument("--data", type=Path, required=True, help="dataset whose queries and items drive the load")
        sub.add_argument("--repo", type=Path, required=repo_required, help="the rendered model repository")
        if url:
            sub.add_argument("--url", help="gRPC host:port of a running server of the repository (default: start one)")
        if loaded:
            sub.add_argument("--concurrency", type=int, default=8, help="callers of the loaded points (default 8)")
        sub.add_argument("--duration", type=float, default=10.0, help="measured seconds per load point (default 10)")
        sub.set_defaults(handler=handler, url=None)
        return sub

    study("latency", _latency, "embed_query and rank latency, one caller", url=True, repo_required=False, loaded=False)
    buckets = study("buckets", _buckets, "item encoder: length buckets vs pad-to-max", url=True)
    buckets.add_argument("--batch", type=int, default=64, help="texts per request of the batched variant (default 64)")
    delay = study("queue-delay", _queue_delay, "dynamic batcher max_queue_delay_us sweep", url=False)
    delay.add_argument("--encoder-us", type=int, nargs="*", default=[], help="delays of the encoders, on embed_query")
    delay.add_argument(
        "--rank-us", type=int, nargs="*", default=[], help="delays of rank's tokenizer, item store and head, on rank"
    )
    counts = study("instances", _instances, "query encoder instance counts on embed_query", url=False)
    counts.add_argument("--counts", type=int, nargs="+", default=[2, 1], help="instance counts (default 2 1)")
    counts.add_argument("--rounds", type=int, default=2, help="times each count is measured, alternating (default 2)")
    cache = study("response-cache", _response_cache, "embed_query without and with a response cache", url=False)
    cache.add_argument("--cache-mb", type=int, required=True, help="size of the cache to compare with none")
    cache.add_argument("--draws", type=int, default=2000, help="Zipf-distributed queries sent (default 2000)")
    cpu = study(
        "client-cpu", _client_cpu, "client CPU per call: aisle's SDK vs bare tritonclient", url=True, loaded=False
    )
    cpu.add_argument("--calls", type=int, default=1000, help="sequential calls per client and round (default 1000)")
    first = study("first-calls", _first_calls, "each ensemble's first calls on a fresh server", url=False, loaded=False)
    first.add_argument("--calls", type=int, default=3, help="calls per ensemble, one at a time (default 3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.load = LoadConfig.for_duration(args.duration)
        report = {"study": args.study, "target": served_target(args.repo), **args.handler(args)}
    except AisleError as e:
        print(f"{parser.prog} {args.study}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
