"""Backoff: exponential with full jitter, never shorter than the backend's ``Retry-After``."""

from __future__ import annotations

import math
import random

from traceexport.pipeline.settings import RetryPolicy


def backoff(policy: RetryPolicy, attempts: int, jitter: float, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt ``attempts + 1``.

    ``jitter`` in [0, 1) scales the exponential ceiling ("full jitter"); one draw is shared by a batch
    so its items come back together. ``retry_after`` is a floor: a throttled backend is never retried sooner.
    """
    try:
        grown = policy.initial_backoff * policy.multiplier ** max(attempts - 1, 0)
    except OverflowError:  # 2.0 ** 1024 and beyond: a record retried that often waits the longest backoff
        grown = math.inf
    ceiling = min(policy.max_backoff, grown)
    delay = jitter * ceiling
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def draw_jitter(rng: random.Random | None = None) -> float:
    """A uniform draw in [0, 1) for :func:`backoff`."""
    return (rng or random).random()


def gives_up(policy: RetryPolicy, attempts: int, first_attempt: float, now: float) -> bool:
    """True when an item that has now failed ``attempts`` times must go to the dead letter."""
    return attempts >= policy.max_attempts or now - first_attempt >= policy.max_age
