"""Three real tritonservers from one repository: the client spreads calls over them, steers around a
draining replica and a dead stub, never retries INVALID_ARGUMENT; the bounded replica drill (SIGKILL
and restart, client-side and behind nginx) and the bounded soak run on the same replicas.

The tests run in file order on one module-scoped fleet; the dead-stub test breaks a replica for
good, so it comes last.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from aisle.benchmarks.drills.fleet import Fleet, Replica
from aisle.benchmarks.drills.mixed_traffic import workloads_named
from aisle.benchmarks.drills.proxy import nginx_binary
from aisle.benchmarks.drills.replicas import WORKLOADS, DrillConfig, run_drill, write_result
from aisle.benchmarks.drills.soak import WORKLOADS as SOAK_WORKLOADS
from aisle.benchmarks.drills.soak import SoakConfig, run_soak
from aisle.benchmarks.drills.soak import write_result as write_soak
from aisle.benchmarks.workloads import WorkloadConfig
from aisle.client import AisleClient, ClientConfig, InvalidInputError, ReplicaConfig
from aisle.data.format import ITEMS, read_items
from aisle.schema import RANK, SEARCH
from tests.fixtures.server import model_statistics

#: The fusion head: a composing model of rank (and search), loaded while the ensembles are not.
HEAD = "fusion_head"

pytestmark = [pytest.mark.server, pytest.mark.slow]

#: Probes every 0.2 s: the tests wait a few intervals instead of seconds.
FAST_PROBES = ReplicaConfig(health_interval_s=0.2, probe_timeout_s=2.0, eject_s=0.5)


@pytest.fixture(scope="module")
def fleet(embedded_repo: Path) -> Iterator[Fleet]:
    with Fleet(embedded_repo, 3) as started:
        yield started


@pytest.fixture(scope="module")
def ids(tiny_data: Path) -> np.ndarray:
    return np.array([item.item_id for item in read_items(tiny_data / ITEMS)], dtype=np.int64)


def counts(replica: Replica, model: str) -> tuple[int, int]:
    """(successful, failed) requests `model` has answered on `replica` since it started."""
    stats = model_statistics(replica.grpc_url, model)["inference_stats"]
    return int(stats.get("success", {}).get("count", 0)), int(stats.get("fail", {}).get("count", 0))


def rank_calls(client: AisleClient, ids: np.ndarray, count: int) -> None:
    for k in range(count):
        client.rank(f"query {k}", ids[k : k + 10], top_k=3)


def test_calls_are_spread_over_every_replica(fleet: Fleet, ids: np.ndarray) -> None:
    before = [counts(r, RANK)[0] for r in fleet.replicas]
    with AisleClient(config=ClientConfig(url=",".join(fleet.grpc_urls), replicas=FAST_PROBES)) as client:
        rank_calls(client, ids, 30)
    served = [counts(r, RANK)[0] - b for r, b in zip(fleet.replicas, before)]
    assert sum(served) == 30 and min(served) >= 8, f"calls per replica: {served}"


def test_a_host_name_resolves_to_its_addresses_and_calls_avoid_the_unreachable_ones(
    fleet: Fleet, ids: np.ndarray
) -> None:
    """localhost may resolve to ::1 too, where the loopback-bound server does not listen."""
    port = fleet.replicas[0].grpc_url.rsplit(":", 1)[1]
    config = ClientConfig(url=f"localhost:{port}", replicas=ReplicaConfig(resolve_names=True, health_interval_s=0.2))
    before = counts(fleet.replicas[0], HEAD)[0]
    with AisleClient(config=config) as client:
        rank_calls(client, ids, 5)  # none fails, whatever else localhost resolves to
    assert counts(fleet.replicas[0], HEAD)[0] - before == 5


def test_a_draining_replica_gets_no_calls_and_comes_back_when_ready(fleet: Fleet, ids: np.ndarray) -> None:
    draining = fleet.replicas[0]
    # Counted on the head every rank call runs through: it stays loaded while `rank` is unloaded.
    with AisleClient(config=ClientConfig(url=",".join(fleet.grpc_urls), replicas=FAST_PROBES)) as client:
        rank_calls(client, ids, 3)
        control = draining.server.control  # the model-repository API needs the launcher's token
        control.unload(RANK)
        try:
            time.sleep(1.0)  # a few probe intervals: the client has seen it is not ready
            before = counts(draining, HEAD)
            rank_calls(client, ids, 20)  # none fails, none goes to the drained replica
            assert counts(draining, HEAD) == before
        finally:
            control.load(RANK)
        time.sleep(1.0)
        before = counts(draining, HEAD)
        rank_calls(client, ids, 12)
        assert counts(draining, HEAD)[0] - before[0] >= 3


def test_invalid_argument_is_answered_once_and_never_retried_on_another_replica(fleet: Fleet, ids: np.ndarray) -> None:
    unknown = [int(ids[0]), int(ids.max()) + 1000]
    # What one rejected call adds to a replica's failure counters (the ensemble and the step that
    # rejected it may both count it).
    probe = fleet.replicas[0]
    before = counts(probe, RANK)[1]
    with AisleClient(probe.grpc_url) as single, pytest.raises(InvalidInputError):
        single.rank("shoes", unknown)
    per_call = counts(probe, RANK)[1] - before
    assert per_call >= 1
    before_all = [counts(r, RANK)[1] for r in fleet.replicas]
    with AisleClient(config=ClientConfig(url=",".join(fleet.grpc_urls), replicas=FAST_PROBES)) as client:
        with pytest.raises(InvalidInputError) as info:
            client.rank("shoes", unknown)
    assert info.value.status == "INVALID_ARGUMENT"
    failed = [counts(r, RANK)[1] - b for r, b in zip(fleet.replicas, before_all)]
    assert sorted(failed) == [0, 0, per_call], f"failed rank requests per replica: {failed}"


@pytest.fixture(scope="module")
def drill_workloads(tiny_data: Path) -> list:
    return workloads_named(tiny_data, WORKLOADS, WorkloadConfig(requests=64))


#: The bounded drill: kill early, and run on for 10 s (not 30 s) once the victim is ready again.
BOUNDED_DRILL = DrillConfig(duration_s=15.0, warmup_s=1.0, kill_at_s=5.0, restart_after_s=0.5, recovery_window_s=10.0)


@pytest.mark.parametrize("proxy", ["none", "nginx"])
def test_bounded_replica_drill_loses_no_request_when_a_replica_is_killed_and_restarted(
    fleet: Fleet, drill_workloads: list, proxy: str, tmp_path: Path
) -> None:
    if proxy == "nginx" and nginx_binary() is None:
        pytest.skip("nginx is not installed (Debian: apt-get install -y nginx-light); .ci/run installs it")
    result = asyncio.run(run_drill(fleet, drill_workloads, proxy, BOUNDED_DRILL))  # type: ignore[arg-type]
    written = json.loads(write_result(result, tmp_path).read_text())
    assert (tmp_path / f"{proxy}.png").stat().st_size > 10_000
    assert result.failures == 0, f"{result.failures} of {result.requests} failed: {result.error_kinds}"
    labels = [e.label for e in result.timeline.events]
    assert labels[:2] == ["SIGKILL replica1", "restart"] and labels[-1] == "ready"
    assert written["killed_at_s"] < written["ready_at_s"] and sum(written["timeline"]["ok_per_s"]) == result.requests
    # The victim is serving again, and requests reached it after it was ready.
    assert fleet.replicas[BOUNDED_DRILL.victim].server.is_ready()
    assert counts(fleet.replicas[BOUNDED_DRILL.victim], SEARCH)[0] > 0
    # Whether throughput is back within the window is the full drill's goal (README); on a shared
    # 2-core machine a few seconds of it are noise, so the bounded run only reports it.
    assert written["passed"]["zero_failures"] is True and "throughput_recovered" in written["passed"]


def test_bounded_soak_runs_the_machinery_without_a_failed_request(
    fleet: Fleet, tiny_data: Path, tmp_path: Path
) -> None:
    workloads = workloads_named(tiny_data, SOAK_WORKLOADS, WorkloadConfig(requests=64))
    config = SoakConfig(duration_s=15.0, concurrency=32, period_s=5.0, sample_s=1.0)
    result = asyncio.run(run_soak(fleet.replicas[0], workloads, config))
    written = json.loads(write_soak(result, tmp_path).read_text())
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert result.failures == 0, f"{result.failures} of {result.requests} failed: {result.error_kinds}"
    assert len(result.periods) == 3 and all(p.requests > 0 for p in result.periods)
    # The server and its python stubs: far more than the server binary alone.
    assert min(rss for _, rss in result.rss_samples) > 200 * 2**20
    assert set(written["passed"]) == {"zero_failures", "rss_growth_below_5pct", "p99_last_within_20pct_of_second"}


def stub_pids(replica: Replica, model: str) -> list[int]:
    """The python stub processes of `model` in the replica's process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != replica.pid:
                continue
            if f"/{model}/1/model.py" in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return found


def test_a_replica_with_a_dead_stub_is_retried_elsewhere_and_then_avoided(fleet: Fleet, ids: np.ndarray) -> None:
    broken = fleet.replicas[2]
    (stub,) = stub_pids(broken, "fusion_head")
    os.kill(stub, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while stub_pids(broken, "fusion_head") and time.monotonic() < deadline:
        time.sleep(0.1)
    config = ClientConfig(url=",".join(fleet.grpc_urls), replicas=ReplicaConfig(eject_s=30.0, max_eject_s=30.0))
    try:
        with AisleClient(config=config) as client:
            before = counts(broken, RANK)
            rank_calls(client, ids, 30)  # none fails
            ejected = counts(broken, RANK)
            rank_calls(client, ids, 30)
            after = counts(broken, RANK)
        # The broken replica answered a call with the dead stub's INTERNAL, which was retried
        # elsewhere; ejected, it got no more calls.
        assert ejected[1] > before[1] and ejected[0] == before[0]
        assert after == ejected
        with grpcclient.InferenceServerClient(broken.grpc_url) as triton:
            assert triton.is_server_ready()  # what Triton reports, and why readiness alone cannot see it
    finally:
        broken.kill()  # draining a server with a dead stub would wait out its timeout
