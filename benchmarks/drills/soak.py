"""The soak: one server under a mixed workload for a long time; does anything fail, leak or slow down?

    python -m aisle.benchmarks.drills.soak --repo artifacts/repo --data artifacts/data/small \
        --duration 600 --concurrency 32 --out artifacts/drills/soak

A closed loop at concurrency 32 sends rank, search, recommend and embed_query requests through
AsyncAisleClient to one tritonserver for `duration_s`, while the resident memory of the server and
its python stubs (its whole process group) is sampled every `sample_s`. rank_cold is left out: each
request encodes 20 item texts, and on 2 shared cores a closed loop of 32 then parks most workers on
it, pushing its latency past the 30-s deadline (measured: 16 of 370 requests failed in 40 s) —
a capacity limit of this machine, not the slow leak or drift a soak looks for.

Goals, with a period of one minute: 0 failed requests; RSS growth from the start of the second
period to the end below 5% (the first period holds the one-off allocations: arenas, first batches);
p99 latency of the last period at most 20% above the second period's. Writes soak.json and soak.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aisle.benchmarks.drills.fleet import Replica
from aisle.benchmarks.drills.mixed_traffic import interleaved, mixed_call, workloads_named
from aisle.benchmarks.drills.timeline import Timeline
from aisle.benchmarks.errors import BenchmarkError
from aisle.benchmarks.load import Completion, sustained
from aisle.benchmarks.workloads import Workload

WORKLOADS = ("rank", "search", "recommend", "embed_query")
MAX_RSS_GROWTH = 0.05
MAX_P99_DRIFT = 0.20


@dataclass(frozen=True)
class SoakConfig:
    """One soak.

    duration_s: load duration; period_s: the unit of the goals (one minute in the real soak; the
        bounded test shortens it); sample_s: RSS sampling interval; concurrency: closed-loop workers.
    """

    duration_s: float = 600.0
    concurrency: int = 32
    period_s: float = 60.0
    sample_s: float = 5.0

    def __post_init__(self) -> None:
        if self.duration_s < 3 * self.period_s:
            raise BenchmarkError(f"duration_s={self.duration_s} must cover 3 periods of period_s={self.period_s}")
        if self.concurrency < 1 or self.sample_s <= 0:
            raise BenchmarkError(f"concurrency={self.concurrency} must be >= 1 and sample_s={self.sample_s} > 0")


@dataclass(frozen=True)
class Period:
    """Requests completed in one period: count, failures, throughput and p99 latency (ms)."""

    start_s: float
    requests: int
    failures: int
    throughput_rps: float
    p99_ms: float


@dataclass
class SoakResult:
    config: dict
    requests: int
    failures: int
    error_kinds: dict[str, str]
    periods: list[Period]
    rss_samples: list[tuple[float, int]]
    rss_growth: float
    p99_drift: float
    timeline: Timeline

    @property
    def passed(self) -> dict[str, bool]:
        return {
            "zero_failures": self.failures == 0,
            "rss_growth_below_5pct": self.rss_growth < MAX_RSS_GROWTH,
            "p99_last_within_20pct_of_second": self.p99_drift <= MAX_P99_DRIFT,
        }

    def to_dict(self) -> dict:
        data = asdict(self)
        data["timeline"] = self.timeline.to_dict()
        data["passed"] = self.passed
        return data


def periods_of(completions: list[Completion], t0: float, config: SoakConfig) -> list[Period]:
    """The complete periods of the run (a trailing partial one is left out)."""
    count = int(config.duration_s // config.period_s)
    periods = []
    for k in range(count):
        start, end = t0 + k * config.period_s, t0 + (k + 1) * config.period_s
        inside = [c for c in completions if start <= c.end < end]
        ok = [c.end - c.start for c in inside if c.error is None]
        p99 = float(np.percentile(np.asarray(ok) * 1e3, 99)) if ok else float("nan")
        periods.append(Period(k * config.period_s, len(inside), len(inside) - len(ok), len(ok) / config.period_s, p99))
    return periods


def rss_growth(samples: list[tuple[float, int]], from_s: float) -> float:
    """Relative RSS growth from the first sample at or after `from_s` to the last sample."""
    later = [rss for at, rss in samples if at >= from_s]
    if len(later) < 2 or later[0] <= 0:
        raise BenchmarkError(f"need two RSS samples after {from_s} s to judge growth, got {len(later)}")
    return (later[-1] - later[0]) / later[0]


async def _sample_rss(replica: Replica, t0: float, every_s: float, stop: asyncio.Event) -> list[tuple[float, int]]:
    samples: list[tuple[float, int]] = []
    while not stop.is_set():
        samples.append((time.perf_counter() - t0, replica.rss_bytes()))
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except asyncio.TimeoutError:
            pass
    samples.append((time.perf_counter() - t0, replica.rss_bytes()))
    return samples


async def run_soak(replica: Replica, workloads: list[Workload], config: SoakConfig) -> SoakResult:
    """Soak a running replica (its process group is the memory measured)."""
    from aisle.client import AsyncAisleClient

    async with AsyncAisleClient(replica.grpc_url) as client:
        await client.wait_until_ready(60.0)
        stop = asyncio.Event()
        t0 = time.perf_counter()
        load = asyncio.create_task(
            sustained(mixed_call(client, workloads), interleaved(workloads), config.concurrency, stop)
        )
        sampler = asyncio.create_task(_sample_rss(replica, t0, config.sample_s, stop))
        try:
            await asyncio.sleep(config.duration_s)
        finally:
            stop.set()
            completions, messages = await load
            samples = await sampler
    periods = periods_of(completions, t0, config)
    return SoakResult(
        config=asdict(config),
        requests=len(completions),
        failures=sum(c.error is not None for c in completions),
        error_kinds=messages,
        periods=periods,
        rss_samples=samples,
        rss_growth=rss_growth(samples, config.period_s),
        p99_drift=periods[-1].p99_ms / periods[1].p99_ms - 1.0,
        timeline=Timeline.of(completions, t0),
    )


def plot(result: SoakResult, path: Path) -> None:
    """Requests/s (per second) with p99 per period, and the process group's RSS, against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(np.arange(len(result.timeline.ok)) + 0.5, result.timeline.ok, label="successful requests/s")
    top.bar(np.arange(len(result.timeline.errors)) + 0.5, result.timeline.errors, color="tab:red", label="errors/s")
    top.set_ylabel("requests/s")
    right = top.twinx()
    period_s = result.config["period_s"]
    right.step(
        [p.start_s for p in result.periods] + [result.periods[-1].start_s + period_s],
        [p.p99_ms for p in result.periods] + [result.periods[-1].p99_ms],
        where="post",
        color="tab:orange",
        label="p99 per period (ms)",
    )
    right.set_ylabel("p99 ms")
    top.legend(loc="lower left")
    right.legend(loc="lower right")
    at, rss = zip(*result.rss_samples)
    bottom.plot(at, np.asarray(rss) / 2**20, color="tab:green")
    bottom.axvline(period_s, color="gray", linestyle="--", linewidth=1)
    bottom.set_ylabel("server + stubs RSS (MiB)")
    bottom.set_xlabel("seconds since load start")
    fig.suptitle(
        f"soak: {result.failures} failed of {result.requests}, RSS growth {result.rss_growth:+.1%}, "
        f"p99 last vs second period {result.p99_drift:+.1%}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_result(result: SoakResult, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "soak.json"
    path.write_text(json.dumps(result.to_dict(), indent=2))
    plot(result, out / "soak.png")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aisle.benchmarks.drills.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="embedded-target model repository")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory the repository was built from")
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--period", type=float, default=60.0, help="seconds per period of the goals")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    config = SoakConfig(duration_s=args.duration, concurrency=args.concurrency, period_s=args.period)
    workloads = workloads_named(args.data, WORKLOADS)
    replica = Replica(args.repo, "soak")
    try:
        replica.start()
        result = asyncio.run(run_soak(replica, workloads, config))
    finally:
        replica.stop()
    path = write_result(result, args.out)
    print(
        f"soak: {result.requests} requests, {result.failures} failed, RSS growth {result.rss_growth:+.2%}, "
        f"p99 {result.periods[1].p99_ms:.1f} -> {result.periods[-1].p99_ms:.1f} ms ({result.p99_drift:+.1%}); "
        f"goals {result.passed}\n  -> {path}",
        flush=True,
    )
    return 0 if all(result.passed.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
