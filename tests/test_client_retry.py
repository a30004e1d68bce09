"""The retry policy, timed with an injected clock and sleep (no real waiting)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from aisle.client.config import RetryConfig
from aisle.client.errors import (
    AisleClientError,
    DeadlineExceededError,
    InvalidInputError,
    ResourceExhaustedError,
    ServerError,
    UnavailableError,
)
from aisle.client.retry import Attempts, acall_with_retry, call_with_retry


class FakeTime:
    """A clock that moves only when the code under test sleeps (or a send takes `send_s`)."""

    def __init__(self, send_s: float = 0.0) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.timeouts: list[float | None] = []
        self.send_s = send_s

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def sender(self, outcomes: list[AisleClientError | str]) -> Callable[[float | None], str]:
        """A send() that records its timeout and returns or raises the next outcome."""
        remaining: Iterator[AisleClientError | str] = iter(outcomes)

        def send(timeout_s: float | None) -> str:
            self.timeouts.append(timeout_s)
            self.now += self.send_s
            outcome = next(remaining)
            if isinstance(outcome, AisleClientError):
                raise outcome
            return outcome

        return send


def attempts(
    fake: FakeTime, policy: RetryConfig, *, timeout_s: float | None = None, jitter_draw: float = 0.0
) -> Attempts:
    deadline = None if timeout_s is None else fake.now + timeout_s
    return Attempts(policy, deadline, "rank", "req-1", clock=fake.clock, uniform=lambda: jitter_draw)


def unavailable() -> UnavailableError:
    return UnavailableError("rank: failed to connect", request_id="req-1", status="UNAVAILABLE")


NO_JITTER = RetryConfig(
    max_attempts=6, initial_backoff_s=0.1, max_backoff_s=0.5, backoff_multiplier=2.0, jitter=0.0, total_timeout_s=None
)


def test_pauses_grow_exponentially_and_stop_at_max_backoff() -> None:
    fake = FakeTime()
    with pytest.raises(UnavailableError) as info:
        call_with_retry(fake.sender([unavailable()] * 6), attempts(fake, NO_JITTER), fake.sleep)
    assert fake.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert len(fake.timeouts) == 6
    assert "gave up after 6 attempts" in info.value.message
    assert "retry.max_attempts=6" in info.value.message
    assert info.value.request_id == "req-1"
    assert isinstance(info.value.__cause__, UnavailableError)


def test_jitter_shortens_each_pause_by_at_most_the_jitter_fraction() -> None:
    policy = RetryConfig(max_attempts=3, initial_backoff_s=1.0, max_backoff_s=8.0, jitter=0.5, total_timeout_s=None)
    for draw, expected in ((0.0, [1.0, 2.0]), (0.999, [0.5005, 1.001]), (0.5, [0.75, 1.5])):
        fake = FakeTime()
        with pytest.raises(UnavailableError):
            call_with_retry(fake.sender([unavailable()] * 3), attempts(fake, policy, jitter_draw=draw), fake.sleep)
        assert fake.sleeps == pytest.approx(expected)


def test_resource_exhausted_is_retried_until_the_call_succeeds() -> None:
    fake = FakeTime()
    busy = ResourceExhaustedError("rank: queue full", status="RESOURCE_EXHAUSTED")
    result = call_with_retry(fake.sender([busy, unavailable(), "scores"]), attempts(fake, NO_JITTER), fake.sleep)
    assert result == "scores"
    assert fake.sleeps == pytest.approx([0.1, 0.2])


@pytest.mark.parametrize(
    "error",
    [
        InvalidInputError("rank: CANDIDATE_IDS: unknown id 99", status="INVALID_ARGUMENT"),
        DeadlineExceededError("rank: Deadline Exceeded", status="DEADLINE_EXCEEDED"),
        ServerError("rank: model crashed", status="INTERNAL"),
    ],
    ids=["invalid-argument", "deadline-exceeded", "internal"],
)
def test_errors_other_than_unavailable_and_resource_exhausted_are_never_retried(error: AisleClientError) -> None:
    fake = FakeTime()
    with pytest.raises(type(error)) as info:
        call_with_retry(fake.sender([error, "never reached"]), attempts(fake, NO_JITTER), fake.sleep)
    assert info.value is error
    assert fake.sleeps == [] and len(fake.timeouts) == 1


def test_total_timeout_stops_retrying_before_max_attempts() -> None:
    policy = RetryConfig(max_attempts=100, initial_backoff_s=1.0, max_backoff_s=1.0, jitter=0.0, total_timeout_s=3.5)
    fake = FakeTime()
    with pytest.raises(UnavailableError) as info:
        call_with_retry(fake.sender([unavailable()] * 100), attempts(fake, policy), fake.sleep)
    assert fake.sleeps == [1.0, 1.0, 1.0]
    assert "retry.total_timeout_s=3.5" in info.value.message


def test_each_attempt_gets_what_is_left_of_the_deadline_and_no_retry_starts_after_it() -> None:
    policy = RetryConfig(max_attempts=100, initial_backoff_s=0.3, max_backoff_s=0.3, jitter=0.0, total_timeout_s=None)
    fake = FakeTime(send_s=0.1)
    with pytest.raises(UnavailableError) as info:
        call_with_retry(fake.sender([unavailable()] * 100), attempts(fake, policy, timeout_s=1.0), fake.sleep)
    # attempts start at 0.0, 0.4, 0.8 (0.1 s each, 0.3 s pauses); after the third, 0.9 + 0.3 > 1.0
    assert fake.timeouts == pytest.approx([1.0, 0.6, 0.2])
    assert "deadline" in info.value.message


def test_a_deadline_already_passed_raises_deadline_exceeded_without_sending() -> None:
    fake = FakeTime()
    state = attempts(fake, NO_JITTER, timeout_s=1.0)
    fake.now += 2.0
    with pytest.raises(DeadlineExceededError, match="deadline passed before attempt 1"):
        call_with_retry(fake.sender(["never sent"]), state, fake.sleep)
    assert fake.timeouts == []


def test_a_single_attempt_policy_raises_the_first_error_unchanged() -> None:
    fake = FakeTime()
    error = unavailable()
    with pytest.raises(UnavailableError) as info:
        call_with_retry(fake.sender([error]), attempts(fake, RetryConfig(max_attempts=1)), fake.sleep)
    assert info.value is error


def test_the_async_loop_follows_the_same_policy_as_the_sync_one() -> None:
    sync_fake, async_fake = FakeTime(), FakeTime()
    outcomes: list[AisleClientError | str] = [unavailable(), unavailable(), unavailable(), "ok"]
    sync_result = call_with_retry(sync_fake.sender(list(outcomes)), attempts(sync_fake, NO_JITTER), sync_fake.sleep)
    send = async_fake.sender(list(outcomes))

    async def async_send(timeout_s: float | None) -> str:
        return send(timeout_s)

    async_result = asyncio.run(acall_with_retry(async_send, attempts(async_fake, NO_JITTER), async_fake.async_sleep))
    assert sync_result == async_result == "ok"
    assert sync_fake.sleeps == async_fake.sleeps == pytest.approx([0.1, 0.2, 0.4])
