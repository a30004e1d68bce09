"""The drills' bookkeeping without servers: per-second timelines, the recovery rule, soak periods,
RSS growth, and the nginx configuration's failover directives."""

from __future__ import annotations

import os

import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor

from aisle.benchmarks.drills.proxy import ProxyConfig, nginx_conf
from aisle.benchmarks.drills.replicas import recovered_after_s
from aisle.benchmarks.drills.soak import SoakConfig, periods_of, rss_growth
from aisle.benchmarks.drills.stub_kill import drill_ensemble
from aisle.benchmarks.drills.timeline import Timeline
from aisle.benchmarks.drills.traffic import ClientProcess, ReadinessProbe, infer_request_bytes
from aisle.benchmarks.errors import BenchmarkError
from aisle.benchmarks.load import Completion
from aisle.export.targets import target_named
from aisle.model_repository.server import free_port
from aisle.schema import ServingLimits, build_schema


def test_completions_are_bucketed_by_the_second_they_finished_in() -> None:
    done = [Completion(0.0, 0.5, None), Completion(0.2, 1.1, None), Completion(0.3, 1.9, "UnavailableError")]
    timeline = Timeline.of(done, t0=0.0)
    assert (timeline.ok, timeline.errors) == ([1, 1], [0, 1])
    assert timeline.rate(0, 2) == 1.0


def test_recovery_is_the_end_of_the_first_whole_window_after_ready_at_90_percent() -> None:
    ok = [100] * 10 + [0] * 10 + [50, 60, 95, 95, 95, 95, 95, 100, 100]
    timeline = Timeline(ok=ok, errors=[0] * len(ok))
    # Ready at 19.5 s; the first 5-s window from a whole second after it averaging >= 90 is [22, 27).
    assert recovered_after_s(timeline, 100.0, 19.5) == pytest.approx(27 - 19.5)
    assert recovered_after_s(Timeline(ok=[100] * 5 + [10] * 20, errors=[0] * 25), 100.0, 5.0) is None


def test_soak_periods_leave_out_a_trailing_partial_period_and_count_failures() -> None:
    done = [Completion(t, t + 0.01 * (1 + t % 3), None if t % 7 else "DeadlineExceededError") for t in range(31)]
    periods = periods_of(done, 0.0, SoakConfig(duration_s=30.0, period_s=10.0))
    assert [p.requests for p in periods] == [10, 10, 10]
    assert [p.failures for p in periods] == [2, 1, 2]  # t = 0, 7 | 14 | 21, 28
    assert all(p.p99_ms > 0 for p in periods)


def test_rss_growth_is_measured_from_the_second_period() -> None:
    samples = [(0.0, 100), (10.0, 200), (20.0, 205), (30.0, 210)]
    assert rss_growth(samples, from_s=10.0) == pytest.approx(0.05)
    with pytest.raises(BenchmarkError, match="two RSS samples"):
        rss_growth(samples[:2], from_s=10.0)


def test_nginx_fails_over_connection_errors_of_non_idempotent_grpc_posts() -> None:
    conf = nginx_conf(["127.0.0.1:1", "127.0.0.1:2"], 9000, ProxyConfig(fail_timeout_s=2, next_upstream_tries=3))
    assert "grpc_pass grpc://aisle_replicas;" in conf and "listen 127.0.0.1:9000 http2;" in conf
    assert "grpc_next_upstream error timeout http_502 http_503 http_504 non_idempotent;" in conf
    assert conf.count("max_fails=1 fail_timeout=2s") == 2 and "grpc_next_upstream_tries 3;" in conf
    assert "client_max_body_size 0;" in conf  # no cap unless asked


def test_nginx_caps_bodies_at_the_repositorys_max_request_bytes_and_answers_as_grpc() -> None:
    cap = ServingLimits().max_request_bytes
    conf = nginx_conf(["127.0.0.1:1"], 9000, ProxyConfig(max_body_bytes=cap))
    assert f"client_max_body_size {cap};" in conf and "error_page 413 = @too_large;" in conf
    assert "add_header grpc-status 8 always;" in conf  # RESOURCE_EXHAUSTED, not an HTTP 413 page
    # It admits the largest useful request: rank_cold's candidate texts at their cut size.
    assert cap > ServingLimits().max_candidates * ServingLimits().max_item_text_bytes


def test_a_client_process_request_is_a_model_infer_request_carrying_the_arrays() -> None:
    texts = np.array([[b"running shoes", "é".encode()]], dtype=object)
    ids = np.array([[3, -1, 7]], np.int64)
    request = service_pb2.ModelInferRequest.FromString(
        infer_request_bytes("rank", {"QUERY": texts, "EMPTY": np.zeros((1, 0), object), "IDS": ids})
    )
    assert request.model_name == "rank"
    assert [(i.name, i.datatype, list(i.shape)) for i in request.inputs] == [
        ("QUERY", "BYTES", [1, 2]),
        ("EMPTY", "BYTES", [1, 0]),
        ("IDS", "INT64", [1, 3]),
    ]
    query, empty, raw_ids = request.raw_input_contents
    assert list(deserialize_bytes_tensor(query)) == list(texts.ravel())
    assert empty == b""
    np.testing.assert_array_equal(np.frombuffer(raw_ids, np.int64), ids.ravel())


def test_a_client_process_with_no_server_records_unavailable_and_is_stopped() -> None:
    request = ("embed_query", {"QUERY": np.array([[b"running shoes"]], dtype=object)})
    with ClientProcess(f"127.0.0.1:{free_port()}", [request]) as client:  # nothing listens there
        assert client.pid is not None
        os.kill(client.pid, 0)  # running
    assert client.sent and {s.status for s in client.sent} == {"UNAVAILABLE"}
    assert all(s.done_at >= s.sent_at for s in client.sent)
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(client.pid, 0)


def test_readiness_probe_reports_each_change_of_answer_from_an_instant_on() -> None:
    probe = ReadinessProbe("127.0.0.1:1")  # never started: its answers are set here
    probe.answers = [(0.5, True), (1.0, False), (1.02, False), (1.5, True), (2.0, True), (2.5, False)]
    assert probe.transitions(1.0) == [(0.0, False), (0.5, True), (1.5, False)]
    assert probe.transitions(1.6) == [(0.4, True), (0.9, False)]
    assert probe.flips(1.0) == 2 and probe.transitions(3.0) == []


def test_the_stub_kill_drill_reaches_every_python_model_an_ensemble_runs() -> None:
    """Any stub may die, so the drill has traffic for every model of the embedded target's
    ensembles (catalog_search, the query tower folded in, through search). user_profile serves
    direct callers only."""
    schema = target_named("embedded").served_schema(build_schema(32))
    in_ensembles = {step.model for ensemble in schema.ensembles for step in ensemble.steps}
    assert {m.name for m in schema.models} - in_ensembles == {"user_profile"}
    chosen = {model: drill_ensemble(schema, model) for model in in_ensembles}
    assert chosen["catalog_search"] == "search" and chosen["query_encoder"] == "embed_query"
    assert chosen["rank_cold_validator"] == chosen["cold_item_encoder"] == "rank_cold"
    assert all(any(step.model == model for step in schema.ensemble(e).steps) for model, e in chosen.items())
