"""The console's JSON API (``/api/...``, documented in docs/console-api.md): status, history, dead letters,
playground. Each method takes the parsed request and returns a JSON-compatible answer, or raises
:class:`RequestError` with the status to send; HTTP itself is :mod:`.server`'s."""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Callable, Mapping
from typing import Any

from traceexport import __version__
from traceexport.console.history import LATENCIES, History, figures_of
from traceexport.console.playground import Playground, builtin_mapping
from traceexport.errors import RequestError
from traceexport.pipeline import deadletter

RATE_WINDOWS = {"rate_1m": 60.0, "rate_5m": 300.0}
LATENCY_WINDOW = 300.0
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_IDS = 10_000
_ID_CHUNK = 500  # ids per SQL statement (SQLite's variable limit)
_NO_LATENCY = {"p50_seconds": None, "p95_seconds": None, "count": 0}


def _number(query: Mapping[str, list[str]], name: str, *, minimum: float = 0.0) -> float | None:
    values = query.get(name)
    if not values or not values[0].strip():
        return None
    try:
        value = float(values[0])
    except ValueError:
        raise RequestError(f"{name} must be a number, not {values[0]!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise RequestError(f"{name} must be a number of at least {minimum:g}")
    return value


def _after_id(query: Mapping[str, list[str]]) -> int:
    """``after_id``: the last id of the page before (0 or absent: from the start)."""
    values = query.get("after_id")
    if not values or not values[0].strip():
        return 0
    try:
        after_id = deadletter.parse_id(values[0])
    except ValueError:
        after_id = -1
    if after_id != 0 and not deadletter.is_id(after_id):
        raise RequestError(f"after_id must be a dead-letter id (0 to {deadletter.MAX_ID}), not {values[0]!r}")
    return after_id


def _ids(body: Any) -> list[int]:
    """The ``ids`` of a replay or purge body: one or more entry ids."""
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise RequestError('the body must be {"ids": [id, ...]} with one id or more')
    wrong = next((i for i in ids if not deadletter.is_id(i)), None)
    if wrong is not None:
        raise RequestError(f"no dead letter can have id {wrong}: ids are whole numbers from 1 to {deadletter.MAX_ID}")
    if len(ids) > MAX_IDS:
        raise RequestError(f"at most {MAX_IDS} ids at a time")
    return sorted(set(ids))


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[i:i + _ID_CHUNK] for i in range(0, len(ids), _ID_CHUNK)]


class ConsoleApi:
    """What the console's page and scripts ask of a running daemon's pipeline."""

    def __init__(self, pipeline: Any, sink_types: Mapping[str, str], *, history: History, playground: Playground,
                 ready: Callable[[], str | None] = lambda: None, clock: Callable[[], float] = time.time) -> None:
        self.pipeline = pipeline
        self.sink_types = dict(sink_types)
        self.history = history
        self.playground = playground
        self.ready = ready
        self._clock = clock

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Per sink: counters, rates, queue, latency (last five minutes and since the spool began), rate limit."""
        snap = self.pipeline.metrics(with_histograms=True)
        now = self._clock()
        current = figures_of(snap)
        limits = self.pipeline.rate_limits()
        reason = self.ready()
        sinks = []
        for name, entry in snap["sinks"].items():
            figures = current[name]
            window = self.history.latency(name, figures, LATENCY_WINDOW, now)
            total = {short: entry["latency"].get(f"{short}_latency", _NO_LATENCY) for short in LATENCIES}
            limit = limits.get(name, math.inf)
            sinks.append({
                "name": name, "type": self.sink_types.get(name, "?"),
                **{key: self.history.rate(name, figures, seconds, now) for key, seconds in RATE_WINDOWS.items()},
                **{key: entry[key] for key in ("accepted", "exported", "retried", "dead_lettered", "dropped",
                                               "queue_depth", "oldest_pending_age_seconds", "requests")},
                "dead_letters": int(snap["dead_letters"].get(name, 0)),
                "latency": window if window is not None else total,
                "latency_total": total,
                "rate_limit": {"requests_per_second": None if math.isinf(limit) else round(limit, 3)},
            })
        return {"time": now, "version": __version__, "ready": reason is None, "not_ready_reason": reason,
                "spool": {"dir": snap["spool"], "bytes": snap["spool_bytes"],
                          "max_bytes": snap.get("spool_max_bytes"), "records": snap["records"]},
                "sinks": sinks}

    def history_points(self) -> dict[str, Any]:
        return {"interval_seconds": self.history.interval, "points": self.history.points()}

    # -- dead letters ----------------------------------------------------------------------------
    def dead_letters(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        """The entries the filters match, oldest first, a page at a time."""
        now = self._clock()
        sink = (query.get("sink") or [""])[0] or None
        reason = (query.get("reason") or [""])[0] or None
        min_age, max_age = _number(query, "min_age"), _number(query, "max_age")
        limit = int(_number(query, "limit", minimum=1) or DEFAULT_LIMIT)
        after_id = _after_id(query)
        filters: dict[str, Any] = {"reason": reason, "since": None if max_age is None else now - max_age,
                                   "before": None if min_age is None else now - min_age}
        spool = self.pipeline.spool
        entries = deadletter.list_entries(spool, sink, after_id=after_id, limit=min(limit, MAX_LIMIT), **filters)
        return {"entries": [e.as_dict() for e in entries], "total": deadletter.count(spool, sink, **filters),
                "sinks": list(self.pipeline.sink_names)}

    def dead_letter(self, entry_id: str) -> dict[str, Any]:
        """One entry with its record."""
        try:
            wanted = deadletter.parse_id(entry_id)
        except ValueError:
            raise RequestError(f"no dead letter {entry_id!r}", status=404) from None
        entry = deadletter.get_entry(self.pipeline.spool, wanted)
        if entry is None:
            raise RequestError(f"no dead letter {entry_id} (replayed or purged?)", status=404)
        data = entry.as_dict()
        data["record"] = data.pop("envelope")
        return data

    def replay(self, body: Any) -> dict[str, Any]:
        """Move the entries back to their sinks' queues; the daemon's delivery sends them now. RequestError
        (409, nothing moved) when some belong to a sink this daemon does not deliver to: moved, they would wait
        in the spool for a sink nobody sends to."""
        ids = _ids(body)
        self._refuse_sinks_not_delivered(ids)
        moved: dict[str, int] = {}
        for chunk in _chunks(ids):
            for sink, n in deadletter.replay(self.pipeline.spool, ids=chunk).items():
                moved[sink] = moved.get(sink, 0) + n
        self.pipeline.wake()
        return {"replayed": moved, "total": sum(moved.values())}

    def _refuse_sinks_not_delivered(self, ids: list[int]) -> None:
        owed: set[str] = set()
        for chunk in _chunks(ids):
            owed.update(deadletter.count_by_sink(self.pipeline.spool, ids=chunk))
        elsewhere = sorted(owed - set(self.pipeline.sink_names))
        if elsewhere:
            names = ", ".join(elsewhere)
            command = (f"traceexport dlq replay --spool {shlex.quote(str(self.pipeline.spool.dir))} "
                       f"--sink {shlex.quote(elsewhere[0])} --config FILE")
            raise RequestError(f"this daemon does not deliver to {names} (not in its config): nothing was "
                               f"replayed; leave out their entries, or deliver them with '{command}' (FILE: a "
                               "config defining that sink), or purge them", status=409)

    def purge(self, body: Any) -> dict[str, Any]:
        """Delete the entries for good."""
        return {"purged": sum(deadletter.purge(self.pipeline.spool, ids=chunk) for chunk in _chunks(_ids(body)))}

    # -- playground ------------------------------------------------------------------------------
    def playground_info(self) -> dict[str, Any]:
        return self.playground.info()

    def playground_mapping(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        return builtin_mapping((query.get("backend") or [""])[0])

    def playground_map(self, body: Any) -> dict[str, Any]:
        return self.playground.map(body)


__all__ = ["ConsoleApi"]
