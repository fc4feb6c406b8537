"""Backoff with full jitter, the Retry-After floor, and when retrying stops."""

from __future__ import annotations

from traceexport.pipeline import RetryPolicy
from traceexport.pipeline.retry import backoff, gives_up

POLICY = RetryPolicy(max_attempts=5, max_age=60.0, initial_backoff=1.0, max_backoff=10.0, multiplier=2.0)


def test_backoff_grows_exponentially_up_to_the_ceiling() -> None:
    """With the largest jitter draw the wait doubles per attempt and stops at max_backoff."""
    waits = [backoff(POLICY, n, 0.999999) for n in range(1, 7)]
    assert [round(w) for w in waits] == [1, 2, 4, 8, 10, 10]


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    """The jitter draw scales the whole ceiling, so a draw of 0 retries at once and 0.5 halfway."""
    assert backoff(POLICY, 3, 0.0) == 0.0
    assert backoff(POLICY, 3, 0.5) == 2.0


def test_retry_after_is_a_floor_never_cut_short() -> None:
    """A backend's Retry-After wins over a shorter jittered wait and never shortens a longer one."""
    assert backoff(POLICY, 1, 0.1, retry_after=7.0) == 7.0
    assert backoff(POLICY, 5, 0.999999, retry_after=0.5) > 9.9


def test_gives_up_on_attempts_or_age() -> None:
    """An item is dead-lettered at max_attempts failures or once its first attempt is max_age old."""
    assert not gives_up(POLICY, 4, first_attempt=100.0, now=110.0)
    assert gives_up(POLICY, 5, first_attempt=100.0, now=110.0)
    assert gives_up(POLICY, 1, first_attempt=100.0, now=160.0)


def test_a_record_retried_a_thousand_times_and_more_waits_the_longest_backoff() -> None:
    """Past 1,024 attempts (a config's large max_attempts, the hook's endless retries to its sidecar) the doubling
    overflows a float: the wait is max_backoff, it used to raise OverflowError in the sink's worker."""
    many = RetryPolicy(max_attempts=10**9, max_age=float("inf"), initial_backoff=1.0, max_backoff=60.0)
    assert backoff(many, 1100, 0.5) == 30.0
    assert backoff(many, 10**8, 0.999999) > 59.9
    assert not gives_up(many, 10**8, first_attempt=0.0, now=10**9)
