"""The retry policy, in one place for both clients: which errors are retried, how long to pause,
when to give up. (Which replica each attempt goes to is replicas.py's decision.)

Why these rules: every aisle call is a read (embed, score), so repeating it is safe. Only answers
that say "not now" are retried — UNAVAILABLE (server starting, stopping, unreachable) and
RESOURCE_EXHAUSTED (queue full). INVALID_ARGUMENT and the rest would fail the same way again.
Pauses grow exponentially with jitter so a fleet of clients does not hammer a recovering server
in lockstep, and every call stays inside its deadline and the configured total retry time. With
several replicas, a retry that goes to a healthy replica the call has not tried yet starts at once:
the pause is for letting a failed server recover, and the next replica has nothing to recover from.

The policy is a small state object (`Attempts`) that the sync and async loops below drive with
their own clock and sleep; tests inject both, so timing is checked without waiting.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from .config import RetryConfig
from .errors import AisleClientError, DeadlineExceededError, ResourceExhaustedError, UnavailableError

T = TypeVar("T")

#: The only errors worth repeating a request for.
RETRYABLE: tuple[type[AisleClientError], ...] = (UnavailableError, ResourceExhaustedError)


class Failover(Protocol):
    """What the policy asks of a call's replica route (replicas.Route)."""

    def can_fail_over(self) -> bool: ...


@dataclass
class Attempts:
    """The retry state of one request: hands out each attempt's timeout and each pause.

    deadline: absolute `clock()` time by which the request must finish (None = no deadline).
    clock: monotonic seconds; uniform: a random number in [0, 1) for jitter.
    route: the call's replica route; a retry it can send to an untried healthy replica has no pause.
    """

    policy: RetryConfig
    deadline: float | None
    what: str
    request_id: str
    clock: Callable[[], float] = time.monotonic
    uniform: Callable[[], float] = random.random
    route: Failover | None = None
    made: int = 0
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def attempt_timeout_s(self) -> float | None:
        """Count one more attempt and return its gRPC timeout: what is left of the deadline.

        Raises DeadlineExceededError when nothing is left, so no attempt is sent that cannot finish.
        """
        self.made += 1
        if self.deadline is None:
            return None
        left = self.deadline - self.clock()
        if left <= 0:
            raise DeadlineExceededError(
                f"{self.what}: deadline passed before attempt {self.made} could be sent "
                f"({self.clock() - self.started:.3f} s after the first)",
                request_id=self.request_id,
                status="DEADLINE_EXCEEDED",
            )
        return left

    def backoff_s(self) -> float:
        """The jittered pause before the next attempt (attempt `made` + 1)."""
        p = self.policy
        pause = min(p.max_backoff_s, p.initial_backoff_s * p.backoff_multiplier ** (self.made - 1))
        return pause * (1.0 - p.jitter * self.uniform())

    def pause_after(self, error: AisleClientError) -> float:
        """The pause before retrying after `error`; raises the error (annotated) when giving up."""
        if not isinstance(error, RETRYABLE):
            raise error
        pause = 0.0 if self.route is not None and self.route.can_fail_over() else self.backoff_s()
        resume = self.clock() + pause
        reason = None
        if self.made >= self.policy.max_attempts:
            reason = f"retry.max_attempts={self.policy.max_attempts} reached"
        elif self.policy.total_timeout_s is not None and resume - self.started > self.policy.total_timeout_s:
            reason = f"the next attempt would start after retry.total_timeout_s={self.policy.total_timeout_s}"
        elif self.deadline is not None and resume >= self.deadline:
            reason = "the next attempt would start after the call's deadline"
        if reason is None:
            return pause
        if self.made == 1:
            raise error
        raise type(error)(
            f"{error.message}; gave up after {self.made} attempts over {self.clock() - self.started:.1f} s: {reason}",
            request_id=error.request_id,
            status=error.status,
        ) from error


def call_with_retry(send: Callable[[float | None], T], attempts: Attempts, sleep: Callable[[float], None]) -> T:
    """Call `send(timeout_s)` until it succeeds or the policy gives up (blocking)."""
    while True:
        timeout_s = attempts.attempt_timeout_s()
        try:
            return send(timeout_s)
        except AisleClientError as error:
            pause = attempts.pause_after(error)
        sleep(pause)


async def acall_with_retry(
    send: Callable[[float | None], Awaitable[T]], attempts: Attempts, sleep: Callable[[float], Awaitable[None]]
) -> T:
    """Await `send(timeout_s)` until it succeeds or the policy gives up (asyncio)."""
    while True:
        timeout_s = attempts.attempt_timeout_s()
        try:
            return await send(timeout_s)
        except AisleClientError as error:
            pause = attempts.pause_after(error)
        await sleep(pause)
