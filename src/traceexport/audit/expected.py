"""What each sink should hold for a window of Dify's database: per record, the hash of its mapped payloads.

Each record rebuilt from Dify's rows goes the way the delivery path takes it — its envelope as the spool
stores it, parsed back, enriched by the same ``prepare`` hook, routed by the same filters and sampling, mapped
by the sink's mapping — and its payloads are hashed with the ledger's :func:`payload_hash`. A record the
routes do not send to a sink is not expected there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime

from traceexport import _json
from traceexport.audit.reconcile import Expected
from traceexport.errors import RecordError
from traceexport.pipeline.ledger import payload_hash
from traceexport.pipeline.routing import route_matches
from traceexport.pipeline.settings import Route
from traceexport.records import Record, record_from_obj

log = logging.getLogger("traceexport.audit")
UNMAPPABLE = "unmappable"  # a hash no delivery has: a record its mapping refuses is never acknowledged


def day_of(record: Record) -> str:
    """The record's day (UTC), from its start."""
    start = record.data.get("derived", {}).get("start")
    if isinstance(start, datetime):
        when = start if start.tzinfo is None else start.astimezone(UTC)
        return when.date().isoformat()
    return str(start)[:10] if start else "unknown"


def as_delivered(record: Record, prepare: Callable[[Record], float | None] | None) -> Record:
    """The record as a delivery worker sees it: parsed back from its stored envelope, then prepared."""
    again = record_from_obj(_json.loads(_json.dumps(record.envelope)))
    if prepare is not None:
        prepare(again)
    return again


def expected(records: Iterable[Record], routes: Sequence[Route],
             prepare: Callable[[Record], float | None] | None) -> Iterator[Expected]:
    """One :class:`Expected` per record: the sinks it is routed to and the hash each sink's mapping gives."""
    for record in records:
        hashes: dict[str, str] = {}
        wanted = [route for route in routes if route_matches(route, record)]
        if wanted:
            ready = as_delivered(record, prepare)
            for route in wanted:
                try:
                    hashes[route.sink.name] = payload_hash(route.mapping.map(ready))
                except RecordError:
                    hashes[route.sink.name] = UNMAPPABLE
        yield Expected(record_key=record.key, app_id=record.app_id, type=record.type, day=day_of(record),
                       hashes=hashes)
