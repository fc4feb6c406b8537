"""The durable spool: one SQLite file in WAL mode holding records, per-sink delivery state, dead letters
and counters.

Layout (all in ``<spool_dir>/spool.db``):

* ``records``: every accepted record (envelope JSON plus key, type, app id, trace key, received time)
  and ``mask``, a bit per sink it is routed to. ``compact`` optionally holds the record's already
  normalised form (:mod:`traceexport.records.compact`) so a delivery process need not parse it again.
  ``seq`` is AUTOINCREMENT so it never goes back, even after deletes: sink cursors rely on that.
* ``sinks``: name -> bit, ``cursor``, the highest ``seq`` that sink has finished with (delivered,
  dead-lettered, or moved to ``retries``), and ``last_seq``, the highest ``seq`` ever routed to it: a
  sink owes nothing outside ``(cursor, last_seq]``, which lets the sweep delete whole ranges (and
  keeps a sink removed from the config from holding back the cleanup of newer records).
* ``retries``: per sink, records to try again at ``not_before`` (failed attempts, or deferred by the
  enricher) with their attempt count.
* ``dead_letters``: what a sink could not take, with the reason and a copy of the envelope.
* ``counters``: per sink totals (accepted, exported, retried, ...) so another process can read them.

A record is deleted once every sink in its mask is past it and holds no retry for it. Nothing is ever
read into memory wholesale: workers page through ``records`` by ``seq``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from traceexport.errors import ConfigError, SpoolFullError, SpoolUnavailableError
from traceexport.pipeline.connections import ConnectionPool
from traceexport.pipeline.settings import PipelineSettings

SPOOL_FILE = "spool.db"
MAX_SINKS = 62
COUNTER_NAMES = (
    "accepted", "exported", "retried", "deferred", "dead_lettered", "dropped", "skipped", "replayed",
)
_PAGE_SIZE = 32768
# Rows beyond the slowest cursor examined per sweep for records owed only to faster sinks.
_SWEEP_WINDOW = 20_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, mask INTEGER NOT NULL, key TEXT NOT NULL, type TEXT NOT NULL,
    app_id TEXT, trace_key TEXT, received REAL NOT NULL, envelope TEXT NOT NULL, compact BLOB);
CREATE TABLE IF NOT EXISTS sinks(name TEXT PRIMARY KEY, bit INTEGER NOT NULL UNIQUE,
    cursor INTEGER NOT NULL DEFAULT 0, last_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS retries(sink TEXT NOT NULL, seq INTEGER NOT NULL, not_before REAL NOT NULL,
    attempts INTEGER NOT NULL, first_attempt REAL, last_reason TEXT, status_code INTEGER,
    PRIMARY KEY(sink, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS retries_due ON retries(sink, not_before);
CREATE INDEX IF NOT EXISTS retries_seq ON retries(seq);
CREATE TABLE IF NOT EXISTS dead_letters(id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL,
    record_key TEXT, record_type TEXT, app_id TEXT, reason TEXT NOT NULL, status_code INTEGER,
    permanent INTEGER NOT NULL, attempts INTEGER NOT NULL, first_attempt REAL, last_attempt REAL NOT NULL,
    envelope TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS dead_letters_sink ON dead_letters(sink, id);
CREATE TABLE IF NOT EXISTS counters(sink TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY(sink, name)) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class SpoolRow:
    """One record as the spool stores it; ``mask`` has a bit for every sink it is routed to."""

    mask: int
    key: str
    type: str
    app_id: str | None
    trace_key: str | None
    envelope: str
    compact: bytes | None = None


class Spool:
    """The SQLite spool file; safe to share between threads (connections from a pool, see ``connections``)."""

    def __init__(self, spool_dir: Path, settings: PipelineSettings | None = None, *, create: bool = True):
        self.settings = settings or PipelineSettings()
        self.dir = Path(spool_dir)
        self.path = self.dir / SPOOL_FILE
        if not create and not self.path.exists():
            raise ConfigError([f"no spool at {self.dir}: nothing was accepted there yet"],
                              title="spool not found")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError([f"spool directory {self.dir}: {exc.strerror}"],
                              title="cannot open spool") from exc
        self._opened = False
        self._pool = ConnectionPool(self._open)
        self._lock = threading.Lock()
        self._last_sweep = 0.0
        self._last_scan = 0.0
        self.conn().executescript(_SCHEMA)
        self._upgrade()

    def _upgrade(self) -> None:
        """Bring a spool written by an older version up to this schema (columns only ever get added)."""
        columns = {row[1] for row in self.conn().execute("PRAGMA table_info(records)")}
        if "compact" not in columns:
            with self.write() as conn:
                conn.execute("ALTER TABLE records ADD COLUMN compact BLOB")
        columns = {row[1] for row in self.conn().execute("PRAGMA table_info(sinks)")}
        if "last_seq" not in columns:
            with self.write() as conn:  # unknown until now: assume every sink may owe every record
                conn.execute("ALTER TABLE sinks ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0")
                conn.execute("UPDATE sinks SET last_seq = (SELECT ifnull(max(seq), 0) FROM records)")

    # -- connections -----------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        """A new connection with the spool's pragmas (autocommit mode; writes go through :meth:`write`)."""
        try:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            # Records are a few KB each: 32 KiB pages hold several, which halves the cost of inserting
            # and deleting them (bench). Only takes effect on a new file, before WAL is switched on.
            conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.settings.fsync else 'NORMAL'}")
        except sqlite3.Error as exc:
            if not self._opened:  # at start-up: the spool itself is unusable
                raise ConfigError([f"{self.path}: {exc}"], title="cannot open spool") from exc
            # Later: the process is out of something (descriptors, memory); the spool is fine.
            raise SpoolUnavailableError(f"spool {self.dir} cannot open a connection now ({exc}): retry later",
                                        retry_after=self.settings.full_retry_after) from exc
        self._opened = True
        return conn

    def conn(self) -> sqlite3.Connection:
        """This thread's connection: the one of the enclosing :meth:`read`/:meth:`write` block, else one
        held while the thread lives (given back to the pool once it has ended)."""
        return self._pool.current()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT); rolled back if the block raises."""
        with self._pool.lease() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query in the block sees one snapshot."""
        with self._pool.lease() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection this spool opened; idempotent."""
        self._pool.close()

    # -- sinks -----------------------------------------------------------------------------------
    def register_sinks(self, names: Sequence[str]) -> dict[str, int]:
        """The bit of every named sink, allocating bits for sinks this spool has not seen."""
        with self.write() as conn:
            known = dict(conn.execute("SELECT name, bit FROM sinks").fetchall())
            for name in names:
                if name in known:
                    continue
                free = sorted(set(range(MAX_SINKS)) - set(known.values()))
                if not free:
                    raise ConfigError([f"spool {self.dir} already tracks {MAX_SINKS} sinks"])
                known[name] = free[0]
                conn.execute("INSERT INTO sinks(name, bit, cursor) VALUES (?, ?, 0)", (name, free[0]))
        return {name: known[name] for name in names}

    def sink_bits(self) -> dict[str, int]:
        """Every sink this spool has ever tracked, by name."""
        return dict(self.conn().execute("SELECT name, bit FROM sinks").fetchall())

    # -- accept ----------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes of the spool file in use (pages minus free pages) plus the write-ahead log."""
        conn = self.conn()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def accept(self, rows: Sequence[SpoolRow], now: float | None = None) -> None:
        """Persist ``rows`` in one transaction; raise SpoolFullError (or drop oldest) when over the limit."""
        if not rows:
            return
        now = time.time() if now is None else now
        incoming = sum(len(r.envelope) + len(r.compact or b"") + len(r.key) + 64 for r in rows)
        with self.write() as conn:
            over = self.used_bytes() + incoming - self.settings.max_bytes
            if over > 0:
                if self.settings.on_full != "drop_oldest":
                    raise SpoolFullError(
                        f"spool {self.dir} is full ({self.settings.max_bytes} bytes): retry later, or raise "
                        "the spool size limit", retry_after=self.settings.full_retry_after)
                self._drop_oldest(conn, over, now)
            conn.executemany(
                "INSERT INTO records(mask, key, type, app_id, trace_key, received, envelope, compact) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.mask, r.key, r.type, r.app_id, r.trace_key, now, r.envelope, r.compact) for r in rows])
            last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            accepted: dict[int, int] = {}
            for r in rows:
                accepted[r.mask] = accepted.get(r.mask, 0) + 1
            names = {bit: name for name, bit in conn.execute("SELECT name, bit FROM sinks")}
            per_sink: dict[str, int] = {}
            for mask, count in accepted.items():
                for bit, name in names.items():
                    if mask >> bit & 1:
                        per_sink[name] = per_sink.get(name, 0) + count
            conn.executemany("UPDATE sinks SET last_seq = ? WHERE name = ?", [(last, name) for name in per_sink])
            bump(conn, ((name, "accepted", n) for name, n in per_sink.items()))

    def _drop_oldest(self, conn: sqlite3.Connection, over: int, now: float) -> None:
        """Delete the oldest records until ``over`` bytes are freed, counting a drop per owing sink."""
        sinks = conn.execute("SELECT name, bit, cursor FROM sinks").fetchall()
        freed = 0
        dropped: list[int] = []
        per_sink: dict[str, int] = {}
        for seq, mask, size in conn.execute(
                "SELECT seq, mask, length(envelope) + ifnull(length(compact), 0) FROM records ORDER BY seq"):
            dropped.append(seq)
            freed += size + 128
            for name, bit, cursor in sinks:
                if mask >> bit & 1 and seq > cursor:
                    per_sink[name] = per_sink.get(name, 0) + 1
            if freed >= over:
                break
        if not dropped:
            raise SpoolFullError(f"spool {self.dir} is full and holds no records to drop: raise its limit",
                                 retry_after=self.settings.full_retry_after)
        for name, count in conn.execute(
                f"SELECT sink, count(*) FROM retries WHERE seq <= {dropped[-1]} GROUP BY sink").fetchall():
            per_sink[name] = per_sink.get(name, 0) + count
        conn.execute("DELETE FROM retries WHERE seq <= ?", (dropped[-1],))
        conn.execute("DELETE FROM records WHERE seq <= ?", (dropped[-1],))
        bump(conn, ((name, "dropped", n) for name, n in per_sink.items()))

    # -- cleanup ---------------------------------------------------------------------------------
    def sweep(self, *, every: float = 1.0, scan_every: float = 30.0) -> int:
        """Delete records every routed sink is done with; at most once per ``every`` seconds.

        Three steps, cheapest first: everything up to the slowest cursor; whole ranges above it that no
        sink can owe (outside every ``(cursor, last_seq]``), such as everything newer than what a sink
        removed from the config was ever sent; and, at most every ``scan_every`` seconds, a look at
        each record's mask in a window above the slowest cursor, for records owed only to faster sinks.
        """
        now = time.monotonic()
        with self._lock:
            if now - self._last_sweep < every:
                return 0
            self._last_sweep = now
            scan = now - self._last_scan >= scan_every
            if scan:
                self._last_scan = now
        with self.write() as conn:
            sinks = conn.execute("SELECT bit, cursor, last_seq FROM sinks").fetchall()
            if not sinks:
                return 0
            low, high = min(c for _, c, _ in sinks), max(c for _, c, _ in sinks)
            done = "seq NOT IN (SELECT seq FROM retries)"
            deleted = conn.execute(f"DELETE FROM records WHERE seq <= ? AND {done}", (low,)).rowcount
            for start, end in _unowed_ranges(low, [(c, last) for _, c, last in sinks]):
                deleted += conn.execute(f"DELETE FROM records WHERE seq > ? AND seq <= ? AND {done}",
                                        (start, end)).rowcount
            if scan and high > low:  # past the fastest cursor every record is still owed to some sink
                owed = " AND ".join(f"NOT ((mask >> {bit}) & 1 AND seq > {cursor})" for bit, cursor, _ in sinks)
                deleted += conn.execute(
                    f"DELETE FROM records WHERE seq > ? AND seq <= ? AND {owed} AND {done}",
                    (low, min(high, low + _SWEEP_WINDOW))).rowcount
        return int(deleted)

    # -- counters --------------------------------------------------------------------------------
    def counters(self) -> dict[str, dict[str, int]]:
        """Persisted counters: sink -> name -> value (every name in COUNTER_NAMES present)."""
        out: dict[str, dict[str, int]] = {name: dict.fromkeys(COUNTER_NAMES, 0) for name in self.sink_bits()}
        for sink, name, value in self.conn().execute("SELECT sink, name, value FROM counters"):
            out.setdefault(sink, dict.fromkeys(COUNTER_NAMES, 0))[name] = int(value)
        return out

    def backlog(self, sink: str) -> tuple[int, float | None]:
        """Records pending for ``sink`` (fresh plus waiting for retry) and the oldest one's received time."""
        with self.read() as conn:
            row = conn.execute("SELECT bit, cursor FROM sinks WHERE name = ?", (sink,)).fetchone()
            if row is None:
                return 0, None
            bit, cursor = row
            fresh, oldest = conn.execute(
                "SELECT count(*), min(received) FROM records WHERE seq > ? AND (mask >> ?) & 1",
                (cursor, bit)).fetchone()
            retry, oldest_retry = conn.execute(
                "SELECT count(*), min(r.received) FROM retries JOIN records r USING(seq) WHERE sink = ?",
                (sink,)).fetchone()
        olds = [t for t in (oldest, oldest_retry) if t is not None]
        return int(fresh) + int(retry), (min(olds) if olds else None)

    def lag(self, sinks: Sequence[str]) -> int:
        """How many sequence numbers the slowest of ``sinks`` is behind the newest record (0 if none)."""
        conn = self.conn()
        top = conn.execute("SELECT seq FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        if top is None or not sinks:
            return 0
        marks = ",".join("?" * len(sinks))
        low = conn.execute(f"SELECT min(cursor) FROM sinks WHERE name IN ({marks})", tuple(sinks)).fetchone()[0]
        return max(int(top[0]) - int(low or 0), 0)

    def has_pending(self, sink: str) -> bool:
        """Whether anything is pending for ``sink``; cheap even with a large backlog."""
        with self.read() as conn:
            row = conn.execute("SELECT bit, cursor FROM sinks WHERE name = ?", (sink,)).fetchone()
            if row is None:
                return False
            bit, cursor = row
            fresh = conn.execute("SELECT 1 FROM records WHERE seq > ? AND (mask >> ?) & 1 LIMIT 1",
                                 (cursor, bit)).fetchone()
            retry = conn.execute("SELECT 1 FROM retries WHERE sink = ? LIMIT 1", (sink,)).fetchone()
        return fresh is not None or retry is not None

    def record_count(self) -> int:
        """Records held in the spool (for any sink)."""
        return int(self.conn().execute("SELECT count(*) FROM records").fetchone()[0])


def _unowed_ranges(low: int, owing: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ``(start, end]`` ranges above ``low`` outside every sink's ``(cursor, last_seq]``."""
    ranges: list[tuple[int, int]] = []
    position = low
    for cursor, last in sorted((c, last) for c, last in owing if last > c):
        if cursor > position:
            ranges.append((position, cursor))
        position = max(position, last)
    top = max((max(c, last) for c, last in owing), default=low)  # nothing newer than this was ever routed
    if top > position:
        ranges.append((position, top))
    return ranges


def bump(conn: sqlite3.Connection, increments: Iterable[tuple[str, str, int]]) -> None:
    """Add to persisted counters inside the caller's transaction."""
    conn.executemany(
        "INSERT INTO counters(sink, name, value) VALUES (?, ?, ?) "
        "ON CONFLICT(sink, name) DO UPDATE SET value = value + excluded.value",
        [(sink, name, n) for sink, name, n in increments if n])


def spool_dir_default() -> Path:
    """``$TRACEEXPORT_SPOOL`` or ``./traceexport-spool``."""
    return Path(os.environ.get("TRACEEXPORT_SPOOL") or "traceexport-spool")
