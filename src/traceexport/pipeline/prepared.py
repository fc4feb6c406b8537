"""Records re-parsed from the spool, enriched once and shared by every sink's worker.

Sink workers parse the stored envelope with ``record_from_obj`` (so a mapping fix applies on replay),
or read the compact normalised form stored beside it by the same traceexport version, and call the
enricher's ``prepare`` hook. A small LRU keyed by record key holds the prepared record, or
the time until which the enricher asked to wait, so several sinks neither re-parse nor re-enrich it.
Records accepted by this process are seeded into it with the number of sinks they are routed to; an
entry leaves the cache once that many sinks have taken it, so the cache holds only records still on
their way, and in steady state a record is parsed once. The cache is bounded by its records and by the
workflow nodes they carry (:data:`CACHE_NODES`): a record kept for the other sinks holds its run's node spans,
thousands for a long agent. A batch's records are read ahead a part at a time (:meth:`PreparedRecords.read_ahead`),
as the enricher cuts them by the node rows it will read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from traceexport import _json
from traceexport.errors import RecordError
from traceexport.records import Record, record_from_obj
from traceexport.records.compact import record_from_compact

Prepare = Callable[[Record], float | None]
log = logging.getLogger(__name__)
# Workflow nodes the cache's records may carry in all (beyond it the oldest records go, at least one stays):
# records prepared for one sink and kept for the others would otherwise hold a whole batch of wide runs.
CACHE_NODES = 20_000


class _Entry:
    __slots__ = ("nodes", "not_before", "prepared", "record", "remaining")

    def __init__(self, record: Record | None, prepared: bool, not_before: float = 0.0, remaining: int = 0) -> None:
        self.record = record
        self.prepared = prepared
        self.not_before = not_before
        self.remaining = remaining  # sinks still to take this record; 0: unknown (kept until evicted)
        self.nodes = _nodes_of(record)


class PreparedRecords:
    """Parse-and-prepare with a bounded per-key cache (thread-safe)."""

    def __init__(self, prepare: Prepare | None, size: int, sinks: int = 0) -> None:
        self._prepare = prepare
        self._size = size
        self._sinks = sinks  # records not seeded here (read back from the spool) may go to every sink
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._nodes = 0  # the nodes of every record in _cache
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

    def read_ahead(self, items: Sequence[tuple[str, str, bytes | None] | None], now: float) -> Iterator[int]:
        """Let the enricher read what a batch's records need a part at a time; yield the end of each part.

        ``items`` are a batch's (key, envelope, compact form), None for one that needs no preparing (mapped
        ahead). Its records not yet at hand are parsed, the enricher's ``parts`` (if it has one) cuts them
        into parts bounded by what it will read for them (the node rows of wide workflow runs), and each part
        is read ahead (``prefetch``) before its end (an index into ``items``, exclusive) is yielded: the
        caller maps ``items`` up to there, then asks for the next. Only for an enricher with a ``prefetch``
        method and a cache to keep the parsed records in (else one part, nothing read); a record that does
        not parse is left for ``get`` to report, and a failing read-ahead only means each record asks on
        its own.
        """
        read = getattr(self._prepare, "prefetch", None)
        if read is None or not self._size:
            yield len(items)
            return
        positions: list[int] = []
        records: list[Record | None] = []
        for position, item in enumerate(items):
            record = self._unprepared(item, now) if item is not None else None
            if record is not None:
                positions.append(position)
                records.append(record)
        start = 0
        for size in self._parts(records):
            part = [record for record in records[start:start + size] if record is not None]
            records[start:start + size] = [None] * size  # a part's records are let go once it is mapped
            start += size
            try:
                read(part)
            except Exception as exc:  # an optimisation only: never stops delivery
                _read_ahead_failed(exc)
            del part
            yield positions[start - 1] + 1 if start < len(records) else len(items)
        if not records:
            yield len(items)

    def _unprepared(self, item: tuple[str, str, bytes | None], now: float) -> Record | None:
        """The record of ``item`` still to prepare (parsed now if not at hand), or None: prepared already,
        deferred, or not parsing."""
        key, envelope, compact = item
        entry = self._lookup(key)
        if entry is not None and (entry.prepared or (entry.record is None and entry.not_before > now)):
            return None
        if entry is not None and entry.record is not None:
            return entry.record
        try:
            record = _parse(envelope, compact)
        except RecordError:
            return None
        self._put(key, _Entry(record, prepared=False, remaining=self._sinks))
        return record

    def _parts(self, records: Sequence[Record | None]) -> list[int]:
        """The enricher's parts of ``records`` (every size at least one, covering them all), or one part."""
        cut = getattr(self._prepare, "parts", None)
        if cut is None or not records:
            return [len(records)] if records else []
        try:
            sizes = [size for size in cut(records) if size > 0]
        except Exception as exc:  # as a failing read-ahead: each record is then enriched on its own
            _read_ahead_failed(exc)
            return [1] * len(records)
        return sizes if sum(sizes) == len(records) else [len(records)]

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
                self._remove(key)
            elif entry.remaining > 1:
                entry.remaining -= 1

    def _drop(self, key: str) -> None:
        with self._lock:
            self._remove(key)

    def _remove(self, key: str) -> None:
        """Forget ``key`` (the lock held)."""
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._nodes -= entry.nodes

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
            self._remove(key)
            self._cache[key] = entry
            self._nodes += entry.nodes
            while len(self._cache) > self._size or (self._nodes > CACHE_NODES and len(self._cache) > 1):
                self._nodes -= self._cache.popitem(last=False)[1].nodes


def _nodes_of(record: Record | None) -> int:
    """The workflow nodes ``record`` carries (attached by the enricher, or stored with a backfilled record)."""
    derived = record.data.get("derived") if record is not None else None
    nodes = derived.get("nodes") if isinstance(derived, dict) else None
    return len(nodes) if isinstance(nodes, list) else 0


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


def _read_ahead_failed(exc: Exception) -> None:
    """One line for a read-ahead (or its cutting into parts) that failed: an optimisation only."""
    log.warning("enricher read-ahead failed (%s: %s); each record is enriched on its own", type(exc).__name__, exc)

