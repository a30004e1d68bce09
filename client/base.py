"""What the sync and async clients share, so they differ only in how they wait for the network.

Configuration, connection options, the replica pool, per-call deadlines, each request's retry
state, the arguments of every Triton call and the translation of tritonclient's exceptions live here; the request
objects (requests.py) hold the per-method logic. AisleClient and AsyncAisleClient add only the
blocking or awaiting I/O loops.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from tritonclient.utils import InferenceServerException

from aisle.schema import Schema

from .config import ClientConfig
from .contract import CONTRACT_ENSEMBLES
from .errors import ConfigError, InvalidInputError, from_triton
from .replicas import Endpoint, Replica, ReplicaPool, Route, resolve_endpoints
from .requests import InferCall
from .results import ServerInfo
from .retry import Attempts

#: Pause between readiness probes in wait_until_ready: short enough to notice readiness quickly,
#: long enough not to load a server that is busy loading models.
READY_POLL_S = 0.25

C = TypeVar("C")


@contextmanager
def translated(what: str, request_id: str | None) -> Iterator[None]:
    """Re-raise tritonclient's exceptions inside the block as the client's typed errors."""
    try:
        yield
    except InferenceServerException as e:
        raise from_triton(e, request_id=request_id, what=what) from e


class ClientBase:
    """Configuration and per-call bookkeeping common to both clients."""

    _schema: Schema | None

    def __init__(self, url: str | None, config: ClientConfig | None) -> None:
        config = config or ClientConfig()
        self.config = config if url is None else replace(config, url=url)
        #: The server's schema (its embedding size and limits) once its ensembles were checked at the
        #: first call (see contract.py); None before.
        self._schema = None
        self._headers = dict(self.config.headers) or None

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def schema(self) -> Schema | None:
        """The server's verified schema (embedding size, ServingLimits) after the first call; None before."""
        return self._schema

    def _endpoints(self) -> list[Endpoint]:
        """url's endpoints, host names resolved to every address if configured."""
        return resolve_endpoints(self.config.endpoints, resolve_names=self.config.replicas.resolve_names)

    def _pool_of(self, connect: Callable[[Endpoint], C]) -> ReplicaPool[C]:
        """One connection per replica endpoint."""
        return ReplicaPool([Replica(e.address, connect(e)) for e in self._endpoints()], self.config.replicas)

    def _members_now(self) -> list[Endpoint]:
        """With resolve_names, the endpoints the names resolve to now (this blocks on DNS); [] otherwise.

        A failed resolution (a DNS hiccup) gives [], which keeps the current members (ReplicaPool.
        reconcile) rather than dropping them all.
        """
        if not self.config.replicas.resolve_names:
            return []
        try:
            return self._endpoints()
        except ConfigError:
            return []

    def _connection_kwargs(self, endpoint: Endpoint) -> dict[str, Any]:
        """tritonclient constructor arguments for one replica: TLS credentials, every channel option.

        A replica resolved from a host name checks the server certificate against that name.
        """
        tls = self.config.tls
        creds = (
            None
            if tls is None
            else grpc.ssl_channel_credentials(
                root_certificates=tls.pem("root_certificates"),
                private_key=tls.pem("private_key"),
                certificate_chain=tls.pem("certificate_chain"),
            )
        )
        args = self.config.channel_args()
        if tls is not None and endpoint.tls_name and not tls.target_name_override:
            args.append(("grpc.ssl_target_name_override", endpoint.tls_name))
        return {"url": endpoint.address, "creds": creds, "channel_args": args}

    def _deadline(self, timeout_s: float | None) -> float | None:
        """Absolute monotonic deadline of a call: its own timeout_s, else the configured default."""
        if timeout_s is not None and not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise InvalidInputError(f"timeout_s = {timeout_s!r}: must be a positive number of seconds")
        timeout = self.config.timeout_s if timeout_s is None else timeout_s
        return None if timeout is None else time.monotonic() + timeout

    def _attempts(self, what: str, request_id: str, deadline: float | None, route: Route[Any]) -> Attempts:
        return Attempts(self.config.retry, deadline, what, request_id, route=route)

    def _infer_kwargs(self, call: InferCall, timeout_s: float | None) -> dict[str, Any]:
        """Keyword arguments of tritonclient's `infer` (the same on the sync and aio clients)."""
        return {
            "model_name": call.model,
            "inputs": call.inputs,
            "outputs": call.outputs,
            "request_id": call.request_id,
            "client_timeout": timeout_s,
            "headers": self._headers,
            "compression_algorithm": self.config.compression_algorithm,
        }

    def _probe_timeout_s(self, timeout_s: float | None) -> float | None:
        return self.config.timeout_s if timeout_s is None else timeout_s

    def _server_info(self, metadata: Any, schema: Schema, ready: Mapping[str, bool]) -> ServerInfo:
        return ServerInfo(
            url=self.url,
            name=metadata.name,
            version=metadata.version,
            extensions=tuple(metadata.extensions),
            embedding_dim=schema.embedding_dim,
            ensembles_ready={name: ready[name] for name in CONTRACT_ENSEMBLES},
        )
