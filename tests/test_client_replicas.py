"""The replica pool's decisions (replicas.py) and how the retry policy uses them, without a server.

Real replicas (three tritonservers, one killed, one draining, one with a dead stub) are in
test_replicas_served.py.
"""

from __future__ import annotations

import socket

import pytest

from aisle.client.config import ClientConfig, ReplicaConfig, RetryConfig
from aisle.client.errors import (
    AisleClientError,
    ConfigError,
    InvalidInputError,
    ServerError,
    UnavailableError,
    from_triton,
)
from aisle.client.replicas import Replica, ReplicaPool, resolve_endpoints
from aisle.client.retry import Attempts, call_with_retry
from tests.test_client_errors import triton_error


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def pool(clock: Clock, count: int = 3, **options: float) -> ReplicaPool[str]:
    replicas = [Replica(f"10.0.0.{k}:8001", f"conn-{k}") for k in range(count)]
    return ReplicaPool(replicas, ReplicaConfig(**options), clock=clock)


def unavailable() -> UnavailableError:
    return UnavailableError("rank: connection refused", status="UNAVAILABLE")


def test_url_takes_several_comma_separated_endpoints_without_duplicates() -> None:
    config = ClientConfig(url="127.0.0.1:8001, 127.0.0.1:8101,127.0.0.1:8001")
    assert config.endpoints == ("127.0.0.1:8001", "127.0.0.1:8101")
    with pytest.raises(ConfigError, match="url="):
        ClientConfig(url="127.0.0.1:8001,nohostport")


def test_a_host_name_resolves_to_one_replica_per_address_when_asked() -> None:
    as_given = resolve_endpoints(["localhost:8001"], resolve_names=False)
    assert [e.address for e in as_given] == ["localhost:8001"]
    resolved = resolve_endpoints(["localhost:8001", "127.0.0.1:8001"], resolve_names=True)
    expected = {
        f"[{info[4][0]}]:8001" if info[0] == socket.AF_INET6 else f"{info[4][0]}:8001"
        for info in socket.getaddrinfo("localhost", 8001, type=socket.SOCK_STREAM)
    }
    assert {e.address for e in resolved} == expected | {"127.0.0.1:8001"}
    assert all(e.tls_name == "localhost" for e in resolved if e.address != "127.0.0.1:8001")
    with pytest.raises(ConfigError, match="does not resolve"):
        resolve_endpoints(["no-such-host.invalid:8001"], resolve_names=True)


def test_calls_go_round_robin_over_healthy_replicas() -> None:
    replicas = pool(Clock())
    picks = [replicas.route().pick().address for _ in range(6)]
    assert picks == [f"10.0.0.{k % 3}:8001" for k in range(6)]


def test_a_replica_that_is_not_ready_gets_no_calls_until_ready_again() -> None:
    replicas = pool(Clock())
    replicas.observe(replicas.replicas[1], False)
    assert {replicas.route().pick().address for _ in range(6)} == {"10.0.0.0:8001", "10.0.0.2:8001"}
    replicas.observe(replicas.replicas[1], True)
    assert "10.0.0.1:8001" in {replicas.route().pick().address for _ in range(3)}


def test_a_failed_replica_is_ejected_with_doubling_pauses_and_a_burst_counts_once() -> None:
    clock = Clock()
    replicas = pool(clock, eject_s=1.0, max_eject_s=3.0)
    one = replicas.replicas[1]
    for _ in range(16):  # sixteen calls in flight fail together: one failure
        replicas.failed(one, unavailable())
    assert (one.failures, one.ejected_until) == (1, 101.0)
    assert "10.0.0.1:8001" not in replicas.healthy_addresses()
    clock.now = 101.0
    replicas.failed(one, unavailable())
    assert one.ejected_until == 103.0
    clock.now = 103.0
    replicas.failed(one, unavailable())
    assert one.ejected_until == 106.0  # capped at max_eject_s
    replicas.succeeded(one)
    assert one.failures == 0


def test_errors_that_say_nothing_about_the_replica_do_not_eject_it() -> None:
    replicas = pool(Clock())
    for error in (InvalidInputError("bad", status="INVALID_ARGUMENT"), ServerError("boom", status="INTERNAL")):
        replicas.failed(replicas.replicas[0], error)
    assert replicas.healthy_addresses() == [r.address for r in replicas.replicas]


def test_a_dead_stub_answer_is_retryable_and_other_internal_errors_are_not() -> None:
    stub = from_triton(
        triton_error("INTERNAL", "in ensemble 'rank', Stub process 'fusion_head_0_0' is not healthy."),
        request_id="r",
        what="rank",
    )
    assert isinstance(stub, UnavailableError) and stub.status == "INTERNAL"
    assert type(from_triton(triton_error("INTERNAL", "division by zero"), request_id="r", what="rank")) is ServerError


def run_call(replicas: ReplicaPool[str], outcomes: dict[str, list[AisleClientError | str]], clock: Clock) -> list:
    """One call through the retry loop; each replica answers its next outcome. Returns (tried, result)."""
    route = replicas.route()
    tried: list[str] = []

    def attempt(timeout_s: float | None) -> str:
        with route.attempt() as replica:
            tried.append(replica.address)
            outcome = outcomes[replica.address].pop(0)
            if isinstance(outcome, AisleClientError):
                raise outcome
            return outcome

    policy = RetryConfig(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=0.4, jitter=0.0, total_timeout_s=None)
    attempts = Attempts(policy, clock() + 10.0, "rank", "r", clock=clock, uniform=lambda: 0.0, route=route)
    return [tried, call_with_retry(attempt, attempts, clock.sleep)]


def test_a_retry_goes_to_another_replica_at_once() -> None:
    clock = Clock()
    replicas = pool(clock)
    tried, result = run_call(replicas, {"10.0.0.0:8001": [unavailable()], "10.0.0.1:8001": ["ok"]}, clock)
    assert (tried, result) == (["10.0.0.0:8001", "10.0.0.1:8001"], "ok")
    assert clock.sleeps == [0.0]  # no backoff pause
    assert replicas.replicas[0].ejected_until > clock.now


def test_with_every_replica_failing_the_call_backs_off_and_tries_them_again() -> None:
    clock = Clock()
    replicas = pool(clock, count=2)
    outcomes: dict[str, list[AisleClientError | str]] = {
        "10.0.0.0:8001": [unavailable(), unavailable()],
        "10.0.0.1:8001": [unavailable(), "ok"],
    }
    tried, result = run_call(replicas, outcomes, clock)
    assert result == "ok" and len(tried) == 4 and set(tried[:2]) == set(tried[2:]) == set(outcomes)
    assert clock.sleeps == pytest.approx([0.0, 0.2, 0.4])  # no pause for the first failover only


def test_invalid_argument_is_never_retried_on_another_replica() -> None:
    clock = Clock()
    replicas = pool(clock)
    bad = InvalidInputError("rank: unknown candidate id 99999", status="INVALID_ARGUMENT")
    with pytest.raises(InvalidInputError):
        run_call(replicas, {"10.0.0.0:8001": [bad], "10.0.0.1:8001": ["ok"]}, clock)
    assert [r.failures for r in replicas.replicas] == [0, 0, 0]


def test_a_single_replica_keeps_the_plain_backoff_and_no_probes() -> None:
    clock = Clock()
    replicas = pool(clock, count=1)
    assert not replicas.probes_needed
    tried, result = run_call(replicas, {"10.0.0.0:8001": [unavailable(), "ok"]}, clock)
    assert (tried, result, clock.sleeps) == (["10.0.0.0:8001"] * 2, "ok", [0.1])


def test_membership_follows_the_resolved_addresses_and_keeps_them_when_resolution_finds_none() -> None:
    from aisle.client.replicas import Endpoint

    replicas = pool(Clock(), count=2)
    connected: list[str] = []

    def connect(endpoint: Endpoint) -> str:
        connected.append(endpoint.address)
        return f"conn-{endpoint.address}"

    left = replicas.reconcile([Endpoint("10.0.0.1:8001"), Endpoint("10.0.0.7:8001")], connect)
    assert [r.address for r in left] == ["10.0.0.0:8001"]
    assert [r.address for r in replicas.replicas] == ["10.0.0.1:8001", "10.0.0.7:8001"]
    assert connected == ["10.0.0.7:8001"]  # only the new address gets a channel
    assert replicas.reconcile([], connect) == [] and len(replicas) == 2
    assert {replicas.route().pick().address for _ in range(4)} == {"10.0.0.1:8001", "10.0.0.7:8001"}


def test_a_replica_that_left_closes_only_once_no_attempt_is_under_way_on_it() -> None:
    from aisle.client.replicas import Endpoint

    replicas = pool(Clock(), count=2)
    with replicas.route().attempt() as busy:
        with replicas.route().attempt() as other:
            assert other.address != busy.address and (busy.in_flight, other.in_flight) == (1, 1)
        assert other.in_flight == 0
        departed = replicas.reconcile([Endpoint(other.address)], lambda endpoint: "unused")
        assert departed == [busy]
        assert replicas.idle(departed) == ([], [busy])  # the attempt under way still uses its channel
        with replicas.route().attempt() as next_one:
            assert next_one is other  # no new attempt goes to the replica that left
    assert busy.in_flight == 0 and replicas.idle(departed) == ([busy], [])


def test_a_single_name_to_resolve_again_still_needs_probes() -> None:
    replicas = [Replica("10.0.0.1:8001", "conn")]
    assert ReplicaPool(replicas, ReplicaConfig(resolve_names=True)).probes_needed
    assert not ReplicaPool(replicas, ReplicaConfig()).probes_needed
