"""Records re-parsed from the spool, enriched once and shared by every sink's worker.

Sink workers parse the stored envelope with ``record_from_obj`` (so a mapping fix applies on replay)
and call the enricher's ``prepare`` hook. A small LRU keyed by record key holds the prepared record, or
the time until which the enricher asked to wait, so several sinks neither re-parse nor re-enrich it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from traceexport.errors import RecordError
from traceexport.records import Record, record_from_obj

Prepare = Callable[[Record], float | None]
log = logging.getLogger(__name__)


class PreparedRecords:
    """Parse-and-prepare with a bounded per-key cache (thread-safe)."""

    def __init__(self, prepare: Prepare | None, size: int, shared: bool) -> None:
        self._prepare = prepare
        self._size = size if (shared or prepare is not None) else 0
        self._cache: OrderedDict[str, Record | float] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, envelope: str, now: float | None = None) -> Record | float:
        """The ready record, or the epoch time before which it must not be tried (deferred).

        Raises RecordError when the stored envelope no longer parses.
        """
        now = time.time() if now is None else now
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if isinstance(cached, Record):
            return cached
        if cached is not None and cached > now:
            return cached
        record = _parse(envelope)
        if self._prepare is not None:
            wait = self._call_prepare(record)
            if wait is not None and wait > 0:
                self._put(key, now + wait)
                return now + wait
        self._put(key, record)
        return record

    def _call_prepare(self, record: Record) -> float | None:
        assert self._prepare is not None
        try:
            return self._prepare(record)
        except RecordError:
            raise
        except Exception as exc:  # the enricher's failure must not stop delivery: send unenriched
            log.warning("enricher failed for record %s (%s: %s); delivering it unenriched",
                        record.key, type(exc).__name__, exc)
            return None

    def _put(self, key: str, value: Record | float) -> None:
        if not self._size:
            return
        with self._lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)


def _parse(envelope: str) -> Record:
    try:
        obj = json.loads(envelope)
    except json.JSONDecodeError as exc:
        raise RecordError(f"stored envelope is not JSON: {exc.msg}") from exc
    return record_from_obj(obj)
