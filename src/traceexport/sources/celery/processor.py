"""Handle one ``process_trace_tasks`` call: load the file, hand the record to the pipeline, ack, delete.

The order is what makes it lossless: ``accept()`` (durable on return) → acknowledge the message →
delete the file. A crash before the acknowledgement leaves the message unacknowledged, so the broker
hands it out again after the visibility timeout and the file is still there; a crash after it leaves
at worst a file behind (never a lost record). Outcomes:

* the file is missing → another consumer already handled it: acknowledge and count;
* the file is not a valid record (e.g. Dify's ``trace_info: null``) → copy it to
  ``failed_prefix + key`` (kept for a human), acknowledge, delete, log one line with the reason;
* the spool is full, or storage / the pipeline fail → wait, then put the message back on the queue
  (never acknowledged), so it is retried later by this or another consumer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from traceexport import _json
from traceexport.errors import RecordError, SpoolFullError
from traceexport.records import Record, record_from_obj
from traceexport.sinks.http import redact
from traceexport.sources.celery.message import TaskRef
from traceexport.sources.storage import Storage, StorageError

log = logging.getLogger("traceexport.sources.celery")

Accept = Callable[[Sequence[Record]], None]

ACCEPTED, MISSING, INVALID, RETRY = "accepted", "missing", "invalid", "retry"


class Stats:
    """Thread-safe counters of what the source did (for metrics and tests)."""

    NAMES = ("accepted", "missing", "invalid", "retry", "bad_message", "unknown_task", "delete_failed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._counts)


class _Episode:
    """Logs the first failure of a kind and the recovery, not every retry in between."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._active = False

    def fail(self, detail: str, level: int = logging.WARNING) -> None:
        with self._lock:
            first, self._active = not self._active, True
        if first:
            log.log(level, "%s: %s; messages stay on the queue and are retried", self.what, detail)

    def ok(self) -> None:
        with self._lock:
            was, self._active = self._active, False
        if was:
            log.info("%s: recovered", self.what)


class TraceFileProcessor:
    """Turns one TaskRef into a delivered record; shared by all consumer threads of a source."""

    def __init__(
        self,
        storage: Storage,
        accept: Accept,
        *,
        failed_prefix: str,
        retry_delay: float,
        stopping: threading.Event,
        stats: Stats,
    ) -> None:
        self.storage = storage
        self.accept = accept
        self.failed_prefix = failed_prefix
        self.retry_delay = retry_delay
        self.stopping = stopping
        self.stats = stats
        self._spool = _Episode("spool full")
        self._storage = _Episode(f"storage {storage.describe()} unavailable")
        self._pipeline = _Episode("pipeline refused records")

    def process(self, ref: TaskRef, ack: Callable[[], None], requeue: Callable[[], None]) -> str:
        """Handle ``ref``; calls exactly one of ``ack`` / ``requeue``; returns the outcome name."""
        try:
            raw = self.storage.load(ref.storage_key)
        except StorageError as exc:
            self._storage.fail(str(exc))
            return self._retry_later(requeue, self.retry_delay)
        self._storage.ok()
        if raw is None:
            ack()
            self.stats.add(MISSING)
            log.info("%s: file not found (handled by another consumer?); acknowledged", ref.describe())
            return MISSING
        try:
            record = parse_file(raw)
        except RecordError as exc:
            return self._invalid(ref, raw, exc.reason, ack, requeue)
        try:
            self.accept([record])
        except SpoolFullError as exc:
            self._spool.fail(str(exc))
            return self._retry_later(requeue, exc.retry_after)
        except RecordError as exc:
            return self._invalid(ref, raw, exc.reason, ack, requeue)
        except Exception as exc:  # the pipeline's own failure must not kill the consumer
            self._pipeline.fail(redact(f"{type(exc).__name__}: {exc}"), logging.ERROR)
            return self._retry_later(requeue, self.retry_delay)
        self._spool.ok()
        self._pipeline.ok()
        ack()
        self.stats.add(ACCEPTED)
        self._delete(ref)
        return ACCEPTED

    def _invalid(
        self, ref: TaskRef, raw: bytes, reason: str, ack: Callable[[], None], requeue: Callable[[], None]
    ) -> str:
        kept = self.failed_prefix + ref.storage_key
        try:
            self.storage.save(kept, raw)
        except StorageError as exc:
            self._storage.fail(str(exc))
            return self._retry_later(requeue, self.retry_delay)
        ack()
        self.stats.add(INVALID)
        log.warning("%s: not a valid record, kept as %s: %s", ref.describe(), kept, reason)
        self._delete(ref)
        return INVALID

    def _delete(self, ref: TaskRef) -> None:
        try:
            self.storage.delete(ref.storage_key)
        except StorageError as exc:
            self.stats.add("delete_failed")
            log.warning("%s: delivered but the file could not be deleted (%s)", ref.describe(), exc)

    def _retry_later(self, requeue: Callable[[], None], delay: float) -> str:
        """Wait ``delay`` (cut short by stop()), then put the message back on the queue."""
        self.stopping.wait(max(delay, 0.0))
        requeue()
        self.stats.add(RETRY)
        return RETRY


def parse_file(raw: bytes) -> Record:
    """The Record in a stored TaskData file; RecordError with a one-line reason otherwise."""
    try:
        text = raw.decode("utf-8-sig")
        obj: Any = _json.loads(text)
    except UnicodeDecodeError as exc:
        raise RecordError(f"file is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except ValueError as exc:  # the fast parser's errors read "<what> at line L column C"
        raise RecordError(f"file is not JSON: {exc}") from exc
    return record_from_obj(obj, raw=text)


__all__ = ["ACCEPTED", "INVALID", "MISSING", "RETRY", "Accept", "Stats", "TraceFileProcessor", "parse_file"]
