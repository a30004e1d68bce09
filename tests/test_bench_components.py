"""Benchmark pieces that need no Triton server: workloads, load generator, FLOPs, raw ORT, eager
baseline, perf_analyzer set-up, statistics arithmetic, targets and the report. No timing asserts."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aisle.benchmarks.errors import BenchmarkError, PerfAnalyzerError
from aisle.benchmarks.load import LoadConfig, closed_loop, open_loop, single_pass
from aisle.benchmarks.workloads import WorkloadConfig, build_workloads
from aisle.schema import CANDIDATE_IDS, MAX_HISTORY, QUERY, USER_HISTORY_IDS, build_schema

FAST = LoadConfig(window_s=0.1, warmup_s=0.05, min_windows=2, max_windows=3, stability_pct=1000.0)


@pytest.fixture(scope="module")
def workloads(tiny_data: Path):
    from aisle.data.format import load_dataset

    return build_workloads(load_dataset(tiny_data), WorkloadConfig(requests=64))


# --- workloads ------------------------------------------------------------------------------------


def test_every_workload_request_carries_exactly_its_ensembles_inputs(workloads) -> None:
    schema = build_schema()
    assert set(workloads) == {
        "embed_query",
        "embed_query_zipf",
        "embed_item",
        "rank",
        "rank_cold",
        "search",
        "recommend",
    }
    for workload in workloads.values():
        declared = {t.name: t for t in schema.ensemble(workload.ensemble).inputs}
        for request in workload.requests:
            assert request.keys() == declared.keys()
            for name, value in request.items():
                assert value.ndim == len(declared[name].dims)
                assert value.dtype == np.dtype(declared[name].dtype.numpy_name)


def test_rank_requests_hold_100_catalog_candidates_and_a_bounded_history(workloads, tiny_data: Path) -> None:
    from aisle.data.format import load_dataset

    catalog = {item.item_id for item in load_dataset(tiny_data).items}
    for request in workloads["rank"].requests:
        assert len(request[CANDIDATE_IDS]) == 100
        assert set(request[CANDIDATE_IDS].tolist()) <= catalog
        assert len(request[USER_HISTORY_IDS]) <= MAX_HISTORY


def test_zipf_variant_repeats_its_head_query_more_than_the_session_mix(workloads) -> None:
    def head_share(name: str) -> float:
        texts = workloads[name].texts(QUERY)
        return max(texts.count(t) for t in set(texts)) / len(texts)

    assert head_share("embed_query_zipf") > head_share("embed_query")


# --- load generator -------------------------------------------------------------------------------


async def _sleepy(request: dict) -> None:
    await asyncio.sleep(0.002)


def test_closed_loop_reports_finite_percentiles_and_no_errors() -> None:
    point = asyncio.run(closed_loop(_sleepy, [{}] * 8, 4, FAST, workload="w"))
    assert point.errors == 0 and point.requests > 0 and point.stable
    lat = point.latency
    assert all(math.isfinite(v) for v in (lat.p50_ms, lat.p99_ms, point.throughput_rps))
    assert lat.p50_ms <= lat.p90_ms <= lat.p95_ms <= lat.p99_ms


def test_closed_loop_counts_failed_requests_by_kind() -> None:
    async def flaky(request: dict) -> None:
        await asyncio.sleep(0.001)
        if request["fail"]:
            raise TimeoutError("slow backend")

    requests = [{"fail": i % 2 == 0} for i in range(10)]
    point = asyncio.run(closed_loop(flaky, requests, 1, FAST, workload="w"))
    assert point.errors > 0 and point.error_kinds == {"TimeoutError": point.errors}
    assert point.latency.count == point.requests - point.errors


def test_load_generator_raises_naming_the_error_when_every_request_fails() -> None:
    async def refused(request: dict) -> None:
        raise ConnectionRefusedError("127.0.0.1:1 refused")

    with pytest.raises(BenchmarkError, match="every request failed.*ConnectionRefusedError.*refused"):
        asyncio.run(closed_loop(refused, [{}], 2, FAST, workload="w"))


def test_open_loop_measures_poisson_arrivals_without_errors() -> None:
    point = asyncio.run(open_loop(_sleepy, [{}] * 4, 200.0, FAST, workload="w"))
    assert point.mode == "rate" and point.level == 200.0
    assert point.errors == 0 and point.requests > 0
    assert math.isfinite(point.latency.p99_ms)


def test_single_pass_sends_each_request_exactly_once() -> None:
    sent: list[int] = []

    async def record(request: dict) -> None:
        await asyncio.sleep(0.001)
        sent.append(request["n"])

    point = asyncio.run(single_pass(record, [{"n": n} for n in range(25)], 4, workload="w"))
    assert sorted(sent) == list(range(25)) and point.requests == 25 and point.errors == 0
    assert point.mode == "concurrency" and point.level == 4 and not point.stable


def test_load_config_rejects_more_min_windows_than_max() -> None:
    with pytest.raises(BenchmarkError, match="min_windows=4"):
        LoadConfig(min_windows=4, max_windows=3)


# --- FLOPs, GEMM, raw ORT -------------------------------------------------------------------------


def test_encoder_flops_follow_the_bert_formula_and_padding_costs_more(base_model_dir: Path) -> None:
    from aisle.benchmarks.baselines import EncoderShape

    shape = EncoderShape.from_model_dir(base_model_dir)
    assert (shape.layers, shape.hidden, shape.intermediate) == (6, 384, 1536)
    h, i = 384, 1536
    assert shape.flops(9) == 6 * (8 * 9 * h * h + 4 * 9 * 9 * h + 4 * 9 * h * i)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    useful, executed = shape.batch_flops(mask)
    assert useful == shape.flops(3) + shape.flops(2) and executed == 2 * shape.flops(4)


def test_encoder_shape_names_the_missing_config_field(tmp_path: Path) -> None:
    from aisle.benchmarks.baselines import EncoderShape

    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "hidden_size": 8}))
    with pytest.raises(BenchmarkError, match="intermediate_size"):
        EncoderShape.from_model_dir(tmp_path)


def test_gemm_rate_is_a_positive_finite_number() -> None:
    from aisle.benchmarks.baselines import gemm_gflops

    rate = gemm_gflops(threads=1, size=128, duration_s=0.05)
    assert math.isfinite(rate) and rate > 0


def test_raw_ort_on_buckets_executes_fewer_tokens_than_pad_to_max(
    onnx_dir: Path, serving_checkpoint: Path, workloads
) -> None:
    from aisle.benchmarks.baselines import EncoderShape, ort_session, ort_throughput, pretokenize
    from aisle.tokenization import Bucketing, load_tokenizer

    model_dir = serving_checkpoint / "query_encoder"
    tokenizer = load_tokenizer(model_dir, 32)
    shape = EncoderShape.from_model_dir(model_dir)
    session = ort_session(onnx_dir / "query_encoder.onnx", 1)
    texts = workloads["embed_query"].texts(QUERY)[:16]
    results = {
        padding: ort_throughput(
            session,
            pretokenize(texts, tokenizer, bucketing, 8, cut=padding == "buckets"),
            shape,
            name=padding,
            padding=padding,
            duration_s=0.05,
        )
        for padding, bucketing in (("buckets", Bucketing((8, 16, 32))), ("max", Bucketing((128,))))
    }
    assert results["max"].mean_padded_tokens == 128
    padded = pretokenize(texts, tokenizer, Bucketing((8, 16, 32)), 8, cut=False)
    buckets = [ids.shape[1] for ids, _ in padded]
    lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    assert sorted(buckets) == buckets and set(buckets) == {Bucketing((8, 16, 32)).bucket_for(n) for n in lengths}
    # Cut, each batch is as wide as its longest text, never wider than its bucket.
    cut = pretokenize(texts, tokenizer, Bucketing((8, 16, 32)), 8, cut=True)
    assert [ids.shape[1] for ids, _ in cut] == [int(mask.sum(axis=1).max()) for _, mask in cut]
    assert all(ids.shape[1] <= bucket for (ids, _), bucket in zip(cut, buckets, strict=True))
    assert sum(ids.size for ids, _ in cut) < sum(ids.size for ids, _ in padded)
    assert results["buckets"].mean_padded_tokens < 128
    assert results["buckets"].mean_tokens == pytest.approx(results["max"].mean_tokens)
    for result in results.values():
        assert result.batch_size == 8 and result.throughput_seqs > 0 and math.isfinite(result.executed_gflops)
        assert result.useful_gflops <= result.executed_gflops


# --- eager HTTP baseline --------------------------------------------------------------------------


def test_eager_server_answers_with_the_query_towers_embedding(serving_checkpoint: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from aisle.benchmarks.eager_server import EagerServer, HttpEmbedCaller
    from aisle.model_repository.server import free_port
    from aisle.modeling.towers import TextTower

    model_dir = serving_checkpoint / "query_encoder"
    text = "trail running shoes waterproof"
    with EagerServer(model_dir, free_port(), tmp_path / "eager.log", torch_threads=1) as server:

        async def ask() -> list[float]:
            caller = HttpEmbedCaller(server.url)
            try:
                return (await caller(text))["embedding"]
            finally:
                await caller.close()

        served = np.array(asyncio.run(ask()), dtype=np.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoded = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        expected = TextTower.from_pretrained(model_dir).eval()(encoded["input_ids"], encoded["attention_mask"])[0]
    np.testing.assert_allclose(served, expected.numpy(), atol=1e-5)


# --- perf_analyzer --------------------------------------------------------------------------------


def test_perf_analyzer_is_located_or_installed_and_runs() -> None:
    from aisle.benchmarks.perf_analyzer import locate

    analyzer = locate()
    assert "Version" in analyzer.version()


def test_perf_analyzer_input_data_types_every_tensor_by_the_schema(workloads) -> None:
    from aisle.benchmarks.perf_analyzer import input_data

    schema = build_schema()
    rank = input_data(schema.ensemble("rank"), workloads["rank"])["data"][0]
    assert isinstance(rank["QUERY"]["content"][0], str) and rank["QUERY"]["shape"] == [1]
    assert rank["CANDIDATE_IDS"]["shape"] == [100] and all(isinstance(v, int) for v in rank["CANDIDATE_IDS"]["content"])
    cold = input_data(schema.ensemble("rank_cold"), workloads["rank_cold"])["data"][0]
    n = len(cold["CANDIDATE_TEXTS"]["content"])
    assert cold["CANDIDATE_FEATURES"]["shape"] == [n, 4] and len(cold["CANDIDATE_FEATURES"]["content"]) == 4 * n


def test_perf_analyzer_input_data_refuses_tensors_the_ensemble_lacks(workloads) -> None:
    from aisle.benchmarks.perf_analyzer import input_data

    with pytest.raises(
        PerfAnalyzerError, match=r"\['CANDIDATE_IDS', 'USER_HISTORY_IDS'\] are not inputs of embed_query"
    ):
        input_data(build_schema().ensemble("embed_query"), workloads["rank"])


def test_perf_analyzer_sweep_needs_exactly_one_load_level(tmp_path: Path) -> None:
    from aisle.benchmarks.perf_analyzer import Sweep

    with pytest.raises(PerfAnalyzerError, match="exactly one of concurrency and rate_rps"):
        Sweep("rank", "127.0.0.1:8001", tmp_path / "in.json", concurrency=2, rate_rps=10.0).arguments(tmp_path / "o")
    args = Sweep("rank", "127.0.0.1:8001", tmp_path / "in.json", rate_rps=12.5).arguments(tmp_path / "o.csv")
    assert args[args.index("--request-rate-range") + 1] == "12.5:12.5" and "poisson" in args


# --- server statistics, CPU, targets, report -----------------------------------------------------


def _stats(name: str, requests: int, queue_ns: int, infer_ns: int, executions: int) -> dict:
    return {
        "name": name,
        "inference_count": str(requests),
        "execution_count": str(executions),
        "inference_stats": {
            "success": {"count": str(requests), "ns": str(queue_ns + infer_ns)},
            "queue": {"count": str(requests), "ns": str(queue_ns)},
            "compute_infer": {"count": str(requests), "ns": str(infer_ns)},
        },
        "batch_stats": [{"batch_size": "4", "compute_infer": {"count": str(executions), "ns": str(infer_ns // 4)}}],
    }


def test_step_times_are_per_request_deltas_in_ensemble_order() -> None:
    from aisle.benchmarks.server_stats import ModelCounters, delta, ensemble_ms, step_times

    def snap(scale: int) -> dict:
        models = [("query_tokenizer", 100_000, 200_000, 1), ("query_encoder", 300_000, 4_000_000, 1)]
        entries = [_stats(name, 4 * scale, q * scale, c * scale, scale) for name, q, c, _ in models]
        entries.append(_stats("embed_query", 4 * scale, 0, 5_000_000 * scale, 0))
        return {e["name"]: ModelCounters.from_json(e) for e in entries}

    window = delta(snap(1), snap(3))
    decl = build_schema().ensemble("embed_query")
    steps = step_times(decl, window)
    assert [s.model for s in steps] == ["query_tokenizer", "query_encoder"]
    encoder = steps[1]
    assert encoder.requests == 8 and encoder.mean_batch == 4.0
    assert encoder.queue_ms == pytest.approx(300_000 * 2 / 8 / 1e6)
    assert encoder.compute_infer_ms == pytest.approx(4_000_000 * 2 / 8 / 1e6)
    assert encoder.busy_s == pytest.approx(1_000_000 * 2 / 1e9)
    assert ensemble_ms(decl, window) == pytest.approx(5.0 * 2 / 8)


def test_cpu_of_a_process_tree_includes_its_busy_children() -> None:
    from aisle.benchmarks.cpu import CLOCK_TICKS, process_tree_cpu_s

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint(flush=True)\ninput()"
    before = process_tree_cpu_s(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()  # the child has burnt its CPU and is still alive
        # /proc counts whole clock ticks per process: allow one tick of rounding on each reading.
        assert process_tree_cpu_s(os.getpid()) - before >= 0.3 - 2 / CLOCK_TICKS
    finally:
        child.communicate(b"\n", timeout=10)


def _results() -> dict:
    def point(workload: str, generator: str, level: float, rps: float, p50: float, p99: float, system="triton"):
        return {
            "workload": workload,
            "generator": generator,
            "mode": "concurrency",
            "level": level,
            "system": system,
            "throughput_rps": rps,
            "latency": {"p50_ms": p50, "p90_ms": p99, "p95_ms": p99, "p99_ms": p99, "mean_ms": p50, "count": 10},
            "errors": 0,
            "stable": True,
            "steps": [
                {"model": "query_tokenizer", "queue_ms": 0.1, "compute_ms": 0.4, "mean_batch": 2.0},
                {"model": "query_encoder", "queue_ms": 1.0, "compute_ms": 3.0, "mean_batch": 4.0},
            ],
            "server_ms": p50 / 2,
            "client_cpu_cores": 0.5,
            "server_cpu_cores": 1.2,
            "other_cpu_cores": 0.1,
            "extra": {"encoder_useful_gflops": 50.0, "encoder_executed_gflops": 90.0},
        }

    def ort(padding: str, seqs: float, batch: int = 16) -> dict:
        latency = {"p50_ms": 10.0, "p90_ms": 10.0, "p95_ms": 10.0, "p99_ms": 10.0, "mean_ms": 10.0, "count": 5}
        return {
            "name": padding,
            "batch_size": batch,
            "padding": padding,
            "threads": 2,
            "throughput_seqs": seqs,
            "latency": latency,
            "mean_tokens": 7.0,
            "mean_padded_tokens": 12.0 if padding == "buckets" else 128.0,
            "useful_gflops": 40.0,
            "executed_gflops": 80.0,
        }

    return {
        "environment": {
            "cpu_model": "test cpu",
            "cpu_count": 2,
            "cpus_usable": 2,
            "load_average_at_start": [0.1, 0.2, 0.3],
            "target": "embedded",
            "encoder_backend": "python",
            "server_version": "2.51.0",
            "perf_analyzer": "Perf Analyzer Version 2.41.0",
            "versions": {"python": "3.11"},
        },
        "machine": {"gemm_gflops": 100.0, "threads": 2},
        "ort": [ort("buckets", 400.0, batch=4), ort("buckets", 500.0), ort("max (128)", 60.0)],
        "points": [
            point("embed_query", "perf_analyzer", 16, 450.0, 30.0, 60.0),
            point("embed_query", "perf_analyzer", 4, 300.0, 12.0, 20.0),
            point("embed_query", "python", 16, 300.0, 40.0, 80.0),
            point("embed_query", "python", 16, 100.0, 150.0, 300.0, system="eager-http"),
            point("rank", "perf_analyzer", 4, 100.0, 8.0, 20.0),
            point("rank", "perf_analyzer", 16, 300.0, 40.0, 60.0),
            point("embed_query", "perf_analyzer", 1, 110.0, 9.0, 12.0),
            point("search", "perf_analyzer", 1, 70.0, 15.0, 20.0),
            point("search", "perf_analyzer", 16, 225.0, 70.0, 90.0),
        ],
        "failures": [],
    }


def test_targets_report_measured_ratios_and_explain_each_failure() -> None:
    from aisle.benchmarks.suite import TargetLevels
    from aisle.benchmarks.targets import evaluate

    goals = evaluate(_results(), TargetLevels(16, 4))
    ort4, ort, eager, p99, buckets, p50, _, rank_rps, search_p50, search_rps, gflops = goals
    assert ort4.name == "embed_query throughput, Triton (perf_analyzer) / raw ORT (batch 4), concurrency 4"
    assert ort4.measured == pytest.approx(300 / 400) and ort4.passed is False and "Raw ORT needs" in ort4.note
    assert ort.name == "embed_query throughput, Triton (perf_analyzer) / raw ORT (batch 16), concurrency 16"
    assert ort.measured == pytest.approx(450 / 500) and ort.passed and ort.note == ""
    assert eager.measured == pytest.approx(3.0) and eager.passed is False
    assert "Eager: client p50 150.00 ms" in eager.note and "cores" in eager.note
    assert p99.measured == pytest.approx(80 / 300) and p99.passed is True
    assert buckets.measured == pytest.approx(500 / 60) and buckets.passed is False
    assert "7.0 real tokens" in buckets.note
    assert p50.name == "rank (100 candidates) p50, concurrency 4"
    assert p50.measured == 8.0 and p50.passed is False
    assert "query_encoder 1.00 ms queue + 3.00 ms compute" in p50.note
    assert rank_rps.passed is True
    assert search_p50.measured == pytest.approx(15 / 9) and search_p50.passed is False
    assert "search: client p50 15.00 ms" in search_p50.note and "embed_query: client p50 9.00 ms" in search_p50.note
    assert search_rps.measured == pytest.approx(225 / 450) and search_rps.passed is False
    assert gflops.measured == pytest.approx(0.5) and gflops.passed is False and "50 GFLOP/s" in gflops.note


def test_search_latency_goal_takes_the_median_of_back_to_back_pairs() -> None:
    """The sweep's two points (15 / 9 ms: 1.67, FAIL) lose to the pairs' median; each pair is listed."""
    from aisle.benchmarks.report import markdown
    from aisle.benchmarks.suite import TargetLevels
    from aisle.benchmarks.targets import evaluate

    results = _results()
    sweep_query, sweep_search = (
        next(p for p in results["points"] if p["workload"] == name and p["level"] == 1)
        for name in ("embed_query", "search")
    )

    def pair(query_p50: float, search_p50: float) -> dict:
        return {
            "embed_query": {**sweep_query, "latency": {**sweep_query["latency"], "p50_ms": query_p50}},
            "search": {**sweep_search, "latency": {**sweep_search["latency"], "p50_ms": search_p50}},
        }

    def goal(results: dict):
        return next(g for g in evaluate(results, TargetLevels(16, 4)) if g.name.startswith("search p50"))

    results["latency_pairs"] = [pair(6.0, 8.4), pair(5.0, 9.5), pair(6.0, 8.7)]  # 1.40, 1.90, 1.45
    passed = goal(results)
    assert passed.name.endswith("(perf_analyzer, back-to-back pairs: median of 3)")
    assert passed.measured == pytest.approx(1.45) and passed.passed is True and passed.note == ""

    results["latency_pairs"] = [pair(6.0, 9.6), pair(5.0, 9.5), {"embed_query": sweep_query}]  # 1.60, 1.90, lost
    failed = goal(results)
    assert failed.measured == pytest.approx(1.75) and failed.passed is False
    assert "back to back): 1.60, 1.90; the sweep's two points, minutes apart: 1.67." in failed.note

    results["latency_pairs"][0]["search"]["other_cpu_cores"] = 0.9
    assert "0.90 cores during search (pair 1)" in goal(results).note

    results["targets"] = []
    text = markdown(results)
    assert "| 1 | 6.00 | 9.60 | 1.60 | 0.10 / 0.90 |" in text and "| 3 | 9.00 | n/a | n/a | 0.10 / n/a |" in text


def _failed_notes(results: dict) -> str:
    from aisle.benchmarks.suite import TargetLevels
    from aisle.benchmarks.targets import evaluate

    return " ".join(goal.note for goal in evaluate(results, TargetLevels(16, 4)) if goal.passed is False)


def test_notes_blame_the_python_encoder_and_shared_cores_only_where_measured() -> None:
    from aisle.benchmarks.targets import MOVE_GENERATOR, NATIVE_ENCODER

    local = _failed_notes(_results())  # embedded target, 1.8 of 2 cores busy
    assert "the embedded target (query encoder on the python backend)" in local
    assert "1.80 of 2 usable cores: CPU-bound" in local and NATIVE_ENCODER in local and MOVE_GENERATOR in local

    results = _results()
    results["environment"].update(target="tensorrt", encoder_backend="tensorrt_plan", cpus_usable=16)
    for point in results["points"]:
        point["server_cpu_cores"] = None  # a remote server: its process is not on this machine
    remote = _failed_notes(results)
    assert "the tensorrt target (query encoder on the tensorrt_plan backend)" in remote
    assert "contention unknown" in remote and "CPU-bound" not in remote
    assert NATIVE_ENCODER not in remote and MOVE_GENERATOR not in remote and "stub" not in remote

    del results["environment"]["target"]
    assert "the unknown target" in _failed_notes(results)


def test_a_target_without_its_measurement_is_reported_not_measured() -> None:
    from aisle.benchmarks.suite import TargetLevels
    from aisle.benchmarks.targets import evaluate

    results = _results()
    results["points"] = [p for p in results["points"] if p["workload"] != "rank"]
    rank = [t.to_dict() for t in evaluate(results, TargetLevels(16, 4)) if t.name.startswith("rank")]
    assert rank and all(t["pass"] is None and t["measured"] is None and "not measured" in t["note"] for t in rank)


def test_report_writes_summary_json_csv_markdown_and_plots(tmp_path: Path) -> None:
    from aisle.benchmarks.report import write_report
    from aisle.benchmarks.suite import TargetLevels
    from aisle.benchmarks.targets import evaluate

    results = _results()
    results["targets"] = [t.to_dict() for t in evaluate(results, TargetLevels(16, 4))]
    paths = write_report(results, tmp_path)
    summary = json.loads(paths["summary"].read_text())
    assert {"name", "measured", "goal", "unit", "pass"} <= set(summary["targets"][0])
    p99 = next(t for t in summary["targets"] if t["name"].startswith("embed_query p99"))
    assert p99["pass"] is True
    for kind in ("latency_plot", "breakdown_plot"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["points_csv"].read_text().count("\n") == 1 + len(results["points"])
    text = paths["markdown"].read_text()
    assert "| FAIL |" in text and "| PASS |" in text and "share the same cores" in text


def test_report_says_the_cores_were_shared_only_when_the_server_ran_here() -> None:
    from aisle.benchmarks.report import markdown

    results = _results()
    results["targets"] = []
    for point in results["points"]:
        point["server_cpu_cores"] = None
    text = markdown(results)
    assert "share the same cores" not in text and "server (embedded target) ran outside this machine's view" in text


def test_the_int8_studys_weight_only_quantisation_writes_matmulnbits_close_to_fp32(
    onnx_dir: Path, tmp_path: Path
) -> None:
    """The study's weight-only configurations run here too (onnx-ir is in the [bench] extra)."""
    import onnx

    from aisle.benchmarks.int8_static_study import WeightOnly, session
    from aisle.export.graphs import graph_file
    from aisle.schema import ATTENTION_MASK, INPUT_IDS, QUERY_ENCODER

    source, quantised = onnx_dir / graph_file(QUERY_ENCODER), tmp_path / "weight_only.onnx"
    WeightOnly("int8 weights, int8 products", 8, 4).quantize(source, quantised, [])
    assert "MatMulNBits" in {node.op_type for node in onnx.load(str(quantised)).graph.node}
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]], np.int64)
    feed = {INPUT_IDS: ids, ATTENTION_MASK: (ids > 0).astype(np.int64)}
    fp32, int8 = (session(path, 1).run(None, feed)[0] for path in (source, quantised))
    cosine = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(fp32, int8), cosine


def test_a_file_two_children_map_counts_once_in_tree_pss_twice_in_the_rss_sum(tmp_path: Path) -> None:
    from aisle.benchmarks.cpu import mapped_files, process_tree_pss_bytes, process_tree_rss_bytes

    mib = 2**20
    shared = tmp_path / "catalog.bin"
    shared.write_bytes(os.urandom(32 * mib))
    touch = (
        "import mmap, sys\nf = open(sys.argv[1], 'rb')\nm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
        "sum(m[i] for i in range(0, len(m), 4096))\nprint(flush=True)\ninput()"
    )
    me = os.getpid()
    rss, pss = process_tree_rss_bytes(me), process_tree_pss_bytes(me)
    children = [
        subprocess.Popen([sys.executable, "-c", touch, str(shared)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            child.stdout.readline()  # it has touched every page of the file and is still alive
        rss_added, pss_added = process_tree_rss_bytes(me) - rss, process_tree_pss_bytes(me) - pss
        assert rss_added >= 64 * mib  # the file, once per child
        assert 32 * mib <= pss_added <= rss_added - 24 * mib  # the file once
        assert all(shared.resolve() in mapped_files(child.pid) for child in children)
        assert shared.resolve() not in mapped_files(me)
    finally:
        for child in children:
            child.communicate(b"\n", timeout=10)
