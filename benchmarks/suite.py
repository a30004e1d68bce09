"""The whole benchmark suite: baselines, perf_analyzer sweeps, SDK and eager-server load, report.

Order matters on a shared small machine: the in-process baselines (GEMM, raw ORT) run before the
server starts, the eager baseline server runs after the Triton points, so no two systems under
test ever compete for the cores while one of them is measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path

from aisle.benchmarks import search_stages
from aisle.benchmarks.baselines import (
    EncoderShape,
    OrtResult,
    gemm_gflops,
    ort_session,
    ort_throughput,
    pretokenize,
)
from aisle.benchmarks.cpu import CpuMeter, find_server_pid
from aisle.benchmarks.errors import BenchmarkError
from aisle.benchmarks.load import LoadConfig, LoadPoint, closed_loop, open_loop
from aisle.benchmarks.peer_env import DEFAULT_VENV
from aisle.benchmarks.workloads import Workload, WorkloadConfig, build_workloads
from aisle.schema import EMBED_QUERY, QUERY, QUERY_ENCODER, Schema

#: Versions recorded with every result.
PACKAGES = ("aisle", "numpy", "onnxruntime", "torch", "transformers", "tokenizers", "tritonclient", "nvidia-pytriton")


@dataclass(frozen=True)
class TargetLevels:
    """The load levels the targets are stated at (the smoke test lowers them to what it runs)."""

    throughput_concurrency: int = 16
    latency_concurrency: int = 4

    @property
    def query_levels(self) -> tuple[int, ...]:
        """Closed-loop levels of aisle's SDK embed_query points, and of the peers compared with them."""
        return tuple(sorted({1, self.latency_concurrency, self.throughput_concurrency}))


@dataclass(frozen=True)
class SuiteConfig:
    """What to benchmark and for how long.

    duration_s: measured time of each load point (plus warm-up); the whole suite runs ~25 points.
    url: a running server's gRPC host:port (e.g. a GPU box with the tensorrt target); when unset,
        `repo` is served by a local embedded tritonserver started for the run. With both, `repo` is
        the local copy of what the server at `url` serves (read for the in-process search stages).
    concurrencies: the closed-loop sweep of embed_query; the other workloads run at the target levels.
    rate_fractions: open-loop Poisson rates, as fractions of embed_query's peak closed-loop throughput.
    threads: intra-op threads of raw ORT and the GEMM measurement (the cores the server gets).
    eager_torch_threads: torch intra-op threads of each eager-baseline request (see eager_server).
    graph: the query encoder ONNX graph of the raw ORT baseline; default: the one in `repo`, else
        exported from `checkpoint` into the results directory.
    peers: also measure infinity-emb and sentence-transformers (aisle.benchmarks.peers) from the
        venv at `peers_venv`, built on first use (~1 GB download); off in quick runs.
    latency_pairs: after the sweeps, embed_query and then search at concurrency 1, this many times
        back to back. Search's p50 goal is a ratio of two ~5-10 ms latencies, and the machine's speed
        drifts between the sweep's embed_query point (first) and its search point (minutes later);
        the goal takes the median pair instead.
    """

    out: Path
    checkpoint: Path
    data: Path
    duration_s: float = 10.0
    repo: Path | None = None
    url: str | None = None
    concurrencies: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    levels: TargetLevels = field(default_factory=TargetLevels)
    rate_fractions: tuple[float, ...] = (0.5, 0.8)
    threads: int = 2
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    perf_analyzer_cache: Path | None = None
    eager_torch_threads: int | None = 1
    graph: Path | None = None
    server_start_timeout_s: float = 300.0
    peers: bool = True
    peers_venv: Path = DEFAULT_VENV
    latency_pairs: int = 3

    def __post_init__(self) -> None:
        if self.url is None and self.repo is None:
            raise BenchmarkError("give url (a running server) or repo (served locally), or both")
        if self.duration_s <= 0:
            raise BenchmarkError(f"duration_s={self.duration_s} must be > 0")
        if self.latency_pairs < 0:
            raise BenchmarkError(f"latency_pairs={self.latency_pairs} must be >= 0")

    @classmethod
    def quick(cls, **kwargs) -> SuiteConfig:
        """A short run: concurrency 1-2, targets evaluated at those levels, one Poisson rate."""
        defaults = dict(
            concurrencies=(1, 2), levels=TargetLevels(2, 1), rate_fractions=(0.5,), peers=False, latency_pairs=1
        )
        return cls(**{**defaults, **kwargs})

    def load_config(self) -> LoadConfig:
        return LoadConfig.for_duration(self.duration_s)


# --- environment ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _served_target(triton) -> dict[str, str]:
    """Server version and how the query encoder is served (backend/platform), asked from the server;
    the target is the one whose encoders run on that backend (aisle.export.targets)."""
    from aisle.export.targets import served_by

    config = triton.get_model_config(QUERY_ENCODER, as_json=True)["config"]
    backend = config.get("backend") or config.get("platform", "")
    target = served_by(backend) or backend
    return {"server_version": triton.get_server_metadata().version, "encoder_backend": backend, "target": target}


def environment(triton, analyzer_version: str) -> dict:
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "versions": _versions(),
        "perf_analyzer": analyzer_version,
        **_served_target(triton),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# --- in-process baselines -------------------------------------------------------------------------


def default_pad_length(model_dir: Path, fallback: int) -> int:
    """The length a user of this tokenizer pads to by default (tokenizer.json's Fixed padding)."""
    try:
        padding = json.loads((Path(model_dir) / "tokenizer.json").read_text()).get("padding") or {}
    except (OSError, json.JSONDecodeError):
        return fallback
    strategy = padding.get("strategy")
    return int(strategy["Fixed"]) if isinstance(strategy, dict) and "Fixed" in strategy else fallback


def query_graph(config: SuiteConfig, out: Path) -> Path:
    """The query encoder graph Triton runs (from the repository), else a fresh export of the checkpoint."""
    if config.graph:
        return Path(config.graph)
    if config.repo:
        served = sorted((Path(config.repo) / QUERY_ENCODER).rglob("*.onnx"))
        if served:
            return served[0]
    from aisle.export.graphs import export_onnx

    return export_onnx(config.checkpoint, out / "onnx")[QUERY_ENCODER]


def ort_baselines(config: SuiteConfig, schema: Schema, workload: Workload, graph: Path) -> list[OrtResult]:
    """Raw ORT on the embed_query texts: buckets at each embed_query concurrency as the batch size
    (1, 4, 16: the in-process reference of the same-concurrency goals), each batch cut to its
    longest text as the served encoder cuts its runs; pad-to-max at batch C."""
    from aisle.modeling.checkpoint import QUERY_ENCODER_DIR
    from aisle.tokenization import Bucketing, load_tokenizer

    model_dir = config.checkpoint / QUERY_ENCODER_DIR
    tokenizer = load_tokenizer(model_dir, schema.limits.query_buckets[-1])
    shape = EncoderShape.from_model_dir(model_dir)
    pad_to = max(default_pad_length(model_dir, schema.limits.query_buckets[-1]), schema.limits.query_buckets[-1])
    session = ort_session(graph, config.threads)
    texts = workload.texts(QUERY)
    batch = config.levels.throughput_concurrency
    buckets = Bucketing(schema.limits.query_buckets)
    runs = [("buckets", buckets, size) for size in config.levels.query_levels] + [("max", Bucketing((pad_to,)), batch)]
    results = []
    for padding, bucketing, size in runs:
        batches = pretokenize(texts, tokenizer, bucketing, size, cut=padding == "buckets")
        label = padding if padding == "buckets" else f"max ({pad_to})"
        with CpuMeter(None) as meter:
            result = ort_throughput(
                session, batches, shape, name=f"ort_{padding}_b{size}", padding=label, duration_s=config.duration_s
            )
        cpu = meter.result
        results.append(replace(result, cpu_cores=cpu and cpu.client_cores, other_cpu_cores=cpu and cpu.other_cores))
    return results


def query_tokens(config: SuiteConfig, schema: Schema, workload: Workload) -> dict:
    """Token statistics of the embed_query requests: mean encoder FLOPs per request, useful (real
    tokens) and executed at most (padded to the request's bucket: the served encoder cuts each run
    to its longest text, so it executes between the two), and the share of requests per bucket."""
    from aisle.modeling.checkpoint import QUERY_ENCODER_DIR
    from aisle.tokenization import Bucketing, load_tokenizer

    model_dir = config.checkpoint / QUERY_ENCODER_DIR
    tokenizer = load_tokenizer(model_dir, schema.limits.query_buckets[-1])
    shape = EncoderShape.from_model_dir(model_dir)
    bucketing = Bucketing(schema.limits.query_buckets)
    lengths = [len(e.ids) for e in tokenizer.encode_batch(workload.texts(QUERY))]
    buckets = [bucketing.bucket_for(n) for n in lengths]
    return {
        "mean_tokens": sum(lengths) / len(lengths),
        "flops_per_request": {
            "useful": sum(shape.flops(n) for n in lengths) / len(lengths),
            "executed": sum(shape.flops(b) for b in buckets) / len(buckets),
        },
        "bucket_share": {str(b): buckets.count(b) / len(buckets) for b in schema.limits.query_buckets},
    }


# --- the server ------------------------------------------------------------------------------------


@contextmanager
def serving(config: SuiteConfig) -> Iterator[str]:
    """The gRPC url to benchmark: the given one, or a local embedded server started for the run."""
    if config.url or config.repo is None:
        yield str(config.url)
        return
    from aisle.model_repository.server import ServerConfig, TritonServer, free_ports

    grpc_port, http_port, metrics_port = free_ports(3)
    ports = dict(grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
    server = TritonServer(ServerConfig(config.repo, **ports))
    server.start(config.server_start_timeout_s)
    try:
        yield server.grpc_url
    finally:
        server.stop()


def local_server_pid(url: str) -> int | None:
    host, port = url.rsplit(":", 1)
    return find_server_pid(int(port)) if host in ("127.0.0.1", "localhost", "0.0.0.0") else None


@dataclass
class Measurer:
    """Runs load points with CPU metering and Triton statistics deltas around each."""

    triton: object
    schema: Schema
    server_pid: int | None
    flops_per_query: dict[str, float]
    failures: list[dict] = field(default_factory=list)

    @contextmanager
    def around(self, ensemble: str) -> Iterator[dict]:
        """Yield a dict; after the block it holds the point's CPU use and server-side breakdown."""
        from aisle.benchmarks import server_stats

        measured: dict = {}
        before = server_stats.snapshot(self.triton)
        with CpuMeter(self.server_pid) as meter:
            yield measured
        window = server_stats.delta(before, server_stats.snapshot(self.triton))
        decl = self.schema.ensemble(ensemble)
        steps = server_stats.step_times(decl, window)
        measured.update(
            client_cpu_cores=meter.result.client_cores,
            server_cpu_cores=meter.result.server_cores,
            other_cpu_cores=meter.result.other_cores,
            steps=[s.to_dict() for s in steps],
            server_ms=server_stats.ensemble_ms(decl, window),
        )
        encoder = next((s for s in steps if s.model == QUERY_ENCODER), None)
        if ensemble == EMBED_QUERY and encoder and encoder.busy_s > 0:
            measured["extra"] = {
                f"encoder_{kind}_gflops": encoder.requests * flops / encoder.busy_s / 1e9
                for kind, flops in self.flops_per_query.items()
            }

    @staticmethod
    def finish(point: LoadPoint, measured: dict) -> LoadPoint:
        extra = {**point.extra, **measured.pop("extra", {})}
        return replace(point, **measured, extra=extra)


#: The workloads of each latency pair (SuiteConfig.latency_pairs), in the order they run.
LATENCY_PAIR = ("embed_query", "search")


def _perf_analyzer_plan(config: SuiteConfig) -> list[tuple[str, dict]]:
    """perf_analyzer's closed-loop points: (workload, level), in the order they run."""
    lv = config.levels
    plan: list[tuple[str, dict]] = [("embed_query", {"concurrency": c}) for c in config.concurrencies]
    plan += [("embed_query_zipf", {"concurrency": lv.throughput_concurrency})]
    plan += [("embed_item", {"concurrency": c}) for c in sorted({1, lv.throughput_concurrency})]
    plan += [("rank", {"concurrency": c}) for c in sorted({1, lv.latency_concurrency, lv.throughput_concurrency})]
    plan += [("rank_cold", {"concurrency": c}) for c in sorted({1, lv.latency_concurrency})]
    return plan + [(name, {"concurrency": c}) for name in ("search", "recommend") for c in lv.query_levels]


def _sdk_plan(config: SuiteConfig) -> list[tuple[str, int]]:
    """The SDK load generator's closed-loop points: (workload, concurrency), in the order they run."""
    lv = config.levels
    plan = [("embed_query", c) for c in lv.query_levels]
    plan += [("rank", c) for c in sorted({lv.latency_concurrency, lv.throughput_concurrency})]
    plan += [("embed_item", 1), ("rank_cold", 1)]
    return plan + [(name, c) for name in ("search", "recommend") for c in lv.query_levels]


def _eager_levels(config: SuiteConfig) -> list[int]:
    return sorted({1, config.levels.throughput_concurrency})


def _perf_analyzer_points(
    config: SuiteConfig, analyzer, url: str, workloads: dict[str, Workload], measurer: Measurer, progress
) -> tuple[list[LoadPoint], list[dict[str, dict]]]:
    """The sweeps' points, and the latency pairs ({workload: point} each; kept out of the points so
    the tables and plots show one point per level)."""
    from aisle.benchmarks import perf_analyzer as pa

    inputs_dir = config.out / "perf_analyzer" / "inputs"
    files = {
        name: pa.write_input_data(measurer.schema.ensemble(w.ensemble), w, inputs_dir) for name, w in workloads.items()
    }
    window_ms = max(200, int(config.duration_s * 1000 / 3))
    points: list[LoadPoint] = []

    def measure(name: str, level: dict, label: str) -> LoadPoint | None:
        sweep = pa.Sweep(workloads[name].ensemble, url, files[name], window_ms=window_ms, **level)
        timeout_s = 30 + 2 * sweep.max_trials * window_ms / 1000
        try:
            with measurer.around(workloads[name].ensemble) as measured:
                result = pa.run_sweep(analyzer, sweep, label, config.out / "perf_analyzer", timeout_s=timeout_s)
        except BenchmarkError as e:
            measurer.failures.append({"generator": "perf_analyzer", "workload": label, **level, "error": str(e)})
            return None
        finally:
            progress.update(1)
        point = replace(Measurer.finish(result.point, measured), workload=name)  # `label` names its files
        point.extra.update({f"pa_{k.lower().replace(' ', '_')}_us": v for k, v in result.server_us.items()})
        return point

    def run(name: str, level: dict) -> None:
        if point := measure(name, level, name):
            points.append(point)

    for name, level in _perf_analyzer_plan(config):
        run(name, level)
    peak = max((p.throughput_rps for p in points if p.workload == "embed_query"), default=0.0)
    for fraction in config.rate_fractions if peak > 0 else ():
        run("embed_query", {"rate_rps": round(peak * fraction, 1)})
    pairs = []
    for index in range(config.latency_pairs):
        pair = {name: measure(name, {"concurrency": 1}, f"{name}_pair{index}") for name in LATENCY_PAIR}
        pairs.append({name: point.to_dict() for name, point in pair.items() if point is not None})
    return points, pairs


async def _sdk_points(
    config: SuiteConfig, url: str, workloads: dict[str, Workload], measurer: Measurer, peak_rps: float, progress
) -> list[LoadPoint]:
    from aisle.benchmarks.callers import sdk_call
    from aisle.client import AsyncAisleClient

    load = config.load_config()
    points = []
    async with AsyncAisleClient(url) as client:
        await client.wait_until_ready(60.0)
        for name, concurrency in _sdk_plan(config):
            workload = workloads[name]
            call = sdk_call(client, workload.ensemble)
            with measurer.around(workload.ensemble) as measured:
                point = await closed_loop(call, workload.requests, concurrency, load, workload=name)
            points.append(Measurer.finish(point, measured))
            progress.update(1)
        if peak_rps > 0:
            workload = workloads["embed_query"]
            rate = round(peak_rps * min(config.rate_fractions), 1)
            with measurer.around(workload.ensemble) as measured:
                call = sdk_call(client, workload.ensemble)
                point = await open_loop(call, workload.requests, rate, load, workload=workload.name)
            points.append(Measurer.finish(point, measured))
            progress.update(1)
    return points


def _eager_points(config: SuiteConfig, workload: Workload, progress) -> list[LoadPoint]:
    from aisle.benchmarks.callers import eager_call
    from aisle.benchmarks.eager_server import EagerServer, HttpEmbedCaller
    from aisle.model_repository.server import free_port
    from aisle.modeling.checkpoint import QUERY_ENCODER_DIR

    load = config.load_config()
    levels = _eager_levels(config)
    points = []
    log = config.out / "eager_server.log"
    model_dir = config.checkpoint / QUERY_ENCODER_DIR
    with EagerServer(model_dir, free_port(), log, torch_threads=config.eager_torch_threads) as server:

        async def sweep() -> None:
            caller = HttpEmbedCaller(server.url)
            try:
                for concurrency in levels:
                    assert server.process is not None
                    with CpuMeter(server.process.pid) as meter:
                        point = await closed_loop(
                            eager_call(caller), workload.requests, concurrency, load, workload=workload.name
                        )
                    cpu = meter.result
                    assert cpu is not None
                    points.append(
                        replace(
                            point,
                            system="eager-http",
                            client_cpu_cores=cpu.client_cores,
                            server_cpu_cores=cpu.server_cores,
                            other_cpu_cores=cpu.other_cores,
                        )
                    )
                    progress.update(1)
            finally:
                await caller.close()

        asyncio.run(sweep())
    return points


def planned_points(config: SuiteConfig) -> int:
    """Load points of a run (the progress bar's total, with the fixed steps and the peers')."""
    pa = len(_perf_analyzer_plan(config)) + len(config.rate_fractions) + len(LATENCY_PAIR) * config.latency_pairs
    sdk = len(_sdk_plan(config)) + 1  # and one open-loop point
    return pa + sdk + len(_eager_levels(config))


def run_suite(config: SuiteConfig) -> dict:
    """Run everything and write the report into config.out; returns the results dict."""
    import tritonclient.grpc as grpcclient
    from tqdm import tqdm

    from aisle.benchmarks.peers import aisle_reference, peer_targets, planned_steps, run_peers, suite_peer_config
    from aisle.benchmarks.perf_analyzer import locate
    from aisle.benchmarks.report import write_report
    from aisle.benchmarks.targets import evaluate
    from aisle.data.format import load_dataset
    from aisle.modeling.checkpoint import Manifest

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    schema = Manifest.load(config.checkpoint).schema()
    workloads = build_workloads(load_dataset(config.data), config.workload)
    peers = suite_peer_config(config, out) if config.peers else None  # installs before anything is measured
    peer_steps = planned_steps(peers) if peers else 0
    progress = tqdm(total=planned_points(config) + 2 + peer_steps, desc="aisle bench", unit="step")
    analyzer = locate(config.perf_analyzer_cache)
    progress.set_postfix_str("GEMM rate")
    with CpuMeter(None) as meter:
        gemm = gemm_gflops(threads=config.threads, duration_s=min(3.0, config.duration_s))
    other = meter.result.other_cores if meter.result else None
    machine = {"gemm_gflops": gemm, "threads": config.threads, "other_cpu_cores": other}
    progress.update(1)
    progress.set_postfix_str("raw ORT baselines")
    ort = ort_baselines(config, schema, workloads["embed_query"], graph := query_graph(config, out))
    progress.update(1)
    tokens = query_tokens(config, schema, workloads["embed_query"])
    with serving(config) as url:
        triton = grpcclient.InferenceServerClient(url)
        env = environment(triton, analyzer.version())
        measurer = Measurer(triton, schema, local_server_pid(url), tokens["flops_per_request"])
        progress.set_postfix_str("perf_analyzer")
        pa_points, latency_pairs = _perf_analyzer_points(config, analyzer, url, workloads, measurer, progress)
        peak = max(
            (p.throughput_rps for p in pa_points if p.workload == "embed_query" and p.mode == "concurrency"),
            default=0.0,
        )
        progress.set_postfix_str("SDK load generator")
        sdk_points = asyncio.run(_sdk_points(config, url, workloads, measurer, peak, progress))
        triton.close()
        searches = [workloads["search"], workloads["recommend"]]
        stages = search_stages.measure(config.repo, url, searches) if config.repo else []
    progress.set_postfix_str("eager HTTP baseline")
    eager = _eager_points(config, workloads["embed_query"], progress)
    if peers:
        reference = aisle_reference(graph, peers.model_dir, schema.limits.query_buckets, config.threads)
        peer_results = run_peers(peers, workloads["embed_query"], reference, progress)
    progress.close()
    results = {
        "environment": env,
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "workloads": {
            name: {"ensemble": w.ensemble, "requests": len(w.requests), "description": w.description}
            for name, w in workloads.items()
        },
        "machine": machine,
        "query_tokens": tokens,
        "ort": [r.to_dict() for r in ort],
        "points": [p.to_dict() for p in pa_points + sdk_points + eager],
        "latency_pairs": latency_pairs,
        "failures": measurer.failures,
        "search_stages": stages,
    }
    if peers:
        peer_results.merge_into(results)
    results["targets"] = [t.to_dict() for t in evaluate(results, config.levels) + peer_targets(results, config.levels)]
    write_report(results, out)
    return results
