"""One sink's request budget: token buckets for requests and items, lowered when the backend throttles (AIMD).

A :class:`RateLimiter` holds up to two token buckets. The request bucket refills at the sink's effective
request rate and holds ``burst`` requests; the item bucket refills at ``items_per_second`` and holds one
second of items. A request goes once the request bucket holds a token and the item bucket its items (or is
full, for a request larger than the bucket: the rest becomes a debt the next requests wait out), so over any
stretch of ``T`` seconds a sink sends at most ``burst + R*T`` requests and ``I + I*T`` items (plus, once,
the excess of a request larger than one second of items). Requests are booked in order: each is given the
moment it may go, computed exactly on the rate's ramp, and pays there.

The effective request rate adapts (AIMD): a throttle signal (HTTP 429, a ``Retry-After`` on 503, gRPC
``RESOURCE_EXHAUSTED``) halves it, never below :data:`MIN_RATE` (or the configured rate, if lower), and
empties the request bucket; from then on it climbs back by :data:`RAMP` of its target per second until it
reaches the target again. A sink with ``requests_per_second`` climbs back to it; a sink without one sends
unlimited until its first throttle, then starts from half the rate it was observed sending at over the last
:data:`OBSERVE_WINDOW` seconds, and is unlimited again once it has climbed back to that rate. The item
rate does not adapt. :class:`AimdState` is the adaptive part as plain numbers, so another process (the one
serving ``/metrics``) can compute the current rate from it without asking.

Waiting happens in the calling thread (each sink has its own delivery thread, so one sink's wait never
holds back another); :meth:`RateLimiter.cancel` ends every wait at once with :class:`SendCancelled`.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

MIN_RATE = 0.1  # requests/s: the lowest the adaptive rate goes (the configured rate, if that is lower)
DECREASE = 0.5  # a throttle signal multiplies the effective request rate by this
RAMP = 0.1  # then the rate climbs back by this fraction of its target per second (half to full: 5 s)
OBSERVE_WINDOW = 10.0  # seconds of recent requests that estimate the rate of a sink without a limit
ITEMS_EXTENSION = "traceexport.items"  # httpx request extension: how many items (spans, events) it carries

_CURRENT: contextvars.ContextVar[RateLimiter | None] = contextvars.ContextVar(
    "traceexport_rate_limiter", default=None)


class SendCancelled(httpx.TransportError):  # an httpx error, so every sink's transport handling takes it
    """A request was not sent: its sink is stopping while it waited for its rate limit."""


def is_throttle(status: int, retry_after: bool) -> bool:
    """Whether an HTTP answer asks the sender to slow down: 429, or 503 with ``Retry-After``."""
    return status == 429 or (status == 503 and retry_after)


@dataclass(frozen=True, slots=True)
class AimdState:
    """Where the adaptive request rate stands, as plain numbers: enough to compute it at any later time."""

    anchor: float  # requests/s right after the last decrease; NaN while the rate is not lowered
    since: float  # time.monotonic() of that decrease
    target: float  # the rate the ramp climbs back to
    top: float  # the rate once back there: the configured requests_per_second, or inf (no limit)

    def rate(self, now: float) -> float:
        """The effective requests/s at ``now`` (monotonic seconds); inf means no limit."""
        if math.isnan(self.anchor):
            return self.top
        climbed = self.anchor + RAMP * self.target * max(now - self.since, 0.0)
        return self.top if climbed >= self.target else climbed

    def _ramp_end(self) -> float:
        """When the ramp reaches its target (``since`` if the rate is not lowered or starts there)."""
        if math.isnan(self.anchor) or self.anchor >= self.target:
            return self.since
        return self.since + (self.target - self.anchor) / (RAMP * self.target)

    def earned(self, start: float, end: float) -> float:
        """Requests the rate allows between ``start`` and ``end`` (its integral; inf when unlimited there)."""
        if end <= start:
            return 0.0
        ramp_end = self._ramp_end()
        total = 0.0
        if start < ramp_end:  # the linear part: the trapezoid is exact
            stop = min(end, ramp_end)
            total += (self.rate(start) + self.rate(stop)) / 2 * (stop - start)
        if end > ramp_end:
            total += self.top * (end - max(start, ramp_end))
        return total

    def time_to_earn(self, start: float, amount: float) -> float:
        """Seconds from ``start`` until the rate has allowed ``amount`` requests (0 when unlimited)."""
        if amount <= 0 or math.isinf(self.rate(start)):
            return 0.0
        ramp_end = self._ramp_end()
        if start >= ramp_end:
            return amount / self.top
        slope = RAMP * self.target
        first = self.rate(start)
        on_ramp = (first + self.target) / 2 * (ramp_end - start)
        if amount <= on_ramp:  # solve first*t + slope*t^2/2 = amount
            return (math.sqrt(first * first + 2 * slope * amount) - first) / slope
        return ramp_end - start + (amount - on_ramp) / self.top


def resting(requests_per_second: float | None) -> AimdState:
    """The state of a limiter no throttle has lowered: the configured rate, or no limit."""
    top = requests_per_second if requests_per_second is not None else math.inf
    return AimdState(math.nan, 0.0, top, top)


class TokenBucket:
    """Tokens that accrue up to ``capacity``; taking more than it holds leaves a debt later takers wait out."""

    __slots__ = ("capacity", "tokens")

    def __init__(self, capacity: float) -> None:
        self.capacity = capacity
        self.tokens = capacity

    def accrue(self, amount: float) -> None:
        """Add ``amount`` tokens (what the rate allowed meanwhile), never beyond the capacity."""
        self.tokens = min(self.capacity, self.tokens + amount)

    def missing(self, count: float) -> float:
        """Tokens still to accrue before ``count`` may be taken (a full bucket suffices for a larger count)."""
        return max(min(count, self.capacity) - self.tokens, 0.0)

    def take(self, count: float) -> None:
        """Take ``count`` tokens (going into debt if the bucket holds fewer)."""
        self.tokens -= count


class RateLimiter:
    """The request and item budget of one sink, shared by all its requests; thread-safe."""

    def __init__(self, *, requests_per_second: float | None = None, items_per_second: float | None = None,
                 burst: float = 1.0, adaptive: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.requests_per_second = requests_per_second
        self.items_per_second = items_per_second
        self.adaptive = adaptive
        self.floor = min(MIN_RATE, requests_per_second or MIN_RATE)
        self._clock = clock
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._aimd = resting(requests_per_second)
        self._requests = TokenBucket(max(burst, 1.0))
        self._items = TokenBucket(max(items_per_second, 1.0)) if items_per_second is not None else None
        self._stamp = clock()
        self._recent: deque[float] = deque(maxlen=4096)  # request times within OBSERVE_WINDOW
        self._watcher: Callable[[AimdState], None] | None = None

    # -- asking ----------------------------------------------------------------------------------
    def acquire(self, items: int = 0) -> None:
        """Wait until one request carrying ``items`` items may go; SendCancelled if the sink stops first."""
        if self._cancelled.is_set():
            raise SendCancelled("not sent: the sink is stopping")
        wait = self.reserve(items)
        if wait > 0 and self._cancelled.wait(wait):
            raise SendCancelled("not sent: the sink stopped while it waited for its rate limit")

    def reserve(self, items: int = 0) -> float:
        """Book one request of ``items`` items after those booked before; the seconds to wait before sending it."""
        with self._lock:
            now = self._clock()
            start = max(now, self._stamp)  # after the requests booked so far
            self._advance(start)
            delay = self._aimd.time_to_earn(start, self._requests.missing(1.0))
            if self._items is not None and self.items_per_second is not None:
                delay = max(delay, self._items.missing(float(items)) / self.items_per_second)
            send = start + delay
            self._advance(send)
            self._requests.take(1.0)
            if self._items is not None:
                self._items.take(float(items))
            if self.adaptive:
                self._recent.append(send)
            return send - now

    # -- telling ---------------------------------------------------------------------------------
    def throttled(self) -> None:
        """The backend asked to slow down: halve the request rate (see the module docstring)."""
        if not self.adaptive:
            return
        with self._lock:
            now = self._clock()
            self._advance(now)
            current = self._aimd.rate(now)
            if math.isinf(current):  # no limit so far: start from the rate it was really sending at
                current = self._observed(now)
                target = max(current, self.floor)
            else:
                target = self._aimd.target
            self._aimd = AimdState(max(self.floor, current * DECREASE), now, target, self._aimd.top)
            self._requests.tokens = min(self._requests.tokens, 0.0)
            state, watcher = self._aimd, self._watcher
            if watcher is not None:
                watcher(state)

    def cancel(self) -> None:
        """End every wait now and refuse later ones (the sink is stopping); idempotent."""
        self._cancelled.set()

    # -- reading ---------------------------------------------------------------------------------
    def state(self) -> AimdState:
        """The adaptive request rate's state (see :class:`AimdState`)."""
        with self._lock:
            return self._aimd

    def rate(self) -> float:
        """The effective requests/s now; inf when unlimited."""
        with self._lock:
            return self._aimd.rate(self._clock())

    def watch(self, watcher: Callable[[AimdState], None]) -> None:
        """Call ``watcher`` with the state now and after every change (under the limiter's lock: keep it short)."""
        with self._lock:
            self._watcher = watcher
            watcher(self._aimd)

    # -- inside ----------------------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        """Let the buckets accrue what the rates allowed since the last booking, up to ``now``."""
        elapsed = now - self._stamp
        if elapsed <= 0:
            return
        self._requests.accrue(self._aimd.earned(self._stamp, now))
        if self._items is not None and self.items_per_second is not None:
            self._items.accrue(elapsed * self.items_per_second)
        self._stamp = now

    def _observed(self, now: float) -> float:
        """Requests/s over the last :data:`OBSERVE_WINDOW` seconds (at least one request's worth)."""
        while self._recent and self._recent[0] < now - OBSERVE_WINDOW:
            self._recent.popleft()
        return max(len(self._recent), 1) / OBSERVE_WINDOW


def current() -> RateLimiter | None:
    """The rate limiter of the sink whose export this thread is running, if it has one."""
    return _CURRENT.get()


@contextmanager
def limiting(limiter: RateLimiter) -> Iterator[None]:
    """Within the block, every request this thread sends waits for ``limiter`` and reports throttling to it."""
    token = _CURRENT.set(limiter)
    try:
        yield
    finally:
        _CURRENT.reset(token)


__all__ = ["DECREASE", "ITEMS_EXTENSION", "MIN_RATE", "OBSERVE_WINDOW", "RAMP", "AimdState", "RateLimiter",
           "SendCancelled", "TokenBucket", "current", "is_throttle", "limiting", "resting"]
