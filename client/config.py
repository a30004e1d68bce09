"""Everything that tunes a client, in validated dataclasses, each option with its trade-off.

Why dataclasses validated at construction: a wrong option (a negative backoff, a certificate path
that does not exist) should fail where it is written, naming the option, not minutes later inside
a call as an opaque gRPC error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import ConfigError

CompressionAlgorithm = Literal["gzip", "deflate"]


def _require(condition: bool, option: str, value: object, rule: str) -> None:
    if not condition:
        raise ConfigError(f"{option}={value!r}: must be {rule}")


@dataclass(frozen=True)
class RetryConfig:
    """Retries of UNAVAILABLE and RESOURCE_EXHAUSTED answers (every aisle call is an idempotent read).

    max_attempts: attempts per request, the first included (1 disables retries). More attempts ride
        out longer outages at the cost of a longer wait before a real outage is reported.
    initial_backoff_s / max_backoff_s / backoff_multiplier: the pause before attempt k+1 is
        min(max_backoff_s, initial_backoff_s * backoff_multiplier**(k-1)), then jittered. Short
        first pauses recover fast from blips; the cap bounds how stale a recovered call is.
    jitter: fraction of each pause that is randomised (0 = none, 1 = "full jitter": uniform in
        [0, pause]). Jitter keeps many clients that failed together from retrying together.
    total_timeout_s: no attempt starts later than this after the first one, whatever the attempt
        count; None leaves only max_attempts and the call's deadline as bounds.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.5
    total_timeout_s: float | None = 30.0

    def __post_init__(self) -> None:
        _require(self.max_attempts >= 1, "retry.max_attempts", self.max_attempts, ">= 1")
        _require(self.initial_backoff_s >= 0, "retry.initial_backoff_s", self.initial_backoff_s, ">= 0")
        _require(
            self.max_backoff_s >= self.initial_backoff_s,
            "retry.max_backoff_s",
            self.max_backoff_s,
            f">= initial_backoff_s ({self.initial_backoff_s})",
        )
        _require(self.backoff_multiplier >= 1, "retry.backoff_multiplier", self.backoff_multiplier, ">= 1")
        _require(0 <= self.jitter <= 1, "retry.jitter", self.jitter, "in [0, 1]")
        _require(
            self.total_timeout_s is None or self.total_timeout_s >= 0,
            "retry.total_timeout_s",
            self.total_timeout_s,
            ">= 0 or None",
        )


@dataclass(frozen=True)
class TlsConfig:
    """TLS for the gRPC channel (the server runs with --grpc-use-ssl=true).

    root_certificates: PEM file of the CA (or the self-signed certificate) that signed the server's
        certificate; None trusts the system roots.
    private_key / certificate_chain: the client's key and certificate, for servers that require
        client authentication (--grpc-use-ssl-mutual); give both or neither.
    target_name_override: the host name to check the server certificate against when it differs
        from the host in `url` (e.g. connecting by IP to a certificate issued for a name).
    """

    root_certificates: Path | None = None
    private_key: Path | None = None
    certificate_chain: Path | None = None
    target_name_override: str | None = None

    def __post_init__(self) -> None:
        for option in ("root_certificates", "private_key", "certificate_chain"):
            path = getattr(self, option)
            if path is not None:
                object.__setattr__(self, option, Path(path))
                _require(Path(path).is_file(), f"tls.{option}", str(path), "an existing PEM file")
        _require(
            (self.private_key is None) == (self.certificate_chain is None),
            "tls.private_key",
            str(self.private_key),
            "given together with tls.certificate_chain (mutual TLS needs both)",
        )

    def pem(self, option: Literal["root_certificates", "private_key", "certificate_chain"]) -> bytes | None:
        """The PEM bytes of one file option, as gRPC's credentials take them (None when unset)."""
        path: Path | None = getattr(self, option)
        return None if path is None else path.read_bytes()


@dataclass(frozen=True)
class KeepAliveConfig:
    """HTTP/2 keepalive pings, which detect a dead connection (e.g. behind a load balancer) early.

    time_ms: pause between pings on an idle connection; the default (2**31 - 1) disables pings, as
        in tritonclient. Servers reject pings more frequent than they allow, so lower it only as
        far as the server's own keepalive policy permits.
    timeout_ms: how long to wait for a ping's answer before the connection counts as dead.
    permit_without_calls: ping even with no call in flight (keeps idle connections warm).
    max_pings_without_data: pings allowed without data in between (0 = unlimited).
    """

    time_ms: int = 2**31 - 1
    timeout_ms: int = 20_000
    permit_without_calls: bool = False
    max_pings_without_data: int = 2

    def __post_init__(self) -> None:
        _require(self.time_ms > 0, "keepalive.time_ms", self.time_ms, "> 0")
        _require(self.timeout_ms > 0, "keepalive.timeout_ms", self.timeout_ms, "> 0")
        _require(
            self.max_pings_without_data >= 0, "keepalive.max_pings_without_data", self.max_pings_without_data, ">= 0"
        )


@dataclass(frozen=True)
class ReplicaConfig:
    """How a client with several replicas (endpoints, or a name resolving to several) spreads calls.

    health_interval_s: pause between readiness probes of every replica (server ready and every
        aisle ensemble ready: 1 + 5 small gRPC calls). Shorter notices a draining or restarted
        replica sooner at more probe traffic. Probes run only when there is more than one replica.
    probe_timeout_s: deadline of each probe call; a replica that does not answer counts as not ready.
    eject_s / max_eject_s: a replica whose call failed with a retryable error (unreachable,
        draining, a dead model stub, queue full) gets no calls for eject_s, doubled per consecutive
        failure up to max_eject_s. Readiness cannot show a dead python stub (Triton keeps answering
        ready), so this passive ejection is what keeps such a replica out; shorter brings a
        recovered replica back sooner, longer wastes fewer calls (each retried elsewhere) on a
        broken one.
    resolve_names: resolve each endpoint's host name to all its addresses, one replica each (a
        Kubernetes headless Service), and again every health_interval_s: new addresses join, gone
        ones leave (their idle channels are closed with the client: a call may still be using one).
    """

    health_interval_s: float = 1.0
    probe_timeout_s: float = 1.0
    eject_s: float = 1.0
    max_eject_s: float = 30.0
    resolve_names: bool = False

    def __post_init__(self) -> None:
        for option in ("health_interval_s", "probe_timeout_s", "eject_s"):
            value = getattr(self, option)
            _require(value > 0 and math.isfinite(value), f"replicas.{option}", value, "a positive number of seconds")
        _require(
            self.max_eject_s >= self.eject_s, "replicas.max_eject_s", self.max_eject_s, f">= eject_s ({self.eject_s})"
        )


#: gRPC's own message limit is 4 MiB; a 1,000-candidate cold-start request or a large embedding
#: batch can exceed it, and Triton accepts up to 2 GiB.
MAX_MESSAGE_BYTES = 2**31 - 1


@dataclass(frozen=True)
class ClientConfig:
    """How an AisleClient / AsyncAisleClient talks to one aisle Triton server or several replicas.

    url: "host:port" of the server's gRPC endpoint, or several separated by commas
        ("10.0.0.1:8001,10.0.0.2:8001"): replicas serving the same repository, each call going to
        one of them (see ReplicaConfig and replicas.py).
    timeout_s: default deadline of one call, covering every chunk, retry and backoff of it; a
        call's own `timeout_s=` overrides it. None waits forever, which hides a hung server.
    retry: see RetryConfig.
    tls: see TlsConfig; None for a plaintext channel.
    keepalive: see KeepAliveConfig.
    replicas: see ReplicaConfig.
    compression_algorithm: "gzip" or "deflate" compresses requests; worth it for large text
        batches over slow links, a CPU cost on loopback. None sends them uncompressed.
    headers: sent with every request, e.g. the key of a server started with
        --grpc-restricted-protocol=inference:<key>=<value>.
    max_concurrent_chunks: requests of one call in flight at once when a large input is split into
        chunks of the ensemble's max batch size; more overlaps network and compute, but one call
        then takes more of the server's queue.
    """

    url: str = "127.0.0.1:8001"
    timeout_s: float | None = 30.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    tls: TlsConfig | None = None
    keepalive: KeepAliveConfig = field(default_factory=KeepAliveConfig)
    replicas: ReplicaConfig = field(default_factory=ReplicaConfig)
    compression_algorithm: CompressionAlgorithm | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    max_concurrent_chunks: int = 4

    def __post_init__(self) -> None:
        for endpoint in self.endpoints:
            host, _, port = endpoint.rpartition(":")
            _require(
                bool(host) and port.isdigit(),
                "url",
                self.url,
                "'host:port' or several separated by commas (e.g. '127.0.0.1:8001,127.0.0.1:8101')",
            )
        _require(
            self.timeout_s is None or (self.timeout_s > 0 and math.isfinite(self.timeout_s)),
            "timeout_s",
            self.timeout_s,
            "a positive number of seconds or None",
        )
        _require(
            self.compression_algorithm in (None, "gzip", "deflate"),
            "compression_algorithm",
            self.compression_algorithm,
            "'gzip', 'deflate' or None",
        )
        _require(self.max_concurrent_chunks >= 1, "max_concurrent_chunks", self.max_concurrent_chunks, ">= 1")

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The "host:port" endpoints named in `url`, in order, without duplicates."""
        return tuple(dict.fromkeys(part.strip() for part in self.url.split(",") if part.strip())) or ("",)

    def channel_args(self) -> list[tuple[str, int | str]]:
        """gRPC channel options: message limits, keepalive, reconnection and the TLS name override.

        The client passes the whole list to tritonclient, which then ignores its own defaults, so
        the message limits it would otherwise set are repeated here.
        """
        args: list[tuple[str, int | str]] = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", self.keepalive.time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive.timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive.permit_without_calls)),
            ("grpc.http2.max_pings_without_data", self.keepalive.max_pings_without_data),
            # gRPC waits up to 120 s between reconnection attempts by default: after a restart,
            # retries would all fail fast until then. Reconnect at least as often as we retry.
            ("grpc.max_reconnect_backoff_ms", max(100, int(self.retry.max_backoff_s * 1000))),
        ]
        if self.tls is not None and self.tls.target_name_override:
            args.append(("grpc.ssl_target_name_override", self.tls.target_name_override))
        return args
