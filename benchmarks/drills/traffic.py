"""What the drills share: closed-loop client threads that record every request, a readiness probe
that records every answer, raw gRPC requests, and Triton's pending-request gauge.

Threads, not asyncio: a drill kills, floods or stalls one part of the server while the other
clients keep going, and each client must wait for its own answer as an application would.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from aisle.model_repository.server import is_ready

#: Seconds a drill request may take before the client gives up on it (a stuck server shows as this).
REQUEST_TIMEOUT_S = 60.0


#: A request's tensors: arrays by name, or InferInputs already serialised (see send()).
Request = Mapping[str, np.ndarray] | Sequence[grpcclient.InferInput]


@dataclass(frozen=True)
class Sent:
    """One request: when it was sent and answered (monotonic s) and its gRPC status ("OK" if none)."""

    sent_at: float
    done_at: float
    status: str

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def latency_s(self) -> float:
        return self.done_at - self.sent_at


def wire_inputs(arrays: Mapping[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def send(
    client: grpcclient.InferenceServerClient,
    model: str,
    arrays: Mapping[str, np.ndarray] | Sequence[grpcclient.InferInput],
) -> Sent:
    """One timed gRPC request; a refusal or failure is recorded by its status code, never raised.

    `arrays` may be InferInputs built once (wire_inputs): a drill that repeats a 10 MB request must
    not spend the shared cores serialising it again each time.
    """
    inputs = wire_inputs(arrays) if isinstance(arrays, Mapping) else list(arrays)
    start = time.monotonic()
    try:
        client.infer(model, inputs, client_timeout=REQUEST_TIMEOUT_S)
        status = "OK"
    except InferenceServerException as e:
        status = str(e.status() or "UNKNOWN").removeprefix("StatusCode.")
    return Sent(start, time.monotonic(), status)


class ClosedLoop:
    """`clients` threads, each sending the next request as soon as the previous one is answered.

    requests(i) gives the i-th request of a thread as (model, arrays or prebuilt InferInputs).
    """

    def __init__(self, url: str, requests: Callable[[int], tuple[str, Request]], clients: int = 1) -> None:
        self.url = url
        self.requests = requests
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> ClosedLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_S + 5)

    def _run(self) -> None:
        with grpcclient.InferenceServerClient(self.url) as client:
            i = 0
            while not self._stop.is_set():
                model, arrays = self.requests(i)
                result = send(client, model, arrays)
                with self._lock:
                    self.sent.append(result)
                i += 1
                if not result.ok:
                    time.sleep(0.005)  # a refused request returns at once: do not spin a core on it

    def between(self, t0: float, t1: float = float("inf")) -> list[Sent]:
        """Requests sent in [t0, t1)."""
        with self._lock:
            return [s for s in self.sent if t0 <= s.sent_at < t1]


class ReadinessProbe:
    """Polls GET /v2/health/ready every `interval_s`, as a balancer's health check would."""

    def __init__(self, http_url: str, interval_s: float = 0.02) -> None:
        self.http_url = http_url
        self.interval_s = interval_s
        self.answers: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReadinessProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.answers.append((time.monotonic(), is_ready(self.http_url)))
            self._stop.wait(self.interval_s)

    def first(self, ready: bool, after: float) -> float | None:
        """Time of the first answer `ready` at or after `after`."""
        return next((t for t, r in list(self.answers) if t >= after and r == ready), None)

    def wait_for(self, ready: bool, after: float, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.first(ready, after)
            if found is not None:
                return found
            time.sleep(self.interval_s)
        return None

    def flips(self, after: float) -> int:
        """How often the answer changed after `after`."""
        answers = [r for t, r in list(self.answers) if t >= after]
        return sum(a != b for a, b in zip(answers, answers[1:]))


def percentile_ms(sent: Sequence[Sent], q: float) -> float:
    latencies = [s.latency_s for s in sent if s.ok]
    return float(np.percentile(latencies, q) * 1e3) if latencies else float("nan")


def pending_requests(metrics_url: str) -> dict[str, float]:
    """nv_inference_pending_request_count per model, from Triton's Prometheus metrics.

    Triton 2.51 exports no in-flight gauge; pending (queued, not yet executing) is the one that
    shows requests stuck inside the server.
    """
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    pending = re.findall(r'^nv_inference_pending_request_count\{model="([^"]+)".*\} (\S+)$', text, re.M)
    return {model: float(value) for model, value in pending}


def wait_until_idle(metrics_url: str, timeout_s: float = 30.0) -> dict[str, float]:
    """Poll the pending gauge until every model reads zero (or the timeout); the last reading."""
    deadline = time.monotonic() + timeout_s
    while True:
        pending = pending_requests(metrics_url)
        if all(count == 0 for count in pending.values()) or time.monotonic() > deadline:
            return pending
        time.sleep(0.2)
