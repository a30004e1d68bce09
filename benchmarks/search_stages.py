"""How much search's stage 2 (fusion head + top-K) adds to stage 1 (filters + retrieval), measured.

Both stages run inside the one catalog_search step, so Triton's statistics see their sum. This
runs the same code (aisle.model_repository.catalog_search, loaded from the served repository)
in-process on the workload's own requests, one at a time as at concurrency 1, with the query
embeddings the server computed for them, and times each stage per request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aisle.benchmarks.workloads import Workload
from aisle.schema import CATALOG_SEARCH, QUERY, QUERY_EMBEDDING

#: Passes over a workload's requests; the first warms caches and is not timed.
PASSES = 3


def stage_times(repo: Path, workload: Workload, query_embeddings: np.ndarray) -> dict:
    """p50/mean ms of stage 1 and stage 2 over `workload`'s requests (query_embeddings [n, D], in order)."""
    from aisle.model_repository.catalog_search import CatalogSearch
    from aisle.model_repository.context import ModelContext

    search = CatalogSearch.from_context(ModelContext.load(repo, CATALOG_SEARCH))
    requests = [
        {name: value[None] for name, value in request.items() if name != QUERY} | {QUERY_EMBEDDING: query[None]}
        for request, query in zip(workload.requests, query_embeddings)
    ]
    stage1: list[float] = []
    stage2: list[float] = []
    for timed in (False, *([True] * (PASSES - 1))):
        for request in requests:
            checked = search.retriever.check(request)
            start = time.perf_counter()
            (candidates,) = search.retriever.retrieve([checked])
            middle = time.perf_counter()
            search.rank([candidates])
            end = time.perf_counter()
            if timed:
                stage1.append((middle - start) * 1e3)
                stage2.append((end - middle) * 1e3)
    return {
        "workload": workload.name,
        "requests": len(requests),
        "candidates": len(candidates.rows),
        "stage1_p50_ms": float(np.median(stage1)),
        "stage2_p50_ms": float(np.median(stage2)),
        "stage1_mean_ms": float(np.mean(stage1)),
        "stage2_mean_ms": float(np.mean(stage2)),
        "stage2_over_stage1": float(np.mean(stage2) / np.mean(stage1)),
    }


def measure(repo: Path, url: str, workloads: Sequence[Workload]) -> list[dict]:
    """stage_times of each workload, its queries embedded by the server at `url` (embed_query)."""
    from aisle.client import AisleClient

    with AisleClient(url) as client:
        embedded = [client.embed_queries(workload.texts(QUERY)) for workload in workloads]
    return [stage_times(repo, workload, queries) for workload, queries in zip(workloads, embedded)]


def stages_table(stages: list[dict]) -> str:
    """Markdown: each workload's stage 1 and stage 2 time per request."""
    lines = [
        "| workload | candidates | stage 1 p50 ms | stage 2 p50 ms | stage 1 mean ms | stage 2 mean ms "
        "| stage 2 / stage 1 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in stages:
        lines.append(
            f"| {s['workload']} | {s['candidates']} | {s['stage1_p50_ms']:.2f} | {s['stage2_p50_ms']:.2f} "
            f"| {s['stage1_mean_ms']:.2f} | {s['stage2_mean_ms']:.2f} | {s['stage2_over_stage1']:.2f} |"
        )
    return "\n".join(lines)
