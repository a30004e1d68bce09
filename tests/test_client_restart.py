"""Retries across a server restart: a sync and an async client keep calling while their server is
stopped and started again; every call returns its correct result, none fails or goes missing.

This test owns its server (stopping the session's shared one would break the other tests).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from aisle.client import AisleClient, AsyncAisleClient, ClientConfig, RankResult, RetryConfig
from aisle.data.format import ITEMS, read_items
from aisle.model_repository.server import ServerConfig, TritonServer, free_ports, port_in_use

pytestmark = [pytest.mark.server, pytest.mark.slow]

#: Long enough to ride out a stop and a cold start of the server on a loaded 2-core machine.
OUTAGE_BUDGET_S = 300.0
#: Calls each worker completes before the stop, and after the restart, before the test ends.
CALLS_AROUND_OUTAGE = 5


@dataclass(frozen=True)
class Call:
    worker: str
    number: int
    started: float
    finished: float
    outcome: RankResult | Exception


class Workers:
    """Threads that call `rank` in a loop (one sync client, one async client) and log every call."""

    def __init__(self, config: ClientConfig, inputs: list[tuple[str, np.ndarray]]) -> None:
        self.config = config
        self.inputs = inputs
        self.calls: list[Call] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._sync_loop, name="sync"),
            threading.Thread(target=lambda: asyncio.run(self._async_loop()), name="async"),
        ]

    def _log(self, worker: str, number: int, started: float, outcome: RankResult | Exception) -> None:
        self.calls.append(Call(worker, number, started, time.monotonic(), outcome))

    def _sync_loop(self) -> None:
        with AisleClient(config=self.config) as client:
            number = 0
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    outcome: RankResult | Exception = client.rank(*self.inputs[number % len(self.inputs)])
                except Exception as e:  # logged and asserted on: no call may fail
                    outcome = e
                self._log("sync", number, started, outcome)
                number += 1

    async def _async_loop(self) -> None:
        async with AsyncAisleClient(config=self.config) as client:
            number = 0
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    outcome: RankResult | Exception = await client.rank(*self.inputs[number % len(self.inputs)])
                except Exception as e:
                    outcome = e
                self._log("async", number, started, outcome)
                number += 1

    def wait_for_calls(self, count: int, *, finished_after: float) -> None:
        """Until every worker has `count` calls that finished after `finished_after`."""
        deadline = time.monotonic() + OUTAGE_BUDGET_S
        while time.monotonic() < deadline:
            done = [sum(c.worker == w and c.finished > finished_after for c in self.calls) for w in ("sync", "async")]
            if min(done) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"workers did not complete {count} calls each within {OUTAGE_BUDGET_S} s")


def restart_on_the_same_grpc_port(server: TritonServer) -> TritonServer:
    """Start a new server on the stopped one's gRPC port, with the same repository.

    HTTP and metrics get fresh ports: the launcher refuses a port that a plain bind() reports in
    use, and the HTTP port the launcher polled for readiness lingers in TIME_WAIT for a minute
    (tritonserver itself could bind it). Clients see only the gRPC address, which is unchanged; if
    it is briefly held too, the restart waits for it while the clients keep retrying.
    """
    config = server.config
    deadline = time.monotonic() + OUTAGE_BUDGET_S / 2
    while port_in_use(config.host, config.grpc_port) and time.monotonic() < deadline:
        time.sleep(0.5)
    http_port, metrics_port = free_ports(2)
    restarted = TritonServer(replace(config, http_port=http_port, metrics_port=metrics_port))
    restarted.start()
    return restarted


def test_calls_in_flight_across_a_restart_are_retried_and_all_succeed(embedded_repo: Path, tiny_data: Path) -> None:
    ids = np.array([item.item_id for item in read_items(tiny_data / ITEMS)], dtype=np.int64)
    inputs = [(f"query {k}", ids[k * 7 : k * 7 + 12]) for k in range(4)]
    server = TritonServer(ServerConfig(embedded_repo, *free_ports(3)))
    retry = RetryConfig(
        max_attempts=100_000, initial_backoff_s=0.05, max_backoff_s=0.5, total_timeout_s=OUTAGE_BUDGET_S
    )
    config = ClientConfig(url=server.grpc_url, timeout_s=OUTAGE_BUDGET_S, retry=retry)
    workers = Workers(config, inputs)
    try:
        server.start()
        with AisleClient(config=config) as reference:
            expected = [reference.rank(*args).raw_scores for args in inputs]
        for thread in workers.threads:
            thread.start()
        workers.wait_for_calls(CALLS_AROUND_OUTAGE, finished_after=0.0)
        server.stop()
        stopped = time.monotonic()
        time.sleep(1.0)  # both workers are now inside a call that cannot succeed until the restart
        # A retried call may succeed as soon as the new server answers, before start() returns.
        restarting = time.monotonic()
        server = restart_on_the_same_grpc_port(server)
        restarted = time.monotonic()
        workers.wait_for_calls(CALLS_AROUND_OUTAGE, finished_after=restarted)
    finally:
        workers.stop.set()
        for thread in workers.threads:
            if thread.is_alive():
                thread.join(timeout=OUTAGE_BUDGET_S)
        server.stop()

    failures = [c for c in workers.calls if isinstance(c.outcome, Exception)]
    assert failures == [], f"{len(failures)} calls failed, first: {failures[0].outcome!r}"
    for worker in ("sync", "async"):
        numbers = [c.number for c in workers.calls if c.worker == worker]
        assert numbers == list(range(len(numbers))), f"{worker}: a call is missing from the log"
        mine = [c for c in workers.calls if c.worker == worker]
        spanning = [c for c in mine if c.started < stopped + 1.0 < restarting < c.finished]
        assert spanning, f"{worker}: no call was in flight across the outage"
    for call in workers.calls:
        assert isinstance(call.outcome, RankResult)
        np.testing.assert_allclose(call.outcome.raw_scores, expected[call.number % len(inputs)], rtol=0, atol=1e-5)
