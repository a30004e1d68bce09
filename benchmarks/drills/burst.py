"""Drill: a burst of requests sent at once, and clients that hang up mid-request.

    python -m aisle.benchmarks.drills.burst --repo REPO [--requests 10000] [--disconnects 200]

Goal: the server stays ready, every burst request is answered (no timeouts), and afterwards nothing
stays stuck: Triton's pending-request gauge is back to zero for every model and an ordinary request
is answered. Disconnects are both gRPC calls the client cancels by a 1 ms deadline and HTTP
requests whose socket is closed right after the body was sent.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from aisle.benchmarks.drills.traffic import REQUEST_TIMEOUT_S, send, wait_until_idle, wire_inputs
from aisle.model_repository.server import ServerConfig, TritonServer, free_ports, is_ready
from aisle.schema import EMBED_QUERY, QUERY

QUERY_BODY = json.dumps(
    {"inputs": [{"name": QUERY, "shape": [1, 1], "datatype": "BYTES", "data": ["running shoes"]}]}
).encode()


@dataclass(frozen=True)
class BurstResult:
    requests: int
    seconds: float
    statuses: dict[str, int]
    disconnects: int
    ready_after: bool
    pending_after: dict[str, float]
    ordinary_after: str

    @property
    def nothing_stuck(self) -> bool:
        return (
            self.ready_after
            and self.ordinary_after == "OK"
            and all(count == 0 for count in self.pending_after.values())
            and "DEADLINE_EXCEEDED" not in self.statuses
        )

    def summary(self) -> str:
        return (
            f"{self.requests} embed_query requests sent at once: answered in {self.seconds:.1f} s, {self.statuses}; "
            f"{self.disconnects} clients hung up mid-request; afterwards ready={self.ready_after}, "
            f"pending {'all 0' if all(v == 0 for v in self.pending_after.values()) else self.pending_after}, "
            f"ordinary request {self.ordinary_after}: {'nothing stuck' if self.nothing_stuck else 'STUCK'}"
        )


def burst(url: str, count: int) -> tuple[float, Counter]:
    """`count` embed_query requests issued at once (async, one channel); (seconds, statuses)."""
    statuses: Counter = Counter()
    done = threading.Semaphore(0)
    lock = threading.Lock()

    def finished(result: object, error: InferenceServerException | None) -> None:
        with lock:
            statuses["OK" if error is None else str(error.status()).removeprefix("StatusCode.")] += 1
        done.release()

    inputs = wire_inputs({QUERY: np.array([[b"running shoes"]], dtype=object)})
    start = time.monotonic()
    with grpcclient.InferenceServerClient(url) as client:
        for _ in range(count):
            client.async_infer(EMBED_QUERY, inputs, finished, client_timeout=REQUEST_TIMEOUT_S)
        for _ in range(count):
            done.acquire()
    return time.monotonic() - start, statuses


def grpc_hang_ups(url: str, count: int) -> None:
    """`count` gRPC requests the client cancels after 1 ms (the server may still be working on them)."""
    inputs = wire_inputs({QUERY: np.array([[b"running shoes"]], dtype=object)})
    with grpcclient.InferenceServerClient(url) as client:
        for _ in range(count):
            try:
                client.infer(EMBED_QUERY, inputs, client_timeout=0.001)
            except InferenceServerException:
                pass


def http_hang_ups(http_url: str, count: int) -> None:
    """`count` HTTP/JSON requests whose connection is closed as soon as the body is sent."""
    host, port = http_url.rsplit(":", 1)
    head = (
        f"POST /v2/models/{EMBED_QUERY}/infer HTTP/1.1\r\nHost: {http_url}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(QUERY_BODY)}\r\n\r\n"
    ).encode()
    for _ in range(count):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head + QUERY_BODY)


def run_burst(server: TritonServer, *, requests: int = 10_000, disconnects: int = 200) -> BurstResult:
    seconds, statuses = burst(server.grpc_url, requests)
    grpc_hang_ups(server.grpc_url, disconnects // 2)
    http_hang_ups(server.http_url, disconnects - disconnects // 2)
    pending = wait_until_idle(server.metrics_url)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        ordinary = send(client, EMBED_QUERY, {QUERY: np.array([[b"running shoes"]], dtype=object)})
    return BurstResult(
        requests=requests,
        seconds=seconds,
        statuses=dict(statuses),
        disconnects=disconnects,
        ready_after=is_ready(server.http_url),
        pending_after=pending,
        ordinary_after=ordinary.status,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="rendered model repository (embedded target)")
    parser.add_argument("--requests", type=int, default=10_000, help="requests in the burst")
    parser.add_argument("--disconnects", type=int, default=200, help="clients that hang up mid-request")
    args = parser.parse_args(argv)
    grpc_port, http_port, metrics_port = free_ports(3)
    config = ServerConfig(args.repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
    with TritonServer(config) as server:
        result = run_burst(server, requests=args.requests, disconnects=args.disconnects)
    print(result.summary())
    print(json.dumps(asdict(result), indent=2))
    return 0 if result.nothing_stuck else 1


if __name__ == "__main__":
    sys.exit(main())
