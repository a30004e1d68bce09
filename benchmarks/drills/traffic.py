"""What the drills share: closed-loop client threads that record every request, closed-loop clients
in processes of their own, a readiness probe that records every answer, raw gRPC requests, and
Triton's pending-request gauge.

Threads, not asyncio: a drill kills, floods or stalls one part of the server while the other
clients keep going, and each client must wait for its own answer as an application would.
A client that stands for another application (a flood beside the measured one) runs in its own
process: as a thread it would hold the measured client's GIL while it copies its requests, and
the drill would time its own harness instead of the server.
"""

from __future__ import annotations

import multiprocessing
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event as ProcessEvent

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, serialize_byte_tensor

from aisle.model_repository.server import answers_ok

#: Seconds a drill request may take before the client gives up on it (a stuck server shows as this).
REQUEST_TIMEOUT_S = 60.0
#: Triton's gRPC ModelInfer method, called by ClientProcess with requests serialised beforehand.
MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
#: Pause after a refused request, which returns at once: a closed loop must not spin a core on it.
REFUSED_PAUSE_S = 0.005
#: Seconds a ClientProcess may take to start and have its first request answered.
CLIENT_START_TIMEOUT_S = 30.0


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


def repeat_until(
    stop: threading.Event | ProcessEvent, send_one: Callable[[int], Sent], record: Callable[[Sent], None]
) -> None:
    """A closed loop: send request i, record its answer, send request i + 1, until `stop`."""
    i = 0
    while not stop.is_set():
        result = send_one(i)
        record(result)
        i += 1
        if not result.ok:
            time.sleep(REFUSED_PAUSE_S)


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
            repeat_until(self._stop, lambda i: send(client, *self.requests(i)), self._record)

    def _record(self, result: Sent) -> None:
        with self._lock:
            self.sent.append(result)

    def between(self, t0: float, t1: float = float("inf")) -> list[Sent]:
        """Requests sent in [t0, t1)."""
        with self._lock:
            return [s for s in self.sent if t0 <= s.sent_at < t1]


def infer_request_bytes(model: str, arrays: Mapping[str, np.ndarray]) -> bytes:
    """A ModelInferRequest (Triton's own protobuf) for `arrays`, serialised: BYTES tensors in
    Triton's length-prefixed layout, the others as their raw little-endian bytes."""
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=array.shape)
        if array.dtype == np.object_:
            request.raw_input_contents.append(serialize_byte_tensor(array).item() if array.size else b"")
        else:
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request.SerializeToString()


def _client_process(url: str, payloads: Sequence[bytes], started: ProcessEvent, stop: ProcessEvent, results) -> None:
    """ClientProcess's body: send payloads in turn until `stop`, then put the list of Sent."""
    sent: list[Sent] = []

    def record(result: Sent) -> None:
        sent.append(result)
        started.set()

    with grpc.insecure_channel(url) as channel:
        # bytes in, bytes out: the payload goes out as is and the answer is not even parsed.
        infer = channel.unary_unary(MODEL_INFER_METHOD)

        def send_one(i: int) -> Sent:
            start = time.monotonic()
            try:
                infer(payloads[i % len(payloads)], timeout=REQUEST_TIMEOUT_S)
                status = "OK"
            except grpc.RpcError as e:
                status = e.code().name
            return Sent(start, time.monotonic(), status)

        repeat_until(stop, send_one, record)
    results.put(sent)


class ClientProcess:
    """A closed-loop client in a process of its own, standing for another application: it sends
    `requests` (model, arrays) in turn, each serialised once here, so neither it nor its copies
    share the measured client's GIL. `sent` holds its requests once the context exits."""

    def __init__(self, url: str, requests: Sequence[tuple[str, Mapping[str, np.ndarray]]]) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: the parent runs gRPC threads
        self._started, self._stop, self._results = context.Event(), context.Event(), context.Queue()
        payloads = [infer_request_bytes(model, arrays) for model, arrays in requests]
        self._process = context.Process(
            target=_client_process, args=(url, payloads, self._started, self._stop, self._results), daemon=True
        )
        self.sent: list[Sent] = []

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def __enter__(self) -> ClientProcess:
        """Starts the process and returns once its first request was answered."""
        self._process.start()
        deadline = time.monotonic() + CLIENT_START_TIMEOUT_S
        while not self._started.wait(0.2):
            if not self._process.is_alive() or time.monotonic() > deadline:
                pid, code = self._process.pid, self._process.exitcode
                self._end()
                raise RuntimeError(f"client process {pid} (exit code {code}): no answer to its first request")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            self.sent = self._collect()
        finally:
            self._end()

    def _collect(self) -> list[Sent]:
        """The process's records, once its last request is answered; an error if it died first."""
        deadline = time.monotonic() + REQUEST_TIMEOUT_S + 10
        while time.monotonic() < deadline:
            try:
                return self._results.get(timeout=0.5)
            except queue.Empty:
                if not self._process.is_alive():
                    pid, code = self._process.pid, self._process.exitcode
                    raise RuntimeError(f"client process {pid} ended (exit code {code}) without its records") from None
        raise TimeoutError(f"client process {self._process.pid}: no records {REQUEST_TIMEOUT_S + 10:g} s after stop")

    def _end(self) -> None:
        """Stop the process by its PID if it has not ended by itself."""
        self._stop.set()
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


class ReadinessProbe:
    """Polls GET `url` (a server's readiness_url) every `interval_s`, as a balancer's health check would."""

    def __init__(self, url: str, interval_s: float = 0.02) -> None:
        self.url = url
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
            self.answers.append((time.monotonic(), answers_ok(self.url)))
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

    def transitions(self, since: float) -> list[tuple[float, bool]]:
        """(seconds after `since`, answer) for the first answer from `since` on and each change after it."""
        changes: list[tuple[float, bool]] = []
        for t, ready in list(self.answers):
            if t >= since and (not changes or changes[-1][1] != ready):
                changes.append((round(t - since, 3), ready))
        return changes

    def flips(self, after: float) -> int:
        """How often the answer changed after `after`."""
        answers = [r for t, r in list(self.answers) if t >= after]
        return sum(a != b for a, b in zip(answers, answers[1:]))


def percentile_ms(sent: Sequence[Sent], q: float) -> float:
    latencies = [s.latency_s for s in sent if s.ok]
    return float(np.percentile(latencies, q) * 1e3) if latencies else float("nan")


def metric_samples(metrics_url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` on Triton's Prometheus endpoint, as (labels, value)."""
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = re.findall(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", text, re.M)
    return [(dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)) for labels, value in samples]


def pending_requests(metrics_url: str) -> dict[str, float]:
    """nv_inference_pending_request_count per model, from Triton's Prometheus metrics.

    Triton 2.51 exports no in-flight gauge; pending (queued, not yet executing) is the one that
    shows requests stuck inside the server.
    """
    samples = metric_samples(metrics_url, "nv_inference_pending_request_count")
    return {labels["model"]: value for labels, value in samples}


def wait_until_idle(metrics_url: str, timeout_s: float = 30.0) -> dict[str, float]:
    """Poll the pending gauge until every model reads zero (or the timeout); the last reading."""
    deadline = time.monotonic() + timeout_s
    while True:
        pending = pending_requests(metrics_url)
        if all(count == 0 for count in pending.values()) or time.monotonic() > deadline:
            return pending
        time.sleep(0.2)
