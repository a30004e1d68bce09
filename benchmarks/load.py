"""The Python load generator: closed-loop concurrency and open-loop Poisson arrivals (asyncio).

It drives any `async call(request)` (the aisle SDK, the eager HTTP baseline), so two servers are
compared under the same generator at the same concurrency. perf_analyzer (C++) gives the headline
server numbers; this generator measures what an application using the SDK sees.

Method, as perf_analyzer does it: a warm-up that is discarded, then fixed measurement windows
until the last `min_windows` agree (throughput and p50 within `stability_pct` of their mean) or
`max_windows` have run; only the requests completed in those last windows are reported.

Open loop: arrivals are scheduled from a Poisson process and latency is measured from each
request's *scheduled* time, so a stalled server is charged for the requests queued behind it
(no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from aisle.benchmarks.errors import BenchmarkError

Call = Callable[[dict], Awaitable[object]]
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LoadConfig:
    """Timing of one load point.

    window_s: one measurement window; longer windows average out scheduler noise on shared cores.
    warmup_s: discarded lead-in (first batches, lazy allocations, connection set-up).
    min_windows / max_windows: the stability check needs min_windows agreeing windows; after
        max_windows the point is reported with stable=False rather than retried forever.
    stability_pct: allowed deviation of each window's throughput and p50 from their mean.
    """

    window_s: float = 2.0
    warmup_s: float = 1.0
    min_windows: int = 3
    max_windows: int = 6
    stability_pct: float = 10.0

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.warmup_s < 0:
            raise BenchmarkError(f"window_s={self.window_s} must be > 0 and warmup_s={self.warmup_s} >= 0")
        if not 1 <= self.min_windows <= self.max_windows:
            raise BenchmarkError(f"need 1 <= min_windows={self.min_windows} <= max_windows={self.max_windows}")

    @classmethod
    def for_duration(cls, duration_s: float) -> LoadConfig:
        """About `duration_s` measured per point: three windows, and a warm-up of up to 2 s."""
        return cls(window_s=duration_s / 3, warmup_s=min(2.0, duration_s / 4))


@dataclass(frozen=True)
class Latency:
    """Latency percentiles in milliseconds over `count` successful requests."""

    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    count: int

    @classmethod
    def of(cls, latencies_s: Sequence[float]) -> Latency:
        if not len(latencies_s):
            raise BenchmarkError("no request completed in the measurement windows: nothing to summarise")
        ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
        p50, p90, p95, p99 = np.percentile(ms, PERCENTILES)
        return cls(float(p50), float(p90), float(p95), float(p99), float(ms.mean()), len(ms))


@dataclass
class LoadPoint:
    """One measured load level, from either generator.

    mode: "concurrency" (closed loop) or "rate" (open loop, `level` = offered requests/s).
    system: what served the requests ("triton", or a baseline such as "eager-http").
    client_cpu_cores / server_cpu_cores: CPU seconds per wall second of the load generator and of
        the server process tree during the point (None where not measurable, e.g. remote server).
    steps / server_ms: per-composing-model time and mean server-side latency from Triton's
        statistics over the point (aisle.benchmarks.server_stats), where available.
    extra: point-specific measurements, e.g. the encoder's achieved GFLOP/s.
    """

    workload: str
    generator: str
    mode: str
    level: float
    throughput_rps: float
    latency: Latency
    errors: int
    requests: int
    duration_s: float
    stable: bool
    error_kinds: dict[str, int] = field(default_factory=dict)
    system: str = "triton"
    client_cpu_cores: float | None = None
    server_cpu_cores: float | None = None
    other_cpu_cores: float | None = None
    steps: list[dict] = field(default_factory=list)
    server_ms: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    """One request: perf_counter() start and end, and the error's class name if it failed."""

    start: float
    end: float
    error: str | None


@dataclass
class _Recorder:
    """Completed requests and the first message of each error kind."""

    records: list[Completion] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)

    async def timed(self, call: Call, request: dict, start: float) -> None:
        error = None
        try:
            await call(request)
        except Exception as e:  # a load generator counts failures by kind instead of stopping
            error = type(e).__name__
            self.messages.setdefault(error, str(e)[:300])
        self.records.append(Completion(start, time.perf_counter(), error))

    def between(self, t0: float, t1: float) -> list[Completion]:
        return [r for r in self.records if t0 <= r.end < t1]


def _window_stats(records: list[Completion], length_s: float) -> tuple[float, float]:
    ok = [r.end - r.start for r in records if r.error is None]
    return len(ok) / length_s, float(np.median(ok)) if ok else float("nan")


def _stable(windows: list[tuple[float, float]], pct: float) -> bool:
    for values in zip(*windows):
        mean = float(np.mean(values))
        if not np.isfinite(mean) or mean <= 0 or max(abs(v - mean) for v in values) > mean * pct / 100:
            return False
    return True


def _point(
    workload: str,
    mode: str,
    level: float,
    records: list[Completion],
    length_s: float,
    stable: bool,
    recorder: _Recorder,
) -> LoadPoint:
    errors = Counter(r.error for r in records if r.error is not None)
    ok = [r.end - r.start for r in records if r.error is None]
    if errors and not ok:
        kind = next(iter(errors))
        raise BenchmarkError(f"workload {workload!r}: every request failed ({kind}: {recorder.messages[kind]})")
    return LoadPoint(
        workload=workload,
        generator="python",
        mode=mode,
        level=level,
        throughput_rps=len(ok) / length_s,
        latency=Latency.of(ok),
        errors=sum(errors.values()),
        requests=len(records),
        duration_s=length_s,
        stable=stable,
        error_kinds=dict(errors),
    )


async def closed_loop(
    call: Call, requests: Sequence[dict], concurrency: int, config: LoadConfig, *, workload: str = ""
) -> LoadPoint:
    """`concurrency` workers each send the next request as soon as their previous one returns."""
    if concurrency < 1 or not requests:
        raise BenchmarkError(f"closed loop needs concurrency >= 1 (got {concurrency}) and requests ({len(requests)})")
    recorder = _Recorder()
    stopping = asyncio.Event()

    async def worker(offset: int) -> None:
        index = offset
        while not stopping.is_set():
            await recorder.timed(call, requests[index % len(requests)], time.perf_counter())
            index += concurrency
            # A call that fails (or finishes) without suspending would otherwise starve the loop.
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(worker(k)) for k in range(concurrency)]
    try:
        await asyncio.sleep(config.warmup_s)
        edges = [time.perf_counter()]
        windows: list[tuple[float, float]] = []
        stable = False
        while len(windows) < config.max_windows:
            await asyncio.sleep(config.window_s)
            edges.append(time.perf_counter())
            windows.append(_window_stats(recorder.between(edges[-2], edges[-1]), edges[-1] - edges[-2]))
            if len(windows) >= config.min_windows and _stable(windows[-config.min_windows :], config.stability_pct):
                stable = True
                break
    finally:
        stopping.set()
        await asyncio.gather(*tasks)
    start = edges[-1 - config.min_windows]
    measured = recorder.between(start, edges[-1])
    return _point(workload, "concurrency", concurrency, measured, edges[-1] - start, stable, recorder)


async def sustained(
    call: Call, requests: Sequence[dict], concurrency: int, stop: asyncio.Event
) -> tuple[list[Completion], dict[str, str]]:
    """Closed loop at `concurrency` until `stop` is set; every completion, and the first message of
    each error kind.

    For drills and soaks, where what happens over time (a replica killed, memory growing) is the
    measurement: no warm-up, windows or stability check, the caller buckets the completions.
    """
    if concurrency < 1 or not requests:
        raise BenchmarkError(f"sustained load needs concurrency >= 1 (got {concurrency}) and requests")
    recorder = _Recorder()

    async def worker(offset: int) -> None:
        index = offset
        while not stop.is_set():
            await recorder.timed(call, requests[index % len(requests)], time.perf_counter())
            index += concurrency
            await asyncio.sleep(0)

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return recorder.records, recorder.messages


async def single_pass(call: Call, requests: Sequence[dict], concurrency: int, *, workload: str = "") -> LoadPoint:
    """Each request exactly once, from `concurrency` workers, with no warm-up.

    For what changes as it is measured (a response cache filling from empty), where a windowed
    loop would report only the warmed state. Nothing repeats, so nothing is checked for
    stability: the point is reported with stable=False.
    """
    if concurrency < 1 or not requests:
        raise BenchmarkError(f"single pass needs concurrency >= 1 (got {concurrency}) and requests ({len(requests)})")
    recorder = _Recorder()
    pending = iter(requests)

    async def worker() -> None:
        for request in pending:  # the workers share one iterator: each request is taken once
            await recorder.timed(call, request, time.perf_counter())
            await asyncio.sleep(0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _point(workload, "concurrency", concurrency, recorder.records, time.perf_counter() - start, False, recorder)


async def open_loop(
    call: Call, requests: Sequence[dict], rate_rps: float, config: LoadConfig, *, workload: str = "", seed: int = 0
) -> LoadPoint:
    """Poisson arrivals at `rate_rps` for warm-up + min_windows windows; latency from schedule time."""
    if rate_rps <= 0 or not requests:
        raise BenchmarkError(f"open loop needs rate_rps > 0 (got {rate_rps}) and requests (got {len(requests)})")
    recorder = _Recorder()
    rng = np.random.default_rng(seed)
    begin = time.perf_counter()
    measure_from = begin + config.warmup_s
    end = measure_from + config.min_windows * config.window_s
    scheduled = begin
    in_flight: set[asyncio.Task] = set()
    index = 0
    while scheduled < end:
        scheduled += rng.exponential(1.0 / rate_rps)
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(recorder.timed(call, requests[index % len(requests)], scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        index += 1
    if in_flight:
        await asyncio.gather(*in_flight)
    measured = [r for r in recorder.records if measure_from <= r.start < end]
    edges = [measure_from + k * config.window_s for k in range(config.min_windows + 1)]
    windows = [
        _window_stats([r for r in measured if t0 <= r.start < t1], config.window_s) for t0, t1 in zip(edges, edges[1:])
    ]
    stable = _stable(windows, config.stability_pct)
    return _point(workload, "rate", rate_rps, measured, end - measure_from, stable, recorder)
