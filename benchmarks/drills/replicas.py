"""The multi-replica drill: load on three replicas, one SIGKILLed mid-run and restarted.

    python -m aisle.benchmarks.drills.replicas --repo artifacts/repo --data artifacts/data/small \
        --duration 60 --proxy none nginx --out artifacts/drills/replicas

Three tritonservers serve one repository on loopback ports. A closed loop at concurrency 16 sends
rank and search requests through AsyncAisleClient, either to all three replicas (client-side
balancing: replicas.py in the client) or to one nginx in front of them (an L7 proxy standing in
for a Kubernetes ingress; see proxy.py for who retries what). At `kill_at_s` one replica is
SIGKILLed with its stubs, restarted on the same ports after `restart_after_s`, and the load goes on
until `recovery_window_s` after it is ready again (and at least `duration_s`).

Goals: 0 failed requests; throughput back to >= 90% of the pre-kill level within 30 s of the
restarted replica being ready (the first 5-s window after it at that level; its end is reported).
Each run writes <out>/<proxy>.json (figures, goals, per-second timeline) and <out>/<proxy>.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from aisle.benchmarks.drills.fleet import Fleet, Replica
from aisle.benchmarks.drills.mixed_traffic import interleaved, mixed_call, workloads_named
from aisle.benchmarks.drills.proxy import NginxGrpcProxy, ProxyConfig
from aisle.benchmarks.drills.timeline import Event, Timeline
from aisle.benchmarks.errors import BenchmarkError
from aisle.benchmarks.load import sustained
from aisle.benchmarks.workloads import Workload

Proxy = Literal["none", "nginx"]
PROXIES: tuple[Proxy, ...] = ("none", "nginx")
#: The ranking and search ensembles (search serves recommend too).
WORKLOADS = ("rank", "search")
#: Recovery is judged on whole windows of this many seconds.
RECOVERY_WINDOW_OF_S = 5
RECOVERED_FRACTION = 0.9
RESTART_ATTEMPTS = 3


@dataclass(frozen=True)
class DrillConfig:
    """One drill run.

    duration_s: the load lasts at least this long (and until recovery_window_s after the restart).
    concurrency: closed-loop workers.
    warmup_s: first seconds left out of the pre-kill baseline (connections, first batches).
    kill_at_s: when the victim replica is SIGKILLed; restart_after_s: pause before restarting it.
    recovery_window_s: the goal's window: throughput back within this long after the restart.
    victim: index of the replica that is killed.
    """

    duration_s: float = 60.0
    concurrency: int = 16
    warmup_s: float = 3.0
    kill_at_s: float = 20.0
    restart_after_s: float = 2.0
    recovery_window_s: float = 30.0
    victim: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.warmup_s < self.kill_at_s:
            raise BenchmarkError(f"need 0 <= warmup_s={self.warmup_s} < kill_at_s={self.kill_at_s}")
        if self.concurrency < 1 or self.restart_after_s < 0:
            raise BenchmarkError(f"concurrency={self.concurrency} must be >= 1, restart_after_s >= 0")


@dataclass
class DrillResult:
    """What one run measured; `passed` holds the two goals."""

    proxy: str
    config: dict
    requests: int
    failures: int
    error_kinds: dict[str, str]
    baseline_rps: float
    killed_at_s: float
    restart_began_s: float
    restarts: int
    ready_at_s: float
    recovered_after_s: float | None
    timeline: Timeline

    @property
    def passed(self) -> dict[str, bool]:
        recovered = self.recovered_after_s is not None and self.recovered_after_s <= self.config["recovery_window_s"]
        return {"zero_failures": self.failures == 0, "throughput_recovered": recovered}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["timeline"] = self.timeline.to_dict()
        data["passed"] = self.passed
        return data


def recovered_after_s(timeline: Timeline, baseline_rps: float, ready_at_s: float) -> float | None:
    """Seconds from `ready_at_s` to the end of the first whole window after it that reaches
    RECOVERED_FRACTION of the baseline; None if none does."""
    first = int(ready_at_s) + 1
    for start in range(first, len(timeline.ok) - RECOVERY_WINDOW_OF_S + 1):
        if timeline.rate(start, start + RECOVERY_WINDOW_OF_S) >= RECOVERED_FRACTION * baseline_rps:
            return start + RECOVERY_WINDOW_OF_S - ready_at_s
    return None


async def _kill_and_restart(victim: Replica, config: DrillConfig, t0: float, events: list[Event]) -> float:
    """SIGKILL the victim at kill_at_s, restart it after restart_after_s; the time it was ready again.

    A restart that crashes is tried again, up to RESTART_ATTEMPTS times, as a kubelet would (each
    failure is an event of the timeline).
    """
    await asyncio.sleep(max(0.0, t0 + config.kill_at_s - time.perf_counter()))
    await asyncio.to_thread(victim.kill)
    events.append(Event(time.perf_counter() - t0, f"SIGKILL {victim.name}"))
    await asyncio.sleep(config.restart_after_s)
    for attempt in range(1, RESTART_ATTEMPTS + 1):
        events.append(Event(time.perf_counter() - t0, "restart"))
        victim.launch()  # from the loop's thread: a server dies with the thread that started it
        try:
            await asyncio.to_thread(victim.wait_ready)
            break
        except BenchmarkError as e:
            events.append(Event(time.perf_counter() - t0, "restart failed"))
            await asyncio.to_thread(victim.kill)
            if attempt == RESTART_ATTEMPTS:
                raise BenchmarkError(f"{victim.name} did not restart in {RESTART_ATTEMPTS} attempts: {e}") from e
    ready = time.perf_counter() - t0
    events.append(Event(ready, "ready"))
    return ready


async def run_drill(fleet: Fleet, workloads: list[Workload], proxy: Proxy, config: DrillConfig) -> DrillResult:
    """One run against a started fleet (the victim is running again when it returns)."""
    from aisle.client import AsyncAisleClient, ClientConfig

    nginx = NginxGrpcProxy(fleet.grpc_urls, ProxyConfig.for_repository(fleet.repo)) if proxy == "nginx" else None
    if nginx is not None:
        nginx.start()
    try:
        url = nginx.url if nginx is not None else ",".join(fleet.grpc_urls)
        async with AsyncAisleClient(config=ClientConfig(url=url, timeout_s=30.0)) as client:
            await client.wait_until_ready(60.0)
            stop = asyncio.Event()
            t0 = time.perf_counter()
            events: list[Event] = []
            load = asyncio.create_task(
                sustained(mixed_call(client, workloads), interleaved(workloads), config.concurrency, stop)
            )
            try:
                ready_at = await _kill_and_restart(fleet.replicas[config.victim], config, t0, events)
                end = max(config.duration_s, ready_at + config.recovery_window_s + RECOVERY_WINDOW_OF_S)
                await asyncio.sleep(max(0.0, t0 + end - time.perf_counter()))
            finally:
                stop.set()
                completions, messages = await load
    finally:
        if nginx is not None:
            nginx.stop()
    timeline = Timeline.of(completions, t0, events)
    baseline = timeline.rate(config.warmup_s, events[0].at_s)
    return DrillResult(
        proxy=proxy,
        config=asdict(config),
        requests=len(completions),
        failures=sum(c.error is not None for c in completions),
        error_kinds=messages,
        baseline_rps=baseline,
        killed_at_s=events[0].at_s,
        restart_began_s=events[1].at_s,
        restarts=sum(e.label == "restart" for e in events),
        ready_at_s=ready_at,
        recovered_after_s=recovered_after_s(timeline, baseline, ready_at),
        timeline=timeline,
    )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def write_result(result: DrillResult, out: Path) -> Path:
    """<out>/<proxy>.json and .png; returns the JSON path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result.proxy}.json"
    path.write_text(json.dumps(result.to_dict(), indent=2))
    balancing = "nginx grpc_pass in front" if result.proxy == "nginx" else "client-side balancing"
    result.timeline.plot(
        out / f"{result.proxy}.png",
        f"3 replicas, {balancing}: {result.failures} failed of {result.requests}, "
        f"recovered {_seconds(result.recovered_after_s)} after ready",
    )
    return path


def summary_line(result: DrillResult) -> str:
    return (
        f"{result.proxy}: {result.requests} requests, {result.failures} failed, baseline {result.baseline_rps:.1f} "
        f"req/s, killed at {result.killed_at_s:.1f} s, ready again at {result.ready_at_s:.1f} s, "
        f"recovered {_seconds(result.recovered_after_s)} after; goals {result.passed}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aisle.benchmarks.drills.replicas", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repo", type=Path, required=True, help="embedded-target model repository")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory the repository was built from")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per run, at least")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kill-at", type=float, default=20.0, help="seconds into the load")
    parser.add_argument("--proxy", nargs="+", choices=PROXIES, default=list(PROXIES), help="one run per value")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    config = DrillConfig(duration_s=args.duration, concurrency=args.concurrency, kill_at_s=args.kill_at)
    workloads = workloads_named(args.data, WORKLOADS)
    results = []
    with Fleet(args.repo, 3) as fleet:
        for proxy in args.proxy:
            result = asyncio.run(run_drill(fleet, workloads, proxy, config))
            print(f"{summary_line(result)}\n  -> {write_result(result, args.out)}", flush=True)
            results.append(result)
    return 0 if all(all(r.passed.values()) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
