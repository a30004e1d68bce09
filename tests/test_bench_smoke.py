"""Smoke run of the whole benchmark suite against the real embedded tritonserver.

Every mode runs for a fraction of a second at concurrency 1-2: perf_analyzer closed loop and
Poisson, the SDK load generator closed and open loop, the eager HTTP baseline, raw ORT, the GEMM
rate. The report's structure, finiteness and zero errors are checked; never timings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from aisle.export.repo_format import RepoManifest

#: Workloads named otherwise than the ensemble they drive.
WORKLOAD_ENSEMBLES = {"embed_query_zipf": "embed_query", "recommend": "search"}

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def bench(triton_server, serving_checkpoint: Path, tiny_data: Path, onnx_dir: Path, tmp_path_factory) -> tuple:
    from aisle.benchmarks.suite import SuiteConfig, run_suite
    from aisle.benchmarks.workloads import WorkloadConfig

    out = tmp_path_factory.mktemp("bench")
    config = SuiteConfig.quick(
        out=out,
        checkpoint=serving_checkpoint,
        data=tiny_data,
        url=triton_server.grpc_url,
        repo=triton_server.config.repo,
        duration_s=0.6,
        graph=onnx_dir / "query_encoder.onnx",
        workload=WorkloadConfig(requests=32, cold_candidates=4),
    )
    return run_suite(config), out


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def test_summary_lists_every_target_with_a_finite_measurement_and_a_verdict(bench) -> None:
    _, out = bench
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["targets"]) == 10
    for target in summary["targets"]:
        assert {"name", "measured", "goal", "unit", "pass"} <= target.keys()
        assert _finite(target["measured"]) and isinstance(target["pass"], bool), target
        assert target["pass"] or target["note"], "a failed target must say why"
    assert summary["failures"] == []
    env = summary["environment"]
    assert env["target"] == "embedded" and env["encoder_backend"] == "python" and "Version" in env["perf_analyzer"]


def test_the_search_latency_goal_rests_on_the_runs_latency_pair(bench) -> None:
    results, out = bench
    (pair,) = results["latency_pairs"]
    assert set(pair) == {"embed_query", "search"} and all(point["workload"] == name for name, point in pair.items())
    assert all(p["errors"] == 0 and p["level"] == 1 and p["generator"] == "perf_analyzer" for p in pair.values())
    goal = next(t for t in results["targets"] if t["name"].startswith("search p50"))
    assert goal["name"].endswith("back-to-back pairs: median of 1)")
    p50 = {name: point["latency"]["p50_ms"] for name, point in pair.items()}
    assert goal["measured"] == pytest.approx(p50["search"] / p50["embed_query"])
    assert "## Search against embed_query at concurrency 1, back to back" in (out / "summary.md").read_text()


def test_every_generator_mode_and_system_ran_without_errors(bench) -> None:
    results, _ = bench
    points = results["points"]
    kinds = {(p["system"], p["generator"], p["mode"]) for p in points}
    assert kinds == {
        ("triton", "perf_analyzer", "concurrency"),
        ("triton", "perf_analyzer", "rate"),
        ("triton", "python", "concurrency"),
        ("triton", "python", "rate"),
        ("eager-http", "python", "concurrency"),
    }
    assert {p["workload"] for p in points if p["generator"] == "perf_analyzer"} == {
        "embed_query",
        "embed_query_zipf",
        "embed_item",
        "rank",
        "rank_cold",
        "search",
        "recommend",
    }
    for p in points:
        lat = p["latency"]
        assert p["errors"] == 0, p
        assert p["throughput_rps"] > 0 and _finite(lat["p50_ms"], lat["p90_ms"], lat["p95_ms"], lat["p99_ms"]), p
        assert _finite(p["client_cpu_cores"], p["server_cpu_cores"], p["other_cpu_cores"]), p


def test_triton_points_carry_the_per_step_breakdown_of_their_ensemble(bench, triton_server) -> None:
    results, _ = bench
    schema = RepoManifest.load(triton_server.config.repo).schema()
    for p in results["points"]:
        if p["system"] != "triton":
            continue
        ensemble = schema.ensemble(WORKLOAD_ENSEMBLES.get(p["workload"], p["workload"]))
        assert [s["model"] for s in p["steps"]] == list(dict.fromkeys(step.model for step in ensemble.steps))
        assert all(_finite(s["queue_ms"], s["compute_ms"]) and s["mean_batch"] >= 1 for s in p["steps"])
        assert _finite(p["server_ms"])
    encoder = [p for p in results["points"] if p["workload"] == "embed_query" and p["generator"] == "perf_analyzer"]
    assert all(_finite(p["extra"]["encoder_useful_gflops"], p["extra"]["encoder_executed_gflops"]) for p in encoder)


def test_search_stages_are_timed_in_process_for_searches_and_feeds(bench) -> None:
    results, _ = bench
    stages = {s["workload"]: s for s in results["search_stages"]}
    assert set(stages) == {"search", "recommend"}
    for s in stages.values():
        assert s["requests"] > 0 and s["candidates"] > 0
        assert _finite(s["stage1_p50_ms"], s["stage2_p50_ms"], s["stage2_over_stage1"]) and s["stage2_p50_ms"] > 0


def test_baselines_and_report_files_are_written(bench) -> None:
    results, out = bench
    assert _finite(results["machine"]["gemm_gflops"])
    assert [r["name"] for r in results["ort"]] == ["ort_buckets_b1", "ort_buckets_b2", "ort_max_b2"]
    assert all(_finite(r["throughput_seqs"], r["useful_gflops"]) for r in results["ort"])
    for name in ("results.json", "points.csv", "ort.csv", "summary.md"):
        assert (out / name).stat().st_size > 0
    for name in ("latency_vs_throughput.png", "step_breakdown.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    inputs = sorted(p.name for p in (out / "perf_analyzer" / "inputs").glob("*.json"))
    assert inputs == [
        "embed_item.json",
        "embed_query.json",
        "embed_query_zipf.json",
        "rank.json",
        "rank_cold.json",
        "recommend.json",
        "search.json",
    ]
