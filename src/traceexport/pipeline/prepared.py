"""Records re-parsed from the spool, enriched once and shared by every sink's worker.

Sink workers parse the stored envelope with ``record_from_obj`` (so a mapping fix applies on replay),
or read the compact normalised form stored beside it by the same traceexport version, and call the
enricher's ``prepare`` hook. A small LRU keyed by record key holds the prepared record, or
the time until which the enricher asked to wait, so several sinks neither re-parse nor re-enrich it.
Records accepted by this process are seeded into it with the number of sinks they are routed to; an
entry leaves the cache once that many sinks have taken it, so the cache holds only records still on
their way, and in steady state a record is parsed once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from traceexport import _json
from traceexport.errors import RecordError
from traceexport.records import Record, record_from_obj
from traceexport.records.compact import record_from_compact

Prepare = Callable[[Record], float | None]
log = logging.getLogger(__name__)


class _Entry:
    __slots__ = ("not_before", "prepared", "record", "remaining")

    def __init__(self, record: Record | None, prepared: bool, not_before: float = 0.0, remaining: int = 0) -> None:
        self.record = record
        self.prepared = prepared
        self.not_before = not_before
        self.remaining = remaining  # sinks still to take this record; 0: unknown (kept until evicted)


class PreparedRecords:
    """Parse-and-prepare with a bounded per-key cache (thread-safe)."""

    def __init__(self, prepare: Prepare | None, size: int, sinks: int = 0) -> None:
        self._prepare = prepare
        self._size = size
        self._sinks = sinks  # records not seeded here (read back from the spool) may go to every sink
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._prepare_lock = threading.Lock()  # prepare runs once per record, never concurrently on one

    @property
    def enriches(self) -> bool:
        """Whether records pass through an enricher here before they are mapped."""
        return self._prepare is not None

    def seed(self, records: Sequence[Record], fanout: Sequence[int] | None = None) -> None:
        """Remember freshly accepted records (routed to ``fanout[i]`` sinks) so delivery needs no re-parse."""
        for index, record in enumerate(records):
            remaining = fanout[index] if fanout is not None else 0
            self._put(record.key, _Entry(record, prepared=self._prepare is None, remaining=remaining))

    def get(self, key: str, envelope: str, now: float | None = None, compact: bytes | None = None) -> Record | float:
        """The ready record, or the epoch time before which it must not be tried (deferred).

        ``compact`` is the record's stored normalised form, read instead of parsing ``envelope`` when it
        is usable. Raises RecordError when the stored envelope no longer parses.
        """
        now = time.time() if now is None else now
        entry = self._lookup(key)
        if entry is not None and entry.record is not None and entry.prepared:
            self._taken(key, entry)
            return entry.record
        if entry is not None and entry.record is None and entry.not_before > now:
            return entry.not_before
        if self._prepare is None:
            record = entry.record if entry is not None and entry.record is not None else _parse(envelope, compact)
            self._keep_for_others(key, record, entry)
            return record
        with self._prepare_lock:
            entry = self._lookup(key)
            if entry is not None and entry.record is not None and entry.prepared:
                return entry.record
            record = entry.record if entry is not None and entry.record is not None else _parse(envelope, compact)
            wait = self._call_prepare(record)
            if wait is not None and wait > 0:
                remaining = entry.remaining if entry is not None else 0
                self._put(key, _Entry(None, False, now + wait, remaining))
                return now + wait
            self._keep_for_others(key, record, entry)
        return record

    def prefetch(self, items: Sequence[tuple[str, str, bytes | None]], now: float) -> None:
        """Parse the batch's records not yet at hand and let the enricher read what they all need at once.

        ``items`` are (key, envelope, compact form). Only for an enricher with a ``prefetch`` method and a
        cache to keep the parsed records in; a record that does not parse is left for ``get`` to report,
        and a failing read-ahead only means each record asks on its own.
        """
        read_ahead = getattr(self._prepare, "prefetch", None)
        if read_ahead is None or not self._size:
            return
        records: list[Record] = []
        for key, envelope, compact in items:
            entry = self._lookup(key)
            if entry is not None and (entry.prepared or (entry.record is None and entry.not_before > now)):
                continue
            if entry is not None and entry.record is not None:
                records.append(entry.record)
                continue
            try:
                record = _parse(envelope, compact)
            except RecordError:
                continue
            self._put(key, _Entry(record, prepared=False, remaining=self._sinks))
            records.append(record)
        try:
            read_ahead(records)
        except Exception as exc:  # an optimisation only: never stops delivery
            log.warning("enricher read-ahead failed (%s: %s); each record is enriched on its own",
                        type(exc).__name__, exc)

    def _keep_for_others(self, key: str, record: Record, entry: _Entry | None) -> None:
        """This sink took the prepared record; keep it only if other routed sinks still need it."""
        remaining = entry.remaining if entry is not None else self._sinks
        if remaining == 1:
            self._drop(key)
        else:
            self._put(key, _Entry(record, True, remaining=max(remaining - 1, 0)))

    def _taken(self, key: str, entry: _Entry) -> None:
        """One more sink has the record: forget it once every routed sink has."""
        with self._lock:
            if entry.remaining == 1:
                self._cache.pop(key, None)
            elif entry.remaining > 1:
                entry.remaining -= 1

    def _drop(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)

    def _lookup(self, key: str) -> _Entry | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
            return entry

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

    def _put(self, key: str, entry: _Entry) -> None:
        if not self._size:
            return
        with self._lock:
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)


def _parse(envelope: str, compact: bytes | None = None) -> Record:
    if compact is not None:
        record = record_from_compact(compact, envelope)
        if record is not None:
            return record
    try:
        obj = _json.loads(envelope)
    except ValueError as exc:
        raise RecordError(f"stored envelope is not JSON: {exc}") from exc
    return record_from_obj(obj)
