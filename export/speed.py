"""Throughput of graph variants measured side by side, in one run, on the same inputs.

Why interleaved rounds and medians: the CPUs a benchmark runs on are usually shared. Alternating
the graphs round by round exposes every graph to the same background load, and the median
round discards the rounds another process disturbed, so the ratio is meaningful even when the
absolute numbers drift.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aisle.export.parity import INTRA_OP_THREADS, cpu_session

#: Batch sizes reported: single-request latency and a dynamic-batcher-sized batch.
SPEED_BATCHES = (1, 32)
ROUNDS = 5
ROUND_S = 0.5


@dataclass(frozen=True)
class SpeedConfig:
    """rounds x round_s per graph and batch: more rounds resist noise, longer rounds cost time."""

    batches: tuple[int, ...] = SPEED_BATCHES
    rounds: int = ROUNDS
    round_s: float = ROUND_S
    threads: int = INTRA_OP_THREADS


def _round(session, feeds: dict[str, np.ndarray], seconds: float) -> float:
    """Sequences per second over one timed round."""
    batch = next(iter(feeds.values())).shape[0]
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        session.run(None, feeds)
        runs += 1
    return runs * batch / elapsed


def compare_speed(
    graphs: dict[str, Path], feeds_by_batch: dict[int, dict[str, np.ndarray]], config: SpeedConfig = SpeedConfig()
) -> dict[str, dict]:
    """Median sequences/s of each graph (label -> path) at each batch, interleaving the graphs."""
    sessions = {label: cpu_session(path, threads=config.threads) for label, path in graphs.items()}
    results: dict[str, dict] = {label: {} for label in graphs}
    for batch in config.batches:
        feeds = feeds_by_batch[batch]
        for session in sessions.values():
            session.run(None, feeds)  # warm-up: first runs allocate and pick kernels
        rounds: dict[str, list[float]] = {label: [] for label in sessions}
        for _ in range(config.rounds):
            for label, session in sessions.items():
                rounds[label].append(_round(session, feeds, config.round_s))
        for label, values in rounds.items():
            results[label][f"batch_{batch}_seq_per_s"] = statistics.median(values)
    return results


def speed_ratios(results: dict[str, dict], baseline: str) -> dict[str, dict[str, float]]:
    """Each graph's throughput divided by the baseline's, per batch."""
    return {
        label: {key.replace("seq_per_s", "ratio"): value / results[baseline][key] for key, value in speeds.items()}
        for label, speeds in results.items()
        if label != baseline
    }
