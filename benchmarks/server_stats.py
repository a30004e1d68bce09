"""Per-step server-side breakdown from Triton's statistics API, as deltas around a load window.

Triton keeps cumulative counters per model: per request (queue wait and compute time, each
request of a batch credited with its batch's duration) and per execution (`batch_stats`, one
entry per batch size). A snapshot before and after a load point, subtracted, gives exactly that
point's traffic; dividing by its request count gives where an ensemble request spends its time,
step by step. Execution-level compute time (batch_stats) is the wall time a model was busy, which
is what achieved GFLOP/s is computed against.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from aisle.schema import EnsembleDecl

#: Per-request duration counters of inference_stats, in report order.
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative counters of one model (nanoseconds, counts), as Triton reports them."""

    requests: int
    success_ns: int
    inferences: int
    executions: int
    phase_ns: dict[str, int]
    execution_infer_ns: int
    failures: int
    cache_hits: int

    @classmethod
    def from_json(cls, stats: dict) -> ModelCounters:
        inference = stats.get("inference_stats", {})
        execution_infer = sum(int(b.get("compute_infer", {}).get("ns", 0)) for b in stats.get("batch_stats", []))
        return cls(
            requests=int(inference.get("success", {}).get("count", 0)),
            success_ns=int(inference.get("success", {}).get("ns", 0)),
            inferences=int(stats.get("inference_count", 0)),
            executions=int(stats.get("execution_count", 0)),
            phase_ns={phase: int(inference.get(phase, {}).get("ns", 0)) for phase in PHASES},
            execution_infer_ns=execution_infer,
            failures=int(inference.get("fail", {}).get("count", 0)),
            cache_hits=int(inference.get("cache_hit", {}).get("count", 0)),
        )

    def minus(self, before: ModelCounters) -> ModelCounters:
        return ModelCounters(
            requests=self.requests - before.requests,
            success_ns=self.success_ns - before.success_ns,
            inferences=self.inferences - before.inferences,
            executions=self.executions - before.executions,
            phase_ns={p: self.phase_ns[p] - before.phase_ns[p] for p in PHASES},
            execution_infer_ns=self.execution_infer_ns - before.execution_infer_ns,
            failures=self.failures - before.failures,
            cache_hits=self.cache_hits - before.cache_hits,
        )


Snapshot = dict[str, ModelCounters]


def snapshot(client) -> Snapshot:
    """Counters of every model, from a tritonclient.grpc InferenceServerClient."""
    stats = client.get_inference_statistics(as_json=True)
    return {entry["name"]: ModelCounters.from_json(entry) for entry in stats.get("model_stats", [])}


def cache_hits(client, model: str) -> int:
    """How many requests to `model` Triton's response cache has answered since the server started."""
    stats = client.get_inference_statistics(model_name=model, as_json=True)
    return sum(ModelCounters.from_json(entry).cache_hits for entry in stats.get("model_stats", []))


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    return {name: counters.minus(before[name]) for name, counters in after.items() if name in before}


@dataclass(frozen=True)
class StepTime:
    """Where one ensemble request spent its time in one composing model (ms per request)."""

    model: str
    queue_ms: float
    compute_ms: float
    compute_infer_ms: float
    mean_batch: float
    requests: int
    executions: int
    busy_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def step_times(ensemble: EnsembleDecl, window: Snapshot) -> list[StepTime]:
    """Per composing model of `ensemble` (in step order, each model once), from a window's delta."""
    steps = []
    for model in dict.fromkeys(step.model for step in ensemble.steps):
        counters = window.get(model)
        if counters is None or counters.requests == 0:
            continue
        per_request = {p: counters.phase_ns[p] / counters.requests / 1e6 for p in PHASES}
        steps.append(
            StepTime(
                model=model,
                queue_ms=per_request["queue"],
                compute_ms=sum(per_request[p] for p in PHASES if p != "queue"),
                compute_infer_ms=per_request["compute_infer"],
                mean_batch=counters.inferences / counters.executions if counters.executions else 0.0,
                requests=counters.requests,
                executions=counters.executions,
                busy_s=counters.execution_infer_ns / 1e9,
            )
        )
    return steps


def window_of_one_call(client, before: Snapshot, ensemble: EnsembleDecl, timeout_s: float = 2.0) -> Snapshot:
    """The delta since `before` once every composing model of `ensemble` has counted a call.

    Triton records a model's statistics as its execution ends, which can come after the client
    already holds the response (the last step's, above all): a snapshot taken at once may miss it.
    Polls until each step shows a request, or `timeout_s` passes (then returns what it has).
    """
    models = {step.model for step in ensemble.steps}
    deadline = time.monotonic() + timeout_s
    while True:
        window = delta(before, snapshot(client))
        if all(window.get(m) is not None and window[m].requests > 0 for m in models) or time.monotonic() > deadline:
            return window
        time.sleep(0.005)


def ensemble_ms(ensemble: EnsembleDecl, window: Snapshot) -> float | None:
    """Mean server-side latency of one ensemble request over the window (receipt to response)."""
    counters = window.get(ensemble.name)
    if counters is None or counters.requests == 0:
        return None
    return counters.success_ns / counters.requests / 1e6
