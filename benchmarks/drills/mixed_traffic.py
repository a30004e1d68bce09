"""The mixed traffic of drills and soaks: requests of several workloads interleaved, sent through
the SDK (what an application does), each to its own ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aisle.benchmarks.callers import sdk_call
from aisle.benchmarks.errors import BenchmarkError
from aisle.benchmarks.load import Call
from aisle.benchmarks.workloads import Workload, WorkloadConfig, build_workloads


def workloads_named(data: Path, names: Sequence[str], config: WorkloadConfig | None = None) -> list[Workload]:
    """The named workloads (benchmarks.workloads) of the dataset in `data`."""
    from aisle.data.format import load_dataset

    built = build_workloads(load_dataset(data), config or WorkloadConfig(requests=128))
    unknown = sorted(set(names) - set(built))
    if unknown:
        raise BenchmarkError(f"unknown workload(s) {unknown}; known: {sorted(built)}")
    return [built[name] for name in names]


def interleaved(workloads: Sequence[Workload]) -> list[dict]:
    """Round-robin over the workloads' requests: {"workload": name, "request": tensors}."""
    length = max(len(w.requests) for w in workloads)
    return [{"workload": w.name, "request": w.requests[k % len(w.requests)]} for k in range(length) for w in workloads]


def mixed_call(client: object, workloads: Sequence[Workload]) -> Call:
    """One call that sends an interleaved request through the AsyncAisleClient method of its workload."""
    calls = {w.name: sdk_call(client, w.ensemble) for w in workloads}

    async def call(item: dict) -> object:
        return await calls[item["workload"]](item["request"])

    return call
