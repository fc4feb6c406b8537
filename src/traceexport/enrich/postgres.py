"""Workflow node spans from Dify's PostgreSQL: a read-only reader and the pipeline's ``prepare`` hook.

Dify writes node executions to ``workflow_node_executions``; its own providers read them when the
workflow trace is processed, and lose them when the rows are not committed yet (#36099). The
enricher reads the same rows for each ``workflow`` record and, when they look incomplete, asks the
pipeline to try the record again later (a delay in seconds), up to ``max_wait`` seconds after the
run ended or was first seen. Past that bound the record is exported anyway, flagged, and counted.
A database that is down is treated like missing rows: it never stops export.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from traceexport.enrich.settings import EnrichSettings
from traceexport.errors import ConfigError, Problem
from traceexport.records.nodes import NODE_TEXT_BYTES, PART_NODE_BYTES, PART_NODES, node_parts, nodes_from_rows
from traceexport.records.parse import Record
from traceexport.redaction import redact

log = logging.getLogger("traceexport.enrich")

_QUERY = """
SELECT id, node_execution_id, node_id, node_type, title, index, predecessor_node_id, status, error,
       inputs, process_data, outputs, execution_metadata, elapsed_time, created_at, finished_at
FROM workflow_node_executions
WHERE workflow_run_id = %s AND triggered_from = 'workflow-run'{filters}
ORDER BY created_at, index
"""
# Many runs' rows at once (a batch's workflow records of one app), in the same order within each run.
_MANY_QUERY = """
SELECT workflow_run_id, id, node_execution_id, node_id, node_type, title, index, predecessor_node_id, status,
       error, inputs, process_data, outputs, execution_metadata, elapsed_time, created_at, finished_at
FROM workflow_node_executions
WHERE workflow_run_id = ANY(%s) AND triggered_from = 'workflow-run'{filters}
ORDER BY created_at, index
"""
# The node rows and bytes of their text each of those runs has, to read a batch's runs a bounded part at a time.
_SIZES_QUERY = f"""
SELECT workflow_run_id, count(*) AS nodes, {NODE_TEXT_BYTES} AS bytes
FROM workflow_node_executions
WHERE workflow_run_id = ANY(%s) AND triggered_from = 'workflow-run'{{filters}}
GROUP BY workflow_run_id
"""
_TERMINAL_TYPES = frozenset({"end", "answer"})
_UNFINISHED = frozenset({"running", "pending"})
_PENDING_LIMIT = 10_000
_CACHE_LIMIT = 512
# Node lists the cache holds at most in all (a run of a long agent has thousands): beyond it the oldest go.
_CACHE_NODES = 10_000
_PREFETCH_LIMIT = 4096
COUNTER_NAMES = (
    "queries",
    "database_errors",
    "records_enriched",
    "nodes_attached",
    "retries_scheduled",
    "nodes_missing",
    "nodes_incomplete",
)


class DatabaseUnavailable(Exception):
    """The database could not be reached or the query failed; the message has no secrets."""


class QueryRejected(Exception):
    """The database refused this run's query for good (e.g. a run id that is not a uuid)."""


def _import_psycopg() -> ModuleType:
    try:
        return importlib.import_module("psycopg")
    except ImportError as exc:
        raise ConfigError(
            [Problem("enrich.database_url", "needs psycopg: pip install 'traceexport[postgres]'")],
            title="workflow node enrichment is unavailable",
        ) from exc


class NodeReader:
    """Reads node-execution rows over one reused read-only connection, reconnecting after a failure."""

    def __init__(self, settings: EnrichSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._psycopg = _import_psycopg()
        self._clock = clock
        self._conn: Any = None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._secrets = [p for p in (settings.password(), settings.database_url) if p]

    def fetch(self, workflow_run_id: str, tenant_id: str | None, app_id: str | None,
              workflow_id: str | None = None) -> list[dict[str, Any]]:
        """The run's node rows in execution order; raise DatabaseUnavailable when they cannot be read.

        Tenant, app and workflow narrow the lookup to one entry of the index older Dify schemas have
        (tenant_id, app_id, workflow_id, triggered_from, workflow_run_id): without the workflow, each
        query scans every node row of the app."""
        return self._query(_QUERY, workflow_run_id, tenant_id, app_id, workflow_id)

    def fetch_many(self, run_ids: list[uuid.UUID], tenant_id: str | None, app_id: str | None,
                   workflow_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """The node rows of several runs of one app (and workflow) in one query, by run id; raise as ``fetch``."""
        found: dict[str, list[dict[str, Any]]] = {}
        for row in self._query(_MANY_QUERY, run_ids, tenant_id, app_id, workflow_id):
            found.setdefault(str(row.pop("workflow_run_id")), []).append(row)
        return found

    def sizes(self, run_ids: list[uuid.UUID], tenant_id: str | None, app_id: str | None,
              workflow_id: str | None = None) -> dict[str, tuple[int, int]]:
        """The node rows of several runs of one app (and workflow) counted, by run id: (rows, bytes of their
        text); a run without rows is absent. Raise as ``fetch``."""
        return {str(row["workflow_run_id"]): (int(row["nodes"]), int(row["bytes"] or 0))
                for row in self._query(_SIZES_QUERY, run_ids, tenant_id, app_id, workflow_id)}

    def _query(self, query: str, runs: Any, tenant_id: str | None, app_id: str | None,
               workflow_id: str | None) -> list[dict[str, Any]]:
        filters, params = "", [runs]
        for column, value in (("tenant_id", tenant_id), ("app_id", app_id), ("workflow_id", workflow_id)):
            if value:
                filters += f" AND {column} = %s"
                params.append(value)
        with self._lock:
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    cur.execute(query.format(filters=filters), params)
                    return list(cur.fetchall())
            except self._psycopg.DataError as exc:  # e.g. a run id that is not a uuid: retrying will not help
                raise QueryRejected(self._describe(exc)) from exc
            except self._psycopg.Error as exc:
                if isinstance(exc, self._psycopg.OperationalError) or conn.broken or conn.closed:
                    self._drop()
                raise DatabaseUnavailable(self._describe(exc)) from exc

    def _connection(self) -> Any:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._clock() < self._down_until:
            raise DatabaseUnavailable("database was unreachable moments ago; not retrying yet")
        s, conn = self._settings, None
        try:
            conn = self._psycopg.connect(
                s.database_url,
                autocommit=True,
                connect_timeout=max(1, round(s.connect_timeout)),
                application_name="traceexport-enricher",
                row_factory=importlib.import_module("psycopg.rows").dict_row,
            )
            conn.read_only = True
            conn.execute("SELECT set_config('default_transaction_read_only', 'on', false)")
            timeout_ms = str(int(s.statement_timeout * 1000))
            conn.execute("SELECT set_config('statement_timeout', %s, false)", [timeout_ms])
        except self._psycopg.Error as exc:
            self._down_until = self._clock() + s.reconnect_interval
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            raise DatabaseUnavailable(self._describe(exc)) from exc
        self._conn = conn
        return conn

    def _describe(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return f"{self._settings.describe_target()}: {redact(text, self._secrets)}"

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection can fail; it is gone
                conn.close()

    def close(self) -> None:
        """Close the connection; the reader reconnects if used again."""
        with self._lock:
            self._drop()


class _RateLimitedLog:
    """Logs at most one line per ``interval`` seconds and says how many it held back."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self._interval, self._clock = interval, clock
        self._next, self._held = 0.0, 0

    def warning(self, message: str, *args: Any) -> None:
        now = self._clock()
        if now < self._next:
            self._held += 1
            return
        suffix = f" ({self._held} similar messages suppressed)" if self._held else ""
        self._next, self._held = now + self._interval, 0
        log.warning(message + suffix, *args)


def nodes_look_complete(data: Mapping[str, Any], nodes: list[dict[str, Any]]) -> bool:
    """False when Dify may still be committing rows: none, some running, or a succeeded run with no end."""
    if not nodes or any(n["status"] in _UNFINISHED for n in nodes):
        return False
    if str(data.get("workflow_run_status") or "").lower() == "succeeded":
        return any(n["node_type"] in _TERMINAL_TYPES for n in nodes)
    return True


def attach_nodes(data: dict[str, Any], nodes: list[dict[str, Any]], *, complete: bool) -> None:
    """Set ``derived.nodes`` and the flags a mapping can test: ``nodes_missing``, ``nodes_incomplete``."""
    derived = data.setdefault("derived", {})
    derived["nodes"] = nodes
    derived["nodes_missing"] = not nodes
    derived["nodes_incomplete"] = bool(nodes) and not complete
    derived["nodes_source"] = "postgres"


def enriched(data: dict[str, Any]) -> bool:
    """Whether :func:`attach_nodes` already ran on this record's data (before it was spooled: backfill)."""
    derived = data.get("derived")
    return isinstance(derived, dict) and derived.get("nodes_source") == "postgres"


class PostgresEnricher:
    """The ``prepare`` hook: enrich a workflow record in place, or return seconds to wait for its rows."""

    def __init__(
        self,
        settings: EnrichSettings,
        reader: NodeReader | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self._reader = reader if reader is not None else NodeReader(settings, clock=clock)
        self._clock, self._now = clock, now
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._cache: OrderedDict[str, tuple[float, list[dict[str, Any]]]] = OrderedDict()
        self._cached_nodes = 0  # the nodes of every list in _cache
        self._prefetched: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()  # run id -> rows read ahead
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._db_log = _RateLimitedLog(settings.log_interval, clock)
        self._missing_log = _RateLimitedLog(settings.log_interval, clock)

    def wants(self, record: Record) -> bool:
        """Whether this enricher would change ``record``: a workflow record not enriched yet (the pipeline
        maps any other as soon as it is accepted, when it maps ahead for a delivery process)."""
        return record.type == "workflow" and not enriched(record.data)

    def __call__(self, record: Record) -> float | None:
        """None when the record is ready to map (enriched, or given up on); else a delay in seconds."""
        if not self.wants(record):
            return None
        data = record.data
        run_id = str(data.get("workflow_run_id") or "")
        if not run_id:
            return None
        cached = self._cached(run_id)
        if cached is not None:
            self._finish(record, cached, complete=True)
            return None
        with self._lock:
            rows = self._prefetched.pop(run_id, None)
        if rows is None:
            try:
                rows = self._reader.fetch(run_id, _text(data.get("tenant_id")), _text(record.app_id),
                                          _text(data.get("workflow_id")))
            except QueryRejected as exc:
                self._count("database_errors")
                self._db_log.warning("workflow nodes: cannot query run %s: %s", run_id, exc)
                self._give_up(record, [])
                return None
            except DatabaseUnavailable as exc:
                self._count("database_errors")
                self._db_log.warning("workflow nodes: database unavailable (%s); export goes on", exc)
                rows = []
            finally:
                self._count("queries")
        nodes = nodes_from_rows(rows)
        if nodes and nodes_look_complete(data, nodes):
            self._remember(run_id, nodes)
            self._finish(record, nodes, complete=True)
            return None
        return self._retry_or_give_up(record, nodes)

    def prefetch(self, records: Iterable[Record]) -> None:
        """Read ahead the node rows of these workflow records: one query per app and workflow, not per run.

        Each record's ``__call__`` then takes its rows from here instead of asking the database. Runs
        already cached, read ahead, or whose id is not a UUID are left to ``__call__``; so is every run
        of a query that fails (it asks again on its own, with its own error handling).
        """
        for (tenant_id, app_id, workflow_id), runs in self._runs_to_read(records).items():
            try:
                found = self._reader.fetch_many(runs, tenant_id, app_id, workflow_id)
            except (DatabaseUnavailable, QueryRejected):
                continue
            finally:
                self._count("queries")
            with self._lock:
                for run in runs:
                    self._prefetched[str(run)] = found.get(str(run), [])
                while len(self._prefetched) > _PREFETCH_LIMIT:
                    self._prefetched.popitem(last=False)

    def parts(self, records: Sequence[Record]) -> list[int]:
        """How many of ``records``, in their order, to read ahead (:meth:`prefetch`) and map at a time: parts
        whose runs' node rows stay within :data:`PART_NODES` rows and :data:`PART_NODE_BYTES` of their text (at
        least one record a part; a record with no rows to read joins the part before it), so a batch of runs
        with thousands of nodes each is never held at once.

        One query counts the rows, per app and workflow, when two or more runs are to be read; a count that
        fails leaves one record a part (each read on its own, as when the read-ahead fails).
        """
        groups = self._runs_to_read(records)
        if sum(len(runs) for runs in groups.values()) < 2:
            return [len(records)] if records else []
        sizes: dict[str, tuple[int, int]] = {}
        for (tenant_id, app_id, workflow_id), runs in groups.items():
            try:
                sizes.update(self._reader.sizes(runs, tenant_id, app_id, workflow_id))
            except (DatabaseUnavailable, QueryRejected):
                return [1] * len(records)
            finally:
                self._count("queries")
        return node_parts((sizes.get(str(record.data.get("workflow_run_id") or ""), (0, 0)) for record in records),
                          PART_NODES, PART_NODE_BYTES)

    def _runs_to_read(self, records: Iterable[Record]) -> dict[tuple[str | None, str | None, str | None],
                                                                list[uuid.UUID]]:
        """The runs of ``records`` a read-ahead would query, per (tenant, app, workflow): those this enricher
        wants, with a UUID for an id, neither cached nor read ahead already."""
        groups: dict[tuple[str | None, str | None, str | None], list[uuid.UUID]] = {}
        with self._lock:
            for record in records:
                run_id = str(record.data.get("workflow_run_id") or "") if self.wants(record) else ""
                if not run_id or run_id in self._prefetched or run_id in self._cache:
                    continue
                try:
                    run = uuid.UUID(run_id)
                except ValueError:
                    continue
                app = (_text(record.data.get("tenant_id")), _text(record.app_id), _text(record.data.get("workflow_id")))
                groups.setdefault(app, []).append(run)
        return groups

    def _retry_or_give_up(self, record: Record, nodes: list[dict[str, Any]]) -> float | None:
        now = self._clock()
        with self._lock:
            first, attempts = self._pending.get(record.key, (now, 0))
            self._pending[record.key] = (first, attempts + 1)
            self._pending.move_to_end(record.key)
            while len(self._pending) > _PENDING_LIMIT:
                self._pending.popitem(last=False)
        remaining = self.settings.max_wait - max(now - first, self._since_end(record))
        if remaining <= 0:
            self._give_up(record, nodes)
            return None
        self._count("retries_scheduled")
        delay = min(self.settings.retry_initial * 2**attempts, self.settings.retry_max)
        return float(max(min(delay, remaining), 0.1))

    def _give_up(self, record: Record, nodes: list[dict[str, Any]]) -> None:
        self._finish(record, nodes, complete=False)
        self._count("nodes_incomplete" if nodes else "nodes_missing")
        self._missing_log.warning(
            "workflow run %s exported with %s after waiting up to %ss for its node rows",
            record.data.get("workflow_run_id"),
            f"{len(nodes)} node(s) that look incomplete" if nodes else "no nodes",
            self.settings.max_wait,
        )

    def _finish(self, record: Record, nodes: list[dict[str, Any]], *, complete: bool) -> None:
        attach_nodes(record.data, nodes, complete=complete)
        with self._lock:
            self._pending.pop(record.key, None)
        if nodes:
            self._count("records_enriched")
            self._count("nodes_attached", len(nodes))

    def _since_end(self, record: Record) -> float:
        end = record.data.get("derived", {}).get("end")
        if not isinstance(end, datetime):
            return 0.0
        return max((self._now() - end).total_seconds(), 0.0)

    def _cached(self, run_id: str) -> list[dict[str, Any]] | None:
        with self._lock:
            hit = self._cache.get(run_id)
            if hit is None or hit[0] < self._clock():
                return None
            return [dict(node) for node in hit[1]]

    def _remember(self, run_id: str, nodes: list[dict[str, Any]]) -> None:
        with self._lock:
            old = self._cache.pop(run_id, None)
            self._cached_nodes -= len(old[1]) if old is not None else 0
            self._cache[run_id] = (self._clock() + self.settings.cache_ttl, [dict(node) for node in nodes])
            self._cached_nodes += len(nodes)
            while self._cache and (len(self._cache) > _CACHE_LIMIT or self._cached_nodes > _CACHE_NODES):
                self._cached_nodes -= len(self._cache.popitem(last=False)[1][1])

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def metrics(self) -> dict[str, int]:
        """A snapshot of the counters (see ``COUNTER_NAMES``) plus ``pending``: records being waited on."""
        with self._lock:
            return {**self._counters, "pending": len(self._pending)}

    def close(self) -> None:
        """Close the database connection."""
        self._reader.close()


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
