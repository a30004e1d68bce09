"""Several replicas behind one client: which replica each attempt goes to, and which are healthy.

Why a picker of our own rather than gRPC's `round_robin` policy: gRPC's policy knows only the state
of a connection, and a Triton replica can keep its connection open while it is useless to us:
draining (ensembles unloaded: NOT_FOUND), or with a dead python stub (INTERNAL "Stub process ... is
not healthy" while /v2/health/ready still answers true). The pool combines two signals:

- active: Triton's readiness (the server and every aisle ensemble), probed by the clients every
  `ReplicaConfig.health_interval_s`; a replica that is not ready gets no calls until it is again;
- membership: with `resolve_names`, the names are resolved again every probe round, so pods that
  join a headless Service get calls and pods that leave stop getting them (their channels close at
  the first probe round that finds no attempt still under way on them);
- passive: a replica whose call failed with a retryable error is ejected for `eject_s`, doubled per
  consecutive failure up to `max_eject_s` (Envoy's outlier detection). This is the only signal for
  a dead stub. A burst of concurrent failures of one replica counts once.

Within one call, every retry goes to a replica the call has not tried yet while a healthy one is
left (a `Route`); retry.py then retries at once instead of backing off. Calls are spread round-robin
over the healthy replicas.

Pure state, no I/O: the sync client probes from a thread and the async one from a task, both
driving this object. Its lock is never held across I/O, so it is safe inside an event loop.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .config import ReplicaConfig
from .errors import AisleClientError, ConfigError
from .retry import RETRYABLE

C = TypeVar("C")


@dataclass(frozen=True)
class Endpoint:
    """One replica's address, and the host name its TLS certificate is checked against.

    tls_name is the configured host name when `address` was resolved from it (the certificate is
    issued for the name, not for each pod's IP); None when the address is used as given.
    """

    address: str
    tls_name: str | None = None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def resolve_endpoints(endpoints: Sequence[str], *, resolve_names: bool) -> list[Endpoint]:
    """The replicas named by `endpoints`: each as given, or each host name expanded to its addresses."""
    resolved: dict[str, Endpoint] = {}
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not resolve_names or _is_ip(host):
            resolved.setdefault(endpoint, Endpoint(endpoint))
            continue
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ConfigError(
                f"url={endpoint!r}: host {host!r} does not resolve ({e}); "
                "fix the name or set replicas.resolve_names=False"
            ) from e
        for family, _, _, _, sockaddr in infos:
            ip = str(sockaddr[0])
            address = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
            resolved.setdefault(address, Endpoint(address, tls_name=host))
    return list(resolved.values())


@dataclass
class Replica(Generic[C]):
    """One replica's connection and health.

    ready: the last readiness probe's answer (optimistic until the first probe).
    ejected_until: monotonic time before which the replica gets no calls after a failure.
    failures: consecutive failed calls (reset by a success); each doubles the next ejection.
    in_flight: attempts under way on its connection (a replica that left closes once none is).
    """

    address: str
    connection: C
    ready: bool = True
    ejected_until: float = 0.0
    failures: int = 0
    in_flight: int = 0

    def healthy(self, now: float) -> bool:
        return self.ready and now >= self.ejected_until


class ReplicaPool(Generic[C]):
    """The replicas of one client, their health, and the round-robin position."""

    def __init__(
        self, replicas: Sequence[Replica[C]], config: ReplicaConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not replicas:
            raise ConfigError("a client needs at least one replica endpoint")
        self._replicas = list(replicas)
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._next = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._replicas)

    @property
    def replicas(self) -> list[Replica[C]]:
        """The current members (a copy: membership may change while the caller iterates)."""
        with self._lock:
            return list(self._replicas)

    @property
    def probes_needed(self) -> bool:
        """Probes matter when there is another replica to send calls to, or names to resolve again."""
        return len(self) > 1 or self.config.resolve_names

    def reconcile(self, endpoints: Sequence[Endpoint], connect: Callable[[Endpoint], C]) -> list[Replica[C]]:
        """Make the replicas at `endpoints` the members: new addresses join (connected, ready until a
        probe says otherwise), vanished ones leave. Returns those that left: attempts may still be
        under way on them, so the caller closes each once `idle` says so. An empty `endpoints`
        changes nothing."""
        wanted = {e.address: e for e in endpoints}
        if not wanted:
            return []
        current = {r.address for r in self.replicas}
        joined = [Replica(address, connect(e)) for address, e in wanted.items() if address not in current]
        with self._lock:
            left = [r for r in self._replicas if r.address not in wanted]
            self._replicas = [r for r in self._replicas if r.address in wanted] + joined
            self._next %= len(self._replicas)
        return left

    def route(self) -> Route[C]:
        """The replica choices of one call (each retry on a replica the call has not tried)."""
        return Route(self)

    def pick(self, tried: set[str]) -> Replica[C]:
        """The next replica round-robin, preferring healthy and untried ones, in that order; the
        attempt counts as under way on it until `release`.

        Falls back to untried unhealthy replicas, then to tried healthy ones, then to any: the
        probes may be stale, and a call must go somewhere (the retry policy bounds the attempts).
        Counting under the same lock as the choice means a replica that left the pool (and can no
        longer be picked) is idle for good once its count reaches zero.
        """
        with self._lock:
            now = self.clock()
            n = len(self._replicas)
            rotation = [(self._next + k) % n for k in range(n)]
            tiers: tuple[Callable[[Replica[C]], bool], ...] = (
                lambda r: r.healthy(now) and r.address not in tried,
                lambda r: r.address not in tried,
                lambda r: r.healthy(now),
                lambda r: True,
            )
            for admits in tiers:
                index = next((i for i in rotation if admits(self._replicas[i])), None)
                if index is not None:
                    self._next = (index + 1) % n
                    self._replicas[index].in_flight += 1
                    return self._replicas[index]
        raise AssertionError("unreachable: the last tier admits every replica")

    def release(self, replica: Replica[C]) -> None:
        """An attempt on `replica` (from `pick`) ended."""
        with self._lock:
            replica.in_flight -= 1

    def idle(self, departed: Sequence[Replica[C]]) -> tuple[list[Replica[C]], list[Replica[C]]]:
        """Split replicas that left the pool into those to close now (no attempt under way) and
        those still in use, to ask about again at the next round."""
        with self._lock:
            return [r for r in departed if r.in_flight == 0], [r for r in departed if r.in_flight > 0]

    def has_healthy_untried(self, tried: set[str]) -> bool:
        with self._lock:
            now = self.clock()
            return any(r.healthy(now) and r.address not in tried for r in self._replicas)

    def failed(self, replica: Replica[C], error: AisleClientError) -> None:
        """Eject a replica after a retryable failure; other errors say nothing about the replica."""
        if not isinstance(error, RETRYABLE):
            return
        with self._lock:
            now = self.clock()
            if now < replica.ejected_until:
                return  # already ejected: one of several calls that failed together
            replica.failures += 1
            pause = self.config.eject_s * 2 ** (replica.failures - 1)
            replica.ejected_until = now + min(self.config.max_eject_s, pause)

    def succeeded(self, replica: Replica[C]) -> None:
        with self._lock:
            replica.failures = 0

    def observe(self, replica: Replica[C], ready: bool) -> None:
        """Record a readiness probe's answer."""
        with self._lock:
            replica.ready = ready

    def healthy_addresses(self) -> list[str]:
        with self._lock:
            now = self.clock()
            return [r.address for r in self._replicas if r.healthy(now)]


@dataclass
class Route(Generic[C]):
    """One call's way through the pool: which replicas it tried, whether another is worth trying."""

    pool: ReplicaPool[C]
    tried: set[str] = field(default_factory=set)

    def pick(self) -> Replica[C]:
        """A replica for the next attempt; once every replica was tried, the round starts again."""
        if len(self.tried) >= len(self.pool):
            self.tried.clear()
        replica = self.pool.pick(self.tried)
        self.tried.add(replica.address)
        return replica

    def can_fail_over(self) -> bool:
        """True when a healthy replica is left that this call has not tried (retry.py: no pause)."""
        return len(self.tried) < len(self.pool) and self.pool.has_healthy_untried(self.tried)

    @contextmanager
    def attempt(self) -> Iterator[Replica[C]]:
        """One attempt: the replica it goes to, for the block; the pool learns how it went."""
        replica = self.pick()
        try:
            yield replica
        except AisleClientError as error:
            self.pool.failed(replica, error)
            raise
        else:
            self.pool.succeeded(replica)
        finally:
            self.pool.release(replica)
