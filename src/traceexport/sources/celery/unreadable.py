"""When to give up on a trace file that is there but cannot be read, so its message does not come back for ever.

A file Dify's storage holds at a message's key but that cannot be read (:class:`UnreadableFileError`: a directory,
a FIFO, a symbolic link, a file too large, a file this process may not read) is retried like any storage failure,
for at most ``timeout`` seconds from the first failure this process saw. Then its message is set aside (kept under
``failed/messages/``, acknowledged; the file stays where it is). A file that is not a regular file, or too large,
can never be read, so the time alone decides. "Permission denied" (or a folder linked out of the storage) can also
be the whole storage's trouble (a sidecar running as another user than Dify), so it is given up on only when some
read succeeded after its first failure: a storage nothing can be read from keeps every message waiting, as in any
outage.

Only this process's own reads count: with several sidecars each keeps its own clock, so the bound holds in each.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from traceexport.sources.storage import UnreadableFileError

FORGET_AFTER = 3600.0  # seconds without another failure after which a key is forgotten (its message left elsewhere)


@dataclass
class _Failing:
    first: float  # monotonic time of the first failure
    last: float  # and of the latest
    told: bool = False  # whether the file's own trouble was logged


@dataclass(frozen=True)
class Verdict:
    """What to do about a file that failed to be read once more."""

    give_up: bool  # set its message aside now
    tell: bool  # log, once, that this file (not the storage) cannot be read: known to be its own trouble only now


class UnreadableFiles:
    """Per storage key, since when it has failed to be read; thread-safe (shared by the consumer threads)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._failing: dict[str, _Failing] = {}
        self._last_read = float("-inf")  # monotonic time of the latest read that worked (a file, or none there)

    def failed(self, error: UnreadableFileError) -> Verdict:
        """Note that ``error.key`` could not be read once more, and say what to do about it."""
        now = time.monotonic()
        with self._lock:
            self._forget_stale(now)
            entry = self._failing.get(error.key)
            if entry is None:
                entry = self._failing[error.key] = _Failing(now, now)
            entry.last = now
            its_own = error.certain or self._last_read > entry.first
            tell, entry.told = its_own and not entry.told, entry.told or its_own
            return Verdict(give_up=its_own and now - entry.first >= self.timeout, tell=tell)

    def read(self, key: str) -> None:
        """``key`` was read (or found missing): the storage works, and the key is no longer failing."""
        with self._lock:
            self._last_read = time.monotonic()
            self._failing.pop(key, None)

    def forget(self, key: str) -> None:
        """``key``'s message was set aside: stop tracking it."""
        with self._lock:
            self._failing.pop(key, None)

    def _forget_stale(self, now: float) -> None:
        stale = [key for key, entry in self._failing.items() if now - entry.last > max(FORGET_AFTER, self.timeout)]
        for key in stale:
            del self._failing[key]


__all__ = ["UnreadableFiles", "Verdict"]
