"""The studies (aisle.benchmarks.studies) against real embedded tritonservers: what each sends and
reports is checked, never how fast it was."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from aisle.benchmarks.load import LoadConfig
from aisle.benchmarks.workloads import WorkloadConfig, item_workload, query_workload, rank_workload
from aisle.schema import ITEM_TEXT, Role

pytestmark = pytest.mark.server

FAST = LoadConfig(window_s=0.2, warmup_s=0.1, min_windows=2, max_windows=2, stability_pct=1000.0)
#: One window that a batch of item texts padded to the largest bucket finishes in, on shared cores.
LONG = LoadConfig(window_s=1.5, warmup_s=0.5, min_windows=1, max_windows=1)
SMALL = WorkloadConfig(requests=16)


@pytest.fixture(scope="module")
def dataset(tiny_data: Path):
    from aisle.data.format import load_dataset

    return load_dataset(tiny_data)


def _served(point) -> bool:
    return point.errors == 0 and point.requests > 0 and math.isfinite(point.latency.p50_ms)


def test_latency_study_calls_embed_query_and_rank_with_one_caller(triton_server, dataset) -> None:
    from aisle.benchmarks.studies import latencies

    workloads = [query_workload(dataset, SMALL), rank_workload(dataset, SMALL)]
    points = latencies(triton_server.grpc_url, workloads, FAST)
    assert set(points) == {"embed_query", "rank"}
    assert all(_served(p) and p.level == 1 for p in points.values())


def test_bucket_study_pads_the_same_texts_to_their_bucket_or_to_the_largest(triton_server, dataset) -> None:
    from aisle.benchmarks.studies import bucket_vs_padding
    from aisle.export.repo_format import MODEL_VERSION, RepoManifest
    from aisle.schema import ITEM_TOKENIZER

    repo = Path(triton_server.config.repo)
    buckets = RepoManifest.load(repo).limits.item_buckets
    texts = item_workload(dataset, WorkloadConfig(requests=12)).texts(ITEM_TEXT)
    tokenizer_dir = repo / ITEM_TOKENIZER / MODEL_VERSION
    url = triton_server.grpc_url
    report = bucket_vs_padding(url, texts, tokenizer_dir, buckets, LONG, concurrency=2, batch=4)
    assert report["texts"] == 12 and sum(report["bucket_share"].values()) == pytest.approx(1.0)
    for label in ("single_text_requests", "batch4_requests"):
        bucketed, padded = report[f"{label}/buckets"], report[f"{label}/pad_to_max"]
        assert bucketed["errors"] == padded["errors"] == 0 and bucketed["texts_per_s"] > 0
        assert padded["padded_tokens_per_text"] == buckets[-1]
        assert bucketed["padded_tokens_per_text"] < buckets[-1]


def test_a_delay_copy_changes_the_delay_of_the_models_with_the_roles_only(embedded_repo: Path, tmp_path: Path) -> None:
    from aisle.benchmarks.studies import with_queue_delay
    from aisle.export.repo_format import RepoManifest
    from aisle.export.triton_config import read_config

    copy = tmp_path / "repo"
    changed = with_queue_delay(embedded_repo, copy, 1234, frozenset({Role.ENCODER}))
    schema = RepoManifest.load(embedded_repo).schema()
    assert changed == [m.name for m in schema.models if m.role is Role.ENCODER] and changed
    for model in schema.models:
        if model.batching.max_queue_delay_us is None:
            continue
        delay = read_config(copy / model.name).dynamic_batching.max_queue_delay_microseconds
        assert delay == (1234 if model.name in changed else model.batching.max_queue_delay_us), model.name


def test_queue_delay_sweep_measures_each_delay_alone_and_loaded(embedded_repo: Path, dataset) -> None:
    from aisle.benchmarks.studies import queue_delay_sweep

    workload = query_workload(dataset, SMALL)
    sweep = queue_delay_sweep(embedded_repo, [0], workload, frozenset({Role.ENCODER}), FAST, concurrency=2)
    (point,) = sweep.values()
    assert list(sweep) == [0] and _served(point.idle) and _served(point.loaded)
    assert (point.idle.level, point.loaded.level) == (1, 2)


def test_instances_study_serves_a_copy_whose_query_encoder_runs_the_given_instances(
    embedded_repo: Path, dataset, tmp_path: Path
) -> None:
    from aisle.benchmarks.studies import edited_copy, instances_sweep
    from aisle.export.triton_config import read_config
    from aisle.schema import QUERY_ENCODER

    def one(config) -> None:
        config.instance_group[0].count = 1

    edited_copy(embedded_repo, tmp_path / "copy", [QUERY_ENCODER], one)
    assert read_config(tmp_path / "copy" / QUERY_ENCODER).instance_group[0].count == 1
    assert read_config(embedded_repo / QUERY_ENCODER).instance_group[0].count == 2  # the schema's two
    sweep = instances_sweep(embedded_repo, [1], query_workload(dataset, SMALL), FAST, concurrencies=[1, 2], rounds=1)
    ((points,),) = sweep.values()
    assert list(sweep) == [1] and sorted(points) == [1, 2] and all(_served(point) for point in points.values())


def test_response_cache_study_answers_every_repeat_from_the_cache_and_none_without(embedded_repo, dataset) -> None:
    from aisle.benchmarks.studies import response_cache_comparison
    from aisle.benchmarks.workloads import zipf_query_workload

    workload = zipf_query_workload(dataset, WorkloadConfig(requests=40))
    report = response_cache_comparison(embedded_repo, workload, 16, concurrency=1)
    assert set(report) == {0, 16}
    for run in report.values():
        assert run["requests"] == run["load"]["requests"] == 40 and run["load"]["errors"] == 0
    assert report[0]["encoder_cache_hits"] == 0
    # One caller: every repeat of a query reaches the cache after its first answer was stored.
    repeats = report[16]["requests"] - report[16]["distinct_queries"]
    assert repeats > 0 and report[16]["encoder_cache_hits"] >= repeats


def test_the_command_line_prints_one_json_report_and_an_unknown_target_for_a_url(
    triton_server, tiny_data: Path, capsys
) -> None:
    from aisle.benchmarks.studies import main

    assert main(["latency", "--url", triton_server.grpc_url, "--data", str(tiny_data), "--duration", "0.6"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["study"] == "latency" and report["target"] == "unknown"
    assert {name: point["errors"] for name, point in report["latency"].items()} == {"embed_query": 0, "rank": 0}


def test_the_command_line_names_the_server_or_repository_it_needs(tiny_data: Path, capsys) -> None:
    from aisle.benchmarks.studies import main

    assert main(["latency", "--data", str(tiny_data)]) == 2
    assert "give the url of a running one or a repository" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["buckets", "--data", str(tiny_data), "--url", "127.0.0.1:1"])
    assert "--repo" in capsys.readouterr().err


def test_client_cpu_study_times_each_client_on_the_same_calls(triton_server, dataset) -> None:
    from aisle.benchmarks.studies import client_cpu

    report = client_cpu(triton_server.grpc_url, query_workload(dataset, SMALL), calls=30, rounds=1)
    assert set(report) == {"grpc_aio_floor", "tritonclient_aio", "aisle_sdk"}
    for (run,) in report.values():
        assert run["client_cpu_ms"] > 0 and run["wall_ms"] > 0 and math.isfinite(run["client_cpu_ms"])


def test_first_calls_study_reports_each_call_and_the_models_it_reached(triton_server, dataset) -> None:
    from aisle.benchmarks.studies import first_calls
    from aisle.benchmarks.workloads import build_workloads
    from aisle.export.repo_format import RepoManifest

    schema = RepoManifest.load(Path(triton_server.config.repo)).schema()
    workloads = build_workloads(dataset, SMALL)
    report = first_calls(triton_server.grpc_url, schema, list(workloads.values()), calls=2)
    assert set(report) == set(workloads)
    for name, calls in report.items():
        steps = {step.model for step in schema.ensemble(workloads[name].ensemble).steps}
        assert len(calls) == 2, name
        for call in calls:
            # Each call reached every step of its ensemble, and nothing else.
            assert call["wall_ms"] > 0 and set(call["compute_ms"]) == steps, name
            assert all(ms > 0 for ms in call["compute_ms"].values()), name
