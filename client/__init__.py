"""aisle.client: Python gRPC clients for aisle's Triton ensembles (search, recommendation, embeddings).

    from aisle.client import AisleClient, Filters
    with AisleClient("127.0.0.1:8001") as client:  # or "host1:8001,host2:8001": replicas
        found = client.search("running shoes", top_k=5, filters=Filters(max_price=80))
        result = client.rank("running shoes", [12, 7, 301], top_k=2)

Installs with tritonclient[grpc] and numpy only. Names are imported on first access, so that
`aisle --help` (which imports the `aisle.client.cli` command module) does not pay for loading gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, for type checkers; `as` marks them as re-exported
    from aisle.retrieval.filters import Filters as Filters

    from .async_client import AsyncAisleClient as AsyncAisleClient
    from .config import ClientConfig as ClientConfig
    from .config import KeepAliveConfig as KeepAliveConfig
    from .config import ReplicaConfig as ReplicaConfig
    from .config import RetryConfig as RetryConfig
    from .config import TlsConfig as TlsConfig
    from .errors import AisleClientError as AisleClientError
    from .errors import CancelledError as CancelledError
    from .errors import ConfigError as ConfigError
    from .errors import DeadlineExceededError as DeadlineExceededError
    from .errors import InvalidInputError as InvalidInputError
    from .errors import NotFoundError as NotFoundError
    from .errors import PermissionDeniedError as PermissionDeniedError
    from .errors import ResourceExhaustedError as ResourceExhaustedError
    from .errors import SchemaMismatchError as SchemaMismatchError
    from .errors import ServerError as ServerError
    from .errors import UnavailableError as UnavailableError
    from .results import RankResult as RankResult
    from .results import SearchResult as SearchResult
    from .results import ServerInfo as ServerInfo
    from .sync_client import AisleClient as AisleClient

_EXPORTS = {
    "AisleClient": "sync_client",
    "AsyncAisleClient": "async_client",
    "ClientConfig": "config",
    "KeepAliveConfig": "config",
    "ReplicaConfig": "config",
    "RetryConfig": "config",
    "TlsConfig": "config",
    "RankResult": "results",
    "SearchResult": "results",
    # aisle.retrieval's Filters, through the module that builds search requests from it.
    "Filters": "requests",
    "ServerInfo": "results",
    **dict.fromkeys(
        (
            "AisleClientError",
            "CancelledError",
            "ConfigError",
            "DeadlineExceededError",
            "InvalidInputError",
            "NotFoundError",
            "PermissionDeniedError",
            "ResourceExhaustedError",
            "SchemaMismatchError",
            "ServerError",
            "UnavailableError",
        ),
        "errors",
    ),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aisle.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
