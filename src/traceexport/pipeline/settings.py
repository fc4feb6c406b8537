"""The values that configure a pipeline: routes, retry policy and spool limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from traceexport.records import Record
from traceexport.sinks.base import Payload, Sink


class Mapping(Protocol):
    """Anything with ``map(record) -> list[Payload]`` (a compiled mapping, or a test stand-in), and a
    ``fingerprint`` naming what it does (None: never mapped ahead, see :mod:`traceexport.pipeline.premapped`)."""

    @property
    def fingerprint(self) -> str | None:
        """Equal for mappings that map every record alike, in any process; None when not known."""
        ...

    def map(self, record: Record, /) -> list[Payload]:
        """The payloads ``record`` becomes; raises RecordError when it cannot be mapped."""
        ...


@dataclass(frozen=True)
class Route:
    """Send records to ``sink`` through ``mapping``, optionally filtered and sampled.

    ``record_types`` and ``app_ids`` keep only the named types / apps (None keeps all). ``sample`` keeps
    that fraction of traces, decided by a hash of ``record.trace_key`` so a trace is kept or dropped whole.
    """

    sink: Sink
    mapping: Mapping
    record_types: frozenset[str] | None = None
    app_ids: frozenset[str] | None = None
    sample: float = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a ``Retry-After`` from the backend is a floor, never cut short.

    An item goes to the dead letter after ``max_attempts`` failed attempts, or when its first attempt is
    older than ``max_age`` seconds, with the last failure's reason.
    """

    max_attempts: int = 20
    max_age: float = 24 * 3600.0
    initial_backoff: float = 1.0
    max_backoff: float = 300.0
    multiplier: float = 2.0


@dataclass(frozen=True)
class PipelineSettings:
    """Spool and delivery settings.

    ``max_bytes`` bounds the spool's files on disk, write-ahead log included; when it is reached
    ``on_full="refuse"`` raises SpoolFullError (back-pressure) and ``"drop_oldest"`` deletes the oldest
    records, counting each drop per sink that still owed it.
    ``fsync`` makes every commit durable against power loss (SQLite ``synchronous=FULL``); without it
    commits still survive a killed process. ``delivery_process`` runs the sink workers in a child
    process (see :mod:`traceexport.pipeline.process`), so ingest and delivery use two cores.
    """

    max_bytes: int = 2 * 1024**3
    on_full: Literal["refuse", "drop_oldest"] = "refuse"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    fsync: bool = True
    poll_interval: float = 0.5
    full_retry_after: float = 5.0
    # Parsed/enriched records kept in memory, shared by sink workers (bounded: RSS matters).
    prepare_cache_size: int = 8192
    # Deliver from a child process on the same spool (a second core); needs a route factory.
    delivery_process: bool = False
    # With a delivery process: store a form for it beside each record (the payloads mapped ahead, or the
    # compact normalised form) while the slowest sink is between these many records behind. It spares the
    # child a parse (and a mapping) at some cost here, so it is worth it only while delivery falls behind
    # ingest, and is left out in an outage's backlog (bounded extra disk).
    compact_min_lag: int = 1_000
    compact_max_lag: int = 20_000
    # Seconds the delivery ledger keeps a row (pipeline/ledger.py); 0: no ledger (nothing written, rows swept).
    ledger_retention: float = 30 * 86400.0
