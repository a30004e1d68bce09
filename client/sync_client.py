"""AisleClient: the blocking client. One gRPC channel per replica, safe to share between threads.

Why one channel: opening a channel per call costs a TCP (and TLS) handshake each time; gRPC
channels multiplex concurrent calls, so threads share one. With several replicas a daemon thread
probes their readiness (replicas.py decides what the answers mean). Large inputs are split into chunks of
the ensemble's max batch size that are sent concurrently from a small thread pool (the chunks are
in flight together on the one channel) and reassembled in order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from types import TracebackType
from typing import TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from aisle.retrieval.filters import Filters
from aisle.schema import EMBED_ITEM, EMBED_QUERY, Schema

from .base import READY_POLL_S, ClientBase, translated
from .config import ClientConfig
from .contract import CONTRACT_ENSEMBLES, ServedEnsemble, verify_contract
from .errors import NotFoundError, UnavailableError
from .replicas import Endpoint, Replica
from .requests import (
    AisleRequest,
    InferCall,
    Text,
    embed_request,
    new_request_id,
    rank_cold_request,
    rank_request,
    search_request,
)
from .results import RankResult, SearchResult, ServerInfo
from .retry import call_with_retry

T = TypeVar("T")
#: One Triton call on a replica's tritonclient, given the attempt's timeout.
Send = Callable[[grpcclient.InferenceServerClient, float | None], T]


class AisleClient(ClientBase):
    """Search, recommendation and embeddings from an aisle Triton server (blocking calls).

    Every method takes keyword-only `timeout_s` (the call's deadline, retries included; default
    `config.timeout_s`) and `request_id` (sent to the server and attached to errors; generated
    when omitted). At the first call the server's ensembles are checked against the schema.
    """

    def __init__(self, url: str | None = None, *, config: ClientConfig | None = None) -> None:
        super().__init__(url, config)
        self._pool = self._pool_of(self._connect)
        #: Replicas whose address left a resolved name and that an attempt still uses: closed when idle.
        self._departed: list[Replica[grpcclient.InferenceServerClient]] = []
        self._closing = threading.Event()
        self._prober: threading.Thread | None = None
        if self._pool.probes_needed:
            self._prober = threading.Thread(target=self._probe_loop, name="aisle-replica-probes", daemon=True)
            self._prober.start()
        self._contract_lock = threading.Lock()
        self._chunks_lock = threading.Lock()
        self._chunks: ThreadPoolExecutor | None = None

    # --- Calls ---------------------------------------------------------------------------------

    def embed_queries(
        self, texts: Sequence[Text], *, timeout_s: float | None = None, request_id: str | None = None
    ) -> np.ndarray:
        """Query-tower embeddings, [len(texts), dim] float32, L2-normalised (empty text -> zeros)."""
        return self._execute(embed_request(EMBED_QUERY, texts), timeout_s, request_id)

    def embed_items(
        self, texts: Sequence[Text], *, timeout_s: float | None = None, request_id: str | None = None
    ) -> np.ndarray:
        """Item-tower embeddings, [len(texts), dim] float32, L2-normalised."""
        return self._execute(embed_request(EMBED_ITEM, texts), timeout_s, request_id)

    def rank(
        self,
        query: Text,
        candidate_ids: Sequence[int] | np.ndarray,
        user_history_ids: Sequence[int] | np.ndarray = (),
        *,
        top_k: int | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> RankResult:
        """Score catalog items for a search query and (optionally) the user's history, oldest first."""
        request = rank_request(query, candidate_ids, user_history_ids, top_k)
        return self._execute(request, timeout_s, request_id)

    def rank_cold(
        self,
        query: Text,
        candidate_texts: Sequence[Text],
        candidate_features: object = None,
        user_history_ids: Sequence[int] | np.ndarray = (),
        *,
        top_k: int | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> RankResult:
        """Score items not in the catalog, given as texts (+ raw features; None or NaN = unknown).

        `candidate_features` has one row per candidate in the order of `aisle.schema.ITEM_FEATURES`
        (price, rating, review_count, popularity). Result ids are positions in `candidate_texts`.
        """
        request = rank_cold_request(query, candidate_texts, candidate_features, user_history_ids, top_k)
        return self._execute(request, timeout_s, request_id)

    def search(
        self,
        query: Text,
        *,
        user_history_ids: Sequence[int] | np.ndarray = (),
        top_k: int = 10,
        filters: Filters | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> SearchResult:
        """The top_k items of the whole catalog for a query (and the user's history, oldest first).

        Candidates are retrieved from the whole catalog by the query and the user vector under
        `filters` (a filtered-out item never takes a slot), then ranked by the fusion head. Fewer
        than top_k come back only when the filters allow fewer items.
        """
        request = search_request(query, user_history_ids, top_k, filters)
        return self._execute(request, timeout_s, request_id)

    def recommend(
        self,
        user_history_ids: Sequence[int] | np.ndarray,
        *,
        top_k: int = 10,
        filters: Filters | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> SearchResult:
        """The top_k items of the whole catalog for a user's history alone (`search` with no query).

        With an empty history too, the most popular items (under `filters`) ranked by the head.
        """
        return self.search(
            "",
            user_history_ids=user_history_ids,
            top_k=top_k,
            filters=filters,
            timeout_s=timeout_s,
            request_id=request_id,
        )

    # --- Health and metadata -------------------------------------------------------------------

    def is_ready(self, *, timeout_s: float | None = None) -> bool:
        """True when the server (with several: any replica) is ready and so is every aisle ensemble
        on it; False if unreachable. Every replica is probed, and its answer steers later calls."""
        probe_s = self._probe_timeout_s(timeout_s)
        return any([self._probe(replica, probe_s) for replica in self._pool.replicas])

    def wait_until_ready(self, timeout_s: float) -> None:
        """Block until `is_ready()`; UnavailableError if it is not within `timeout_s` seconds."""
        deadline = time.monotonic() + timeout_s
        while not self.is_ready(timeout_s=max(READY_POLL_S, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise UnavailableError(f"server {self.url}: aisle ensembles not ready within {timeout_s} s")
            time.sleep(READY_POLL_S)

    def server_info(self, *, timeout_s: float | None = None, request_id: str | None = None) -> ServerInfo:
        """Server name, version, extensions, embedding size and per-ensemble readiness.

        Checks the ensembles against the schema first, like any call (SchemaMismatchError if not).
        """
        deadline = self._deadline(timeout_s)
        request_id = request_id or new_request_id()
        schema = self._verified_schema(request_id, deadline)
        metadata = self._retrying(
            "server metadata",
            lambda triton, t: triton.get_server_metadata(headers=self._headers, client_timeout=t),
            request_id,
            deadline,
        )
        ready = {name: self._ensemble_ready(name, request_id, deadline) for name in CONTRACT_ENSEMBLES}
        return self._server_info(metadata, schema, ready)

    # --- Lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channels, the probe thread and the chunk threads; calls in progress fail with an error."""
        self._closing.set()
        if self._prober is not None:
            self._prober.join()
        with self._chunks_lock:
            if self._chunks is not None:
                self._chunks.shutdown(wait=True)
                self._chunks = None
        for replica in self._pool.replicas + self._departed:
            replica.connection.close()

    def __enter__(self) -> AisleClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- Internals -----------------------------------------------------------------------------

    def _retrying(self, what: str, send: Send[T], request_id: str, deadline: float | None) -> T:
        """`send(replica's tritonclient, timeout_s)` with typed errors, the replica route and the retry policy."""
        route = self._pool.route()

        def attempt(timeout_s: float | None) -> T:
            with route.attempt() as replica, translated(what, request_id):
                return send(replica.connection, timeout_s)

        return call_with_retry(attempt, self._attempts(what, request_id, deadline, route), time.sleep)

    def _probe(self, replica: Replica[grpcclient.InferenceServerClient], timeout_s: float | None) -> bool:
        """Probe one replica's readiness (server and every aisle ensemble) and record the answer."""
        triton = replica.connection
        try:
            ready = triton.is_server_ready(headers=self._headers, client_timeout=timeout_s) and all(
                triton.is_model_ready(name, headers=self._headers, client_timeout=timeout_s)
                for name in CONTRACT_ENSEMBLES
            )
        except InferenceServerException:
            ready = False
        self._pool.observe(replica, ready)
        return ready

    def _connect(self, endpoint: Endpoint) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(**self._connection_kwargs(endpoint))

    def _probe_loop(self) -> None:
        """The probe thread: members again (resolve_names), then every replica, every health_interval_s."""
        replicas = self.config.replicas
        while not self._closing.wait(replicas.health_interval_s):
            departed = self._departed + self._pool.reconcile(self._members_now(), self._connect)
            idle, self._departed = self._pool.idle(departed)
            for replica in idle:
                replica.connection.close()
            for replica in self._pool.replicas:
                self._probe(replica, replicas.probe_timeout_s)

    def _ensemble_ready(self, name: str, request_id: str, deadline: float | None) -> bool:
        return self._retrying(
            f"{name} readiness",
            lambda triton, t: triton.is_model_ready(name, headers=self._headers, client_timeout=t),
            request_id,
            deadline,
        )

    def _served(self, name: str, request_id: str, deadline: float | None) -> ServedEnsemble | None:
        try:
            metadata = self._retrying(
                f"{name} metadata",
                lambda triton, t: triton.get_model_metadata(name, headers=self._headers, client_timeout=t),
                request_id,
                deadline,
            )
            config = self._retrying(
                f"{name} config",
                lambda triton, t: triton.get_model_config(name, headers=self._headers, client_timeout=t),
                request_id,
                deadline,
            )
        except NotFoundError:  # Triton's answer for a model it does not know
            return None
        parameters = {key: value.string_value for key, value in config.config.parameters.items()}
        return ServedEnsemble(metadata, config.config.max_batch_size, parameters)

    def _verified_schema(self, request_id: str, deadline: float | None) -> Schema:
        """The server's schema, checked once per client (the first caller checks, others wait)."""
        with self._contract_lock:
            if self._schema is None:
                served = {name: self._served(name, request_id, deadline) for name in CONTRACT_ENSEMBLES}
                self._schema = verify_contract(self.url, served)
            return self._schema

    def _executor(self) -> ThreadPoolExecutor:
        with self._chunks_lock:
            if self._chunks is None:
                self._chunks = ThreadPoolExecutor(self.config.max_concurrent_chunks, thread_name_prefix="aisle-chunks")
            return self._chunks

    def _execute(self, request: AisleRequest[T], timeout_s: float | None, request_id: str | None) -> T:
        deadline = self._deadline(timeout_s)
        request_id = request_id or new_request_id()
        schema = self._verified_schema(request_id, deadline)
        calls = request.calls(schema, request_id)

        def send(call: InferCall) -> grpcclient.InferResult:
            return self._retrying(
                call.model, lambda triton, t: triton.infer(**self._infer_kwargs(call, t)), call.request_id, deadline
            )

        if len(calls) <= 1:
            return request.finish(schema, [send(c) for c in calls], request_id)
        futures = [self._executor().submit(send, call) for call in calls]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        error = next((e for e in (f.exception() for f in futures if f in done) if e is not None), None)
        if error is not None:
            # One chunk failed: the call has failed. Chunks not yet started never start; those on
            # the wire finish in the background and are discarded (a blocking gRPC call cannot be
            # interrupted from another thread).
            for future in pending:
                future.cancel()
            raise error
        return request.finish(schema, [f.result() for f in futures], request_id)
