"""The dead letter: what a sink could not take, kept in the spool with its reason until replayed or purged."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from traceexport.pipeline.spool import Spool, bump

MAX_ID = 2**63 - 1  # SQLite's largest INTEGER: every dead letter's id is in 1..MAX_ID
_ID_TEXT = re.compile(r"[+-]?[0-9]+")
_COLUMNS = ("id, sink, record_key, record_type, app_id, reason, status_code, permanent, attempts, "
            "first_attempt, last_attempt")


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One dead-lettered record for one sink (``envelope`` only when asked for)."""

    id: int
    sink: str
    record_key: str
    record_type: str
    app_id: str | None
    reason: str
    status_code: int | None
    permanent: bool
    attempts: int
    first_attempt: float | None
    last_attempt: float
    envelope: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-compatible form (without the envelope when it was not loaded)."""
        data = asdict(self)
        if self.envelope is None:
            del data["envelope"]
        return data


def is_id(value: object) -> bool:
    """Whether ``value`` is an int a dead letter could have as its id (1 to :data:`MAX_ID`; not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def parse_id(text: str) -> int:
    """A dead-letter id as typed (decimal, ASCII digits, of any size); ValueError with one line otherwise.

    An id no dead letter can have (0, negative, beyond 64 bits) is returned as it is: every function here
    takes any int and finds no entry for it, so callers report it as they report any unknown id.
    """
    if not _ID_TEXT.fullmatch(text.strip()):
        raise ValueError(f"not a dead-letter id: {text!r} (ids are whole numbers, as 'dlq list' shows them)")
    return int(text.strip())


def _where(sink: str | None, since: float | None = None, before: float | None = None,
           ids: Sequence[int] = (), reason: str | None = None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if sink is not None:
        clauses.append("sink = ?")
        params.append(sink)
    if reason:
        clauses.append("instr(lower(reason), lower(?)) > 0")
        params.append(reason)
    if since is not None:
        clauses.append("last_attempt >= ?")
        params.append(since)
    if before is not None:
        clauses.append("last_attempt < ?")
        params.append(before)
    if ids:  # an id SQLite cannot hold names no entry (and cannot be bound): `IN ()` matches nothing
        held = [entry_id for entry_id in ids if is_id(entry_id)]
        clauses.append(f"id IN ({', '.join('?' * len(held))})")
        params.extend(held)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _entry(row: Sequence[Any], envelope: str | None = None) -> DeadLetterEntry:
    (entry_id, sink, key, rtype, app_id, reason, code, permanent, attempts, first, last) = row
    return DeadLetterEntry(entry_id, sink, key, rtype, app_id, reason, code, bool(permanent), attempts, first,
                           last, json.loads(envelope) if envelope is not None else None)


def list_entries(spool: Spool, sink: str | None = None, *, after_id: int = 0, limit: int | None = None,
                 reason: str | None = None, since: float | None = None,
                 before: float | None = None) -> list[DeadLetterEntry]:
    """Dead letters, oldest first, optionally for one sink, whose reason contains ``reason`` (any case),
    last tried in ``[since, before)``, after a given id."""
    where, params = _where(sink, since=since, before=before, reason=reason)
    where += (" AND" if where else " WHERE") + " id > ?"
    params.append(min(max(after_id, 0), MAX_ID))
    sql = f"SELECT {_COLUMNS} FROM dead_letters{where} ORDER BY id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [_entry(row) for row in spool.conn().execute(sql, params)]


def last_id(spool: Spool) -> int:
    """The highest dead-letter id so far (0 when empty)."""
    return int(spool.conn().execute("SELECT coalesce(max(id), 0) FROM dead_letters").fetchone()[0])


def get_entry(spool: Spool, entry_id: int) -> DeadLetterEntry | None:
    """One dead letter with its envelope, or None (also for an id no dead letter can have)."""
    if not is_id(entry_id):
        return None
    row = spool.conn().execute(f"SELECT {_COLUMNS}, envelope FROM dead_letters WHERE id = ?",
                               (entry_id,)).fetchone()
    return None if row is None else _entry(row[:-1], row[-1])


def replay(spool: Spool, sink: str | None = None, since: float | None = None, ids: Sequence[int] = (),
           now: float | None = None) -> dict[str, int]:
    """Move matching dead letters back to their sink's queue; returns how many per sink."""
    now = time.time() if now is None else now
    moved: dict[str, int] = {}
    with spool.write() as conn:
        bits = dict(conn.execute("SELECT name, bit FROM sinks").fetchall())
        for name, bit in bits.items():
            if sink is not None and name != sink:
                continue
            where, params = _where(name, since=since, ids=ids)
            n = conn.execute(
                "INSERT INTO records(mask, key, type, app_id, trace_key, received, envelope) "
                f"SELECT ?, record_key, record_type, app_id, NULL, ?, envelope FROM dead_letters{where} "
                "ORDER BY id", [1 << bit, now, *params]).rowcount
            if n:
                conn.execute(f"DELETE FROM dead_letters{where}", params)
                conn.execute("UPDATE sinks SET last_seq = (SELECT max(seq) FROM records) WHERE name = ?", (name,))
                moved[name] = n
        bump(conn, ((name, "replayed", n) for name, n in moved.items()))
    return moved


def count_by_sink(spool: Spool, sink: str | None = None, since: float | None = None,
                  ids: Sequence[int] = ()) -> dict[str, int]:
    """How many dead letters :func:`replay` would move with the same filters, per sink."""
    where, params = _where(sink, since=since, ids=ids)
    rows = spool.conn().execute(f"SELECT sink, count(*) FROM dead_letters{where} GROUP BY sink", params)
    return {name: int(n) for name, n in rows}


def count(spool: Spool, sink: str | None = None, before: float | None = None, *, reason: str | None = None,
          since: float | None = None) -> int:
    """How many dead letters match (the filters of :func:`list_entries`)."""
    where, params = _where(sink, since=since, before=before, reason=reason)
    return int(spool.conn().execute(f"SELECT count(*) FROM dead_letters{where}", params).fetchone()[0])


def purge(spool: Spool, sink: str | None = None, before: float | None = None, ids: Sequence[int] = ()) -> int:
    """Delete matching dead letters for good (their content overwritten in the file); returns how many."""
    where, params = _where(sink, before=before, ids=ids)
    with spool.write() as conn:
        conn.execute("PRAGMA secure_delete=ON")  # the spool's connections otherwise free pages as they are
        try:
            return int(conn.execute(f"DELETE FROM dead_letters{where}", params).rowcount)
        finally:
            conn.execute("PRAGMA secure_delete=OFF")


def retire(spool: Spool, sink: str, now: float | None = None) -> int | None:
    """Move everything still owed to ``sink`` (fresh or waiting for a retry) to its dead letter.

    For a sink taken out of the config: its undelivered records otherwise stay in the spool for good.
    Each gets the reason "sink retired"; ``replay --sink`` brings them back if the sink returns. Returns
    how many records were moved, or None when the spool has never known ``sink``.
    """
    now = time.time() if now is None else now
    reason = f"sink {sink} retired with 'traceexport dlq retire' while this record was undelivered"
    with spool.write() as conn:
        row = conn.execute("SELECT bit, cursor FROM sinks WHERE name = ?", (sink,)).fetchone()
        if row is None:
            return None
        bit, cursor = row
        columns = ("INSERT INTO dead_letters(sink, record_key, record_type, app_id, reason, status_code, "
                   "permanent, attempts, first_attempt, last_attempt, envelope) ")
        waiting = conn.execute(
            columns + "SELECT ?, rec.key, rec.type, rec.app_id, ? || ' (last failure: ' || "
            "ifnull(r.last_reason, '?') || ')', r.status_code, 1, r.attempts, r.first_attempt, ?, rec.envelope "
            "FROM retries r JOIN records rec USING(seq) WHERE r.sink = ? ORDER BY r.seq",
            (sink, reason, now, sink)).rowcount
        conn.execute("DELETE FROM retries WHERE sink = ?", (sink,))
        fresh = conn.execute(
            columns + "SELECT ?, key, type, app_id, ?, NULL, 1, 0, NULL, ?, envelope FROM records "
            "WHERE seq > ? AND (mask >> ?) & 1 ORDER BY seq", (sink, reason, now, cursor, bit)).rowcount
        conn.execute("UPDATE sinks SET cursor = max(cursor, last_seq) WHERE name = ?", (sink,))
        bump(conn, [(sink, "dead_lettered", waiting + fresh)])
    return int(waiting + fresh)
