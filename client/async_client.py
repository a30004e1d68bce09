"""AsyncAisleClient: the asyncio client over tritonclient.grpc.aio, same verbs as AisleClient.

Why asyncio: one event loop keeps thousands of calls in flight on one gRPC channel without a
thread each. A large input's chunks are awaited concurrently (at most
`config.max_concurrent_chunks` at once) and reassembled in order.

The aio channels bind to the event loop that is running when they are created, so they are opened
at the first call rather than in `__init__`; create and use a client within one loop. With several
replicas a task of that loop probes their readiness (replicas.py decides what the answers mean).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import InferResult
from tritonclient.utils import InferenceServerException

from aisle.retrieval.filters import Filters
from aisle.schema import EMBED_ITEM, EMBED_QUERY, Schema

from .base import READY_POLL_S, ClientBase, translated
from .config import ClientConfig
from .contract import CONTRACT_ENSEMBLES, ServedEnsemble, verify_contract
from .errors import NotFoundError, UnavailableError
from .replicas import Endpoint, Replica, ReplicaPool
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
from .retry import acall_with_retry

T = TypeVar("T")
#: One Triton call on a replica's aio client, given the attempt's timeout.
Send = Callable[[aioclient.InferenceServerClient, float | None], Awaitable[T]]


class AsyncAisleClient(ClientBase):
    """The asyncio form of AisleClient: the same methods, awaited; see AisleClient for each."""

    def __init__(self, url: str | None = None, *, config: ClientConfig | None = None) -> None:
        super().__init__(url, config)
        self._pool: ReplicaPool[aioclient.InferenceServerClient] | None = None
        #: Replicas whose address left a resolved name and that an attempt still uses: closed when idle.
        self._departed: list[Replica[aioclient.InferenceServerClient]] = []
        self._prober: asyncio.Task[None] | None = None
        self._contract_lock = asyncio.Lock()

    # --- Calls ---------------------------------------------------------------------------------

    async def embed_queries(
        self, texts: Sequence[Text], *, timeout_s: float | None = None, request_id: str | None = None
    ) -> np.ndarray:
        """See AisleClient.embed_queries."""
        return await self._execute(embed_request(EMBED_QUERY, texts), timeout_s, request_id)

    async def embed_items(
        self, texts: Sequence[Text], *, timeout_s: float | None = None, request_id: str | None = None
    ) -> np.ndarray:
        """See AisleClient.embed_items."""
        return await self._execute(embed_request(EMBED_ITEM, texts), timeout_s, request_id)

    async def rank(
        self,
        query: Text,
        candidate_ids: Sequence[int] | np.ndarray,
        user_history_ids: Sequence[int] | np.ndarray = (),
        *,
        top_k: int | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> RankResult:
        """See AisleClient.rank."""
        request = rank_request(query, candidate_ids, user_history_ids, top_k)
        return await self._execute(request, timeout_s, request_id)

    async def rank_cold(
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
        """See AisleClient.rank_cold."""
        request = rank_cold_request(query, candidate_texts, candidate_features, user_history_ids, top_k)
        return await self._execute(request, timeout_s, request_id)

    async def search(
        self,
        query: Text,
        *,
        user_history_ids: Sequence[int] | np.ndarray = (),
        top_k: int = 10,
        filters: Filters | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> SearchResult:
        """See AisleClient.search."""
        request = search_request(query, user_history_ids, top_k, filters)
        return await self._execute(request, timeout_s, request_id)

    async def recommend(
        self,
        user_history_ids: Sequence[int] | np.ndarray,
        *,
        top_k: int = 10,
        filters: Filters | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> SearchResult:
        """See AisleClient.recommend."""
        return await self.search(
            "",
            user_history_ids=user_history_ids,
            top_k=top_k,
            filters=filters,
            timeout_s=timeout_s,
            request_id=request_id,
        )

    # --- Health and metadata -------------------------------------------------------------------

    async def is_ready(self, *, timeout_s: float | None = None) -> bool:
        """See AisleClient.is_ready."""
        probe_s = self._probe_timeout_s(timeout_s)
        answers = await asyncio.gather(*(self._probe(replica, probe_s) for replica in self._replicas().replicas))
        return any(answers)

    async def wait_until_ready(self, timeout_s: float) -> None:
        """See AisleClient.wait_until_ready."""
        deadline = time.monotonic() + timeout_s
        while not await self.is_ready(timeout_s=max(READY_POLL_S, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise UnavailableError(f"server {self.url}: aisle ensembles not ready within {timeout_s} s")
            await asyncio.sleep(READY_POLL_S)

    async def server_info(self, *, timeout_s: float | None = None, request_id: str | None = None) -> ServerInfo:
        """See AisleClient.server_info."""
        deadline = self._deadline(timeout_s)
        request_id = request_id or new_request_id()
        schema = await self._verified_schema(request_id, deadline)
        metadata = await self._retrying(
            "server metadata",
            lambda triton, t: triton.get_server_metadata(headers=self._headers, client_timeout=t),
            request_id,
            deadline,
        )
        ready = {name: await self._ensemble_ready(name, request_id, deadline) for name in CONTRACT_ENSEMBLES}
        return self._server_info(metadata, schema, ready)

    # --- Lifecycle -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the channels and the probe task (if a call opened them)."""
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
            self._prober = None
        if self._pool is not None:
            for replica in self._pool.replicas + self._departed:
                await replica.connection.close()
            self._pool = None
            self._departed = []

    async def __aenter__(self) -> AsyncAisleClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- Internals -----------------------------------------------------------------------------

    def _replicas(self) -> ReplicaPool[aioclient.InferenceServerClient]:
        """The replicas' aio clients (and the probe task), created in the running loop on first use."""
        if self._pool is None:
            self._pool = self._pool_of(self._connect)
            if self._pool.probes_needed:
                self._prober = asyncio.create_task(self._probe_loop(self._pool))
        return self._pool

    async def _retrying(self, what: str, send: Send[T], request_id: str, deadline: float | None) -> T:
        """`await send(replica's aio client, timeout_s)` with typed errors, the replica route and the retry policy."""
        route = self._replicas().route()

        async def attempt(timeout_s: float | None) -> T:
            with route.attempt() as replica, translated(what, request_id):
                return await send(replica.connection, timeout_s)

        return await acall_with_retry(attempt, self._attempts(what, request_id, deadline, route), asyncio.sleep)

    async def _probe(self, replica: Replica[aioclient.InferenceServerClient], timeout_s: float | None) -> bool:
        """See AisleClient._probe."""
        triton = replica.connection
        try:
            ready = await triton.is_server_ready(headers=self._headers, client_timeout=timeout_s)
            for name in CONTRACT_ENSEMBLES:
                ready = ready and await triton.is_model_ready(name, headers=self._headers, client_timeout=timeout_s)
        except InferenceServerException:
            ready = False
        self._replicas().observe(replica, ready)
        return ready

    def _connect(self, endpoint: Endpoint) -> aioclient.InferenceServerClient:
        return aioclient.InferenceServerClient(**self._connection_kwargs(endpoint))

    async def _probe_loop(self, pool: ReplicaPool[aioclient.InferenceServerClient]) -> None:
        """The probe task: members again (resolve_names), then every replica, every health_interval_s,
        until close() cancels it. Name resolution blocks, so it runs in a worker thread."""
        replicas = self.config.replicas
        while True:
            await asyncio.sleep(replicas.health_interval_s)
            endpoints = await asyncio.to_thread(self._members_now) if replicas.resolve_names else []
            self._departed += pool.reconcile(endpoints, self._connect)  # in the loop: aio channels bind to it
            for replica in pool.idle(self._departed)[0]:
                await replica.connection.close()
                self._departed.remove(replica)  # after the close: cancelled mid-close, close() closes it
            await asyncio.gather(*(self._probe(replica, replicas.probe_timeout_s) for replica in pool.replicas))

    async def _ensemble_ready(self, name: str, request_id: str, deadline: float | None) -> bool:
        return await self._retrying(
            f"{name} readiness",
            lambda triton, t: triton.is_model_ready(name, headers=self._headers, client_timeout=t),
            request_id,
            deadline,
        )

    async def _served(self, name: str, request_id: str, deadline: float | None) -> ServedEnsemble | None:
        try:
            metadata = await self._retrying(
                f"{name} metadata",
                lambda triton, t: triton.get_model_metadata(name, headers=self._headers, client_timeout=t),
                request_id,
                deadline,
            )
            config = await self._retrying(
                f"{name} config",
                lambda triton, t: triton.get_model_config(name, headers=self._headers, client_timeout=t),
                request_id,
                deadline,
            )
        except NotFoundError:  # Triton's answer for a model it does not know
            return None
        parameters = {key: value.string_value for key, value in config.config.parameters.items()}
        return ServedEnsemble(metadata, config.config.max_batch_size, parameters)

    async def _verified_schema(self, request_id: str, deadline: float | None) -> Schema:
        """The server's schema, checked once per client (concurrent first calls wait for one check)."""
        if self._schema is None:
            async with self._contract_lock:
                if self._schema is None:
                    served = {name: await self._served(name, request_id, deadline) for name in CONTRACT_ENSEMBLES}
                    self._schema = verify_contract(self.url, served)
        return self._schema

    async def _execute(self, request: AisleRequest[T], timeout_s: float | None, request_id: str | None) -> T:
        deadline = self._deadline(timeout_s)
        request_id = request_id or new_request_id()
        schema = await self._verified_schema(request_id, deadline)
        in_flight = asyncio.Semaphore(self.config.max_concurrent_chunks)

        async def send(call: InferCall) -> InferResult:
            async with in_flight:
                return await self._retrying(
                    call.model,
                    lambda triton, t: triton.infer(**self._infer_kwargs(call, t)),
                    call.request_id,
                    deadline,
                )

        tasks = [asyncio.ensure_future(send(call)) for call in request.calls(schema, request_id)]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one chunk failed: the call has failed, stop its other chunks
                task.cancel()
            raise
        return request.finish(schema, results, request_id)
