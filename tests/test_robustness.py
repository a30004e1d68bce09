"""Failure drills on a real tritonserver, bounded for CI: the malformed-request corpus over gRPC and
HTTP/JSON, oversized texts and id lists, a burst with hung-up clients, a killed python stub, and
the control API's lock. The full-size drills: `python -m aisle.benchmarks.drills.<name> --repo R`.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from aisle.benchmarks.drills.burst import run_burst
from aisle.benchmarks.drills.corpus import PROTOCOLS, Case, load_corpus, malformed_corpus, problem, refusal
from aisle.benchmarks.drills.oversize import capped_proxy, huge_text, run_oversize
from aisle.benchmarks.drills.proxy import nginx_binary
from aisle.benchmarks.drills.stub_kill import run_stub_kill
from aisle.benchmarks.drills.traffic import wait_until_idle
from aisle.export.repo_format import RepoManifest
from aisle.model_repository.server import ServerConfig, TritonServer, free_ports, is_ready
from aisle.model_repository.watchdog import SHM_DIR, StubWatchdog, server_stubs, stub_region
from aisle.schema import (
    CANDIDATE_FEATURES,
    CANDIDATE_TEXTS,
    EMBED_ITEM,
    EMBED_QUERY,
    EMBEDDING,
    QUERY,
    QUERY_ENCODER,
    RANK_COLD,
    SCORES,
    USER_HISTORY_IDS,
    build_schema,
)

pytestmark = pytest.mark.server

#: Case names, for parametrising before the served repository exists (they do not depend on it).
CASE_NAMES = [case.name for case in malformed_corpus(build_schema(), np.arange(100))]


@pytest.fixture(scope="module")
def corpus(embedded_repo: Path) -> dict[str, Case]:
    return {case.name: case for case in load_corpus(embedded_repo)}


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_malformed_request_is_invalid_argument_naming_the_tensor(
    triton_server: TritonServer, corpus: dict[str, Case], protocol: str, name: str
) -> None:
    case = corpus[name]
    found = problem(case, *refusal(triton_server, protocol, case))
    assert found is None, found


def test_after_the_corpus_the_server_is_ready_with_nothing_pending(triton_server: TritonServer) -> None:
    pending = wait_until_idle(triton_server.metrics_url)
    assert pending and all(count == 0 for count in pending.values()), pending
    assert is_ready(triton_server.http_url)


def embed(server: TritonServer, text: bytes, url: str | None = None) -> tuple[np.ndarray, float]:
    tensor = grpcclient.InferInput(QUERY, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text]], dtype=object))
    with grpcclient.InferenceServerClient(url or server.grpc_url) as client:
        start = time.monotonic()
        result = client.infer(EMBED_QUERY, [tensor], client_timeout=60)
        return result.as_numpy(EMBEDDING), time.monotonic() - start


def test_a_10mb_query_is_cut_before_tokenizing_and_embeds_like_its_first_kilobyte(triton_server: TritonServer) -> None:
    text = huge_text(10)
    served, seconds = embed(triton_server, text)
    prefix, _ = embed(triton_server, text[:1024])  # already more tokens than the largest bucket
    np.testing.assert_array_equal(served, prefix)
    assert seconds < 2.0, f"a 10 MB query took {seconds:.1f} s (uncut: ~10 s of tokenizing)"


def test_ordinary_queries_keep_their_latency_while_another_client_sends_10mb_texts(
    triton_server: TritonServer,
) -> None:
    result = run_oversize(triton_server, text_mb=10, duration_s=3.0)
    print(result.summary())
    assert result.ordinary_failures == 0 and result.flood_statuses == {"OK": result.flood_requests}
    assert result.flood_requests >= 3 and 1 <= result.flood_in_window <= result.flood_requests
    assert result.flood_server_cpu_ms is not None and result.flood_server_cpu_ms > 0, result.summary()
    # Before the cut, an ordinary query waited behind ~10 s of tokenizing. The drill's goal (p99
    # within 2x) is a measured figure (README), not asserted here: on CI's 2 shared cores the
    # flooding client's process sends its 10 MB requests from the same cores, beside other tests.
    assert result.flooded_p99_ms < 1000, result.summary()
    assert all(v["status"] == "INVALID_ARGUMENT" and v["ms"] < 2000 for v in result.huge_ids.values())


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (Debian: apt-get install nginx-light)")
def test_behind_nginx_capped_at_max_request_bytes_a_text_flood_never_reaches_the_server(
    triton_server: TritonServer,
) -> None:
    cap = RepoManifest.load(triton_server.config.repo).schema().limits.max_request_bytes
    text = huge_text(10)
    with capped_proxy(triton_server) as proxy:
        under, _ = embed(triton_server, text[: cap - 2**16], proxy.url)
        np.testing.assert_array_equal(under, embed(triton_server, text[:1024])[0])
        with pytest.raises(InferenceServerException) as caught:
            embed(triton_server, text[: cap + 1], proxy.url)
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED", caught.value
        assert f"over {cap} bytes (max_request_bytes)" in caught.value.message()
        result = run_oversize(triton_server, text_mb=10, duration_s=2.0, url=proxy.url)
    assert not proxy.prefix.exists()  # the stopped proxy took its directory with it
    print(result.summary())
    assert result.ordinary_failures == 0 and result.flood_requests >= 3
    assert result.flood_statuses == {"RESOURCE_EXHAUSTED": result.flood_requests}
    assert result.flood_in_window == 0 and result.flood_server_cpu_ms is None  # none reached the server
    assert all(v["status"] == "INVALID_ARGUMENT" for v in result.huge_ids.values())  # 800 KB: under the cap
    assert is_ready(triton_server.http_url)


def rank_cold_scores(server: TritonServer, features: np.ndarray) -> np.ndarray:
    arrays = {
        QUERY: np.array([[b"running shoes"]], dtype=object),
        CANDIDATE_TEXTS: np.array([[b"red trail sneaker", b"blue kettle"]], dtype=object),
        CANDIDATE_FEATURES: features,
        USER_HISTORY_IDS: np.zeros((1, 0), np.int64),
    }
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(
            name, list(array.shape), {"O": "BYTES", "f": "FP32", "i": "INT64"}[array.dtype.kind]
        )
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return client.infer(RANK_COLD, inputs, client_timeout=60).as_numpy(SCORES)


def test_rank_cold_scores_nan_features_as_unknown_and_refuses_infinite_ones(triton_server: TritonServer) -> None:
    features = np.array([[[19.9, 4.5, 120, 3.0], [np.nan, np.nan, np.nan, np.nan]]], np.float32)
    assert np.isfinite(rank_cold_scores(triton_server, features)).all()
    features[0, 0, 0] = np.inf
    with pytest.raises(InferenceServerException, match=r"CANDIDATE_FEATURES: \[0, 0, 0\] = inf is infinite") as caught:
        rank_cold_scores(triton_server, features)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_burst_and_clients_hanging_up_mid_request_leave_nothing_stuck(triton_server: TritonServer) -> None:
    result = run_burst(triton_server, requests=1000, disconnects=100)
    print(result.summary())
    assert result.statuses == {"OK": 1000}
    assert result.nothing_stuck, result.summary()


def test_the_control_api_refuses_requests_without_the_launchers_token(triton_server: TritonServer) -> None:
    request = urllib.request.Request(
        f"http://{triton_server.http_url}/v2/repository/models/{EMBED_QUERY}/unload", data=b"{}", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 403
    assert is_ready(triton_server.http_url)
    assert any(m["name"] == EMBED_QUERY and m["state"] == "READY" for m in triton_server.control.index())


@pytest.fixture(scope="module")
def unwatched_server(embedded_repo: Path) -> Iterator[TritonServer]:
    """A server of its own (the tests below unload models and kill stubs), without the stub
    watchdog, with the readiness endpoint."""
    grpc_port, http_port, metrics_port, health_port = free_ports(4)
    config = ServerConfig(
        embedded_repo,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        watch_stubs=False,
        health_port=health_port,
    )
    with TritonServer(config) as server:
        yield server


def launcher_readiness(server: TritonServer) -> tuple[int, str]:
    """(status, text) of the launcher's GET /ready."""
    try:
        with urllib.request.urlopen(server.readiness_url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_launchers_readiness_is_false_while_an_ensemble_is_unloaded_though_tritons_is_true(
    unwatched_server: TritonServer,
) -> None:
    """Triton 2.51 does not count an explicitly unloaded model in /v2/health/ready; the launcher's
    /ready (what deploy/'s readinessProbe asks) does."""
    server = unwatched_server
    assert launcher_readiness(server) == (200, "ready\n")
    server.control.unload(EMBED_ITEM)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if {m["name"]: m.get("state") for m in server.control.index()}.get(EMBED_ITEM) == "UNAVAILABLE":
                break
            time.sleep(0.1)
        assert is_ready(server.http_url)  # Triton's own answer, with embed_item gone
        status, text = launcher_readiness(server)
        assert status == 503 and f"{EMBED_ITEM} UNAVAILABLE" in text, text
    finally:
        server.control.load(EMBED_ITEM)
    assert launcher_readiness(server) == (200, "ready\n")


def test_stubs_that_died_before_the_watchdog_started_are_found_by_its_census(unwatched_server: TritonServer) -> None:
    """Both query_encoder stubs killed on a server without a watchdog: Triton keeps answering ready
    while every embed_query fails. A watchdog started then never saw those stubs alive (no pidfd,
    no command line left to read); its census (READY python models vs their live stubs) must
    still bring the model back."""
    server = unwatched_server
    pids = [pid for pid, model in server_stubs(server.pid).items() if model == QUERY_ENCODER]
    assert len(pids) == 2, pids  # the schema's two instances
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    with pytest.raises(InferenceServerException, match="not healthy"):
        embed(server, b"running shoes")
    assert is_ready(server.http_url)  # what Triton alone reports
    watchdog = StubWatchdog(server.pid, server.control, on_event=print, shm_prefix=server.shm_prefix)
    watchdog.start()
    try:
        deadline = time.monotonic() + 60
        while not (watchdog.recoveries and watchdog.recoveries[0].ready_at) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [(r.model, r.pid) for r in watchdog.recoveries] == [(QUERY_ENCODER, None)]
        assert watchdog.recoveries[0].ready_at is not None, watchdog.recoveries
        assert is_ready(server.http_url) and launcher_readiness(server)[0] == 200
        assert embed(server, b"running shoes")[0].shape == (1, build_schema().embedding_dim)
        time.sleep(1.0)  # a few censuses of the recovered server: nothing else taken for short
        assert len(watchdog.recoveries) == 1, watchdog.recoveries
        live = sorted(str(stub_region(pid)) for pid in server_stubs(server.pid))
        assert server_regions(server) == live, "the dead stubs' regions (seen by no pidfd) were left"
    finally:
        watchdog.stop()


def server_regions(server: TritonServer) -> list[str]:
    """The shared-memory files in /dev/shm under the server's own prefix."""
    return sorted(path.name for path in SHM_DIR.glob(f"{server.shm_prefix}*"))


def test_a_killed_python_stub_turns_readiness_false_and_service_comes_back_by_itself(embedded_repo: Path) -> None:
    """Its own server: the shared one must not lose a model while other tests use it. Readiness as
    deploy/ probes it: the launcher's /ready. Nothing is left in /dev/shm: not the killed stub's
    region once it is back, nor the server's own after the server itself is SIGKILLed and stopped."""
    grpc_port, http_port, metrics_port, health_port = free_ports(4)
    config = ServerConfig(
        embedded_repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, health_port=health_port
    )
    with TritonServer(config) as server:
        result = run_stub_kill(server, model=QUERY_ENCODER, clients=1, warmup_s=1.0, settle_s=2.0)
        assert result.probed == f"http://127.0.0.1:{health_port}/ready"
        print(result.summary())
        assert result.kill_to_not_ready_s is not None and result.kill_to_not_ready_s < 3.0, result.summary()
        assert result.kill_to_ready_s is not None and result.kill_to_ready_s < 30.0, result.summary()
        assert result.failed_after_ready == 0 and result.flips_after_ready == 0, result.summary()
        assert [r["model"] for r in result.watchdog] == [QUERY_ENCODER]
        assert embed(server, b"running shoes")[0].shape == (1, build_schema().embedding_dim)
        live = sorted(str(stub_region(pid)) for pid in server_stubs(server.pid))
        assert server_regions(server) == live, "a region of a dead stub was left in /dev/shm"
        os.kill(server.pid, signal.SIGKILL)  # the server itself (the OOM killer): it removes nothing
    assert server_regions(server) == []
