"""The delivery ledger: per sink, which records it acknowledged, when, and a hash of what they became.

Table ``ledger`` gets a row per record and sink from :meth:`traceexport.pipeline.queue.SinkQueue.commit`,
in the transaction that moves the sink's cursor, so a record is in the ledger exactly when its delivery
is committed. Rows are compact (the sink as its bit in the ``sinks`` table, the hash as 8 bytes, the time
as whole seconds) and only ever appended: a record delivered again gets another row, and the latest one
counts (:mod:`traceexport.pipeline.ledger_reader`). Appending keeps the hot path cheap however large the
ledger grows; a table keyed by record would write a random page per delivery (record keys are UUIDs),
several times the cost (README, "The delivery ledger"). The one index, on ``acked``, is appended to as
well; it serves the retention sweep and the reader's time window.

The table lives in its own file beside the spool (``ledger.db``), attached to every spool connection
(:func:`attach`): one transaction still writes both, but the ledger, bounded by its retention, takes
nothing from the room ``max_bytes`` keeps for records and never pushes the spool's files past it. The
two files commit one after the other, the spool's first: a crash in between can only leave a delivered
record out of the ledger (the audit calls it missing, a backfill sends it again: harmless). The
ledger's commits are not fsync'd (``synchronous=NORMAL``): a power cut may lose its last rows, with the
same consequence.

:func:`payload_hash` is pure: the audit recomputes it for a record rebuilt from Dify's database and
compares; it is most of the ledger's cost on the hot path. :class:`RetentionSweep` deletes the rows older
than the retention, oldest first, a bounded number per step.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from traceexport._json import dumps_bytes
from traceexport.sinks.base import Payload

LEDGER_FILE = "ledger.db"
SCHEMA_NAME = "ledger_db"  # the attached file's name in SQL; tables are found without it
HASH_BYTES = 8
SWEEP_CHUNK = 5_000  # expired rows deleted per transaction
SWEEP_CHUNKS = 10  # transactions per retention step at most: 50,000 rows a second keeps up with any delivery rate
SWEEP_EVERY = 1.0  # seconds between retention steps
_LOG_LIMIT = 4 * 1024**2  # bytes the ledger's write-ahead log is cut back to after a checkpoint

_TABLE = f"""CREATE TABLE IF NOT EXISTS {SCHEMA_NAME}.ledger(sink INTEGER NOT NULL, record_key TEXT NOT NULL,
    hash BLOB NOT NULL, acked INTEGER NOT NULL)"""
_SCHEMA = f"""
{_TABLE};
CREATE INDEX IF NOT EXISTS {SCHEMA_NAME}.ledger_acked ON ledger(acked);
CREATE TABLE IF NOT EXISTS {SCHEMA_NAME}.meta(name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dead_letters_key ON dead_letters(record_key);
"""

_SLICE = 2_000  # bytes per hash update: below hashlib's 2 KiB, so hashing never hands the GIL over mid-record


# -- the content hash ------------------------------------------------------------------------------
def payload_digest(payloads: Sequence[Payload]) -> bytes:
    """The 8-byte hash of a record's mapped payloads (what the ledger stores); see :func:`payload_hash`."""
    items = [[p.kind, p.key, p.body] for p in payloads]
    try:
        data = dumps_bytes(items)
    except ValueError:  # text pydantic-core will not write (a lone surrogate): escaped by the standard library
        data = json.dumps(items, separators=(",", ":"), default=str).encode("ascii")
    digest = hashlib.blake2b(digest_size=HASH_BYTES)
    view = memoryview(data)
    for start in range(0, len(view), _SLICE):
        digest.update(view[start:start + _SLICE])
    return digest.digest()


def payload_hash(payloads: Sequence[Payload]) -> str:
    """A short stable content hash (16 hex digits) of a record's payloads, in mapping order.

    blake2b (8 bytes) of the compact JSON of ``[[kind, key, body], ...]`` as :func:`traceexport._json.dumps_bytes`
    writes it: keys in the order the mapping built them, UTF-8, NaN as null, anything not JSON as ``str()``.
    ``record_ref`` is left out (the worker sets it). The same payloads give the same hash in any process.

    Keys are not sorted: that would cost 2.5 times as much on the hot path (the standard library's encoder is
    the only one here that sorts), and key order is content anyway for the OTLP and Langfuse mappings,
    which write inputs and outputs as JSON text. A record rebuilt for the audit must keep the key order of
    Dify's own records (the order its JSON columns and TraceInfo fields come in) to hash the same.
    """
    return payload_digest(payloads).hex()


# -- the file --------------------------------------------------------------------------------------
def attach(conn: sqlite3.Connection, spool_dir: Path) -> None:
    """Attach ``spool_dir``'s ledger file to a spool connection (created when missing), in WAL mode."""
    conn.execute(f"ATTACH DATABASE ? AS {SCHEMA_NAME}", (str(spool_dir / LEDGER_FILE),))
    conn.execute(f"PRAGMA {SCHEMA_NAME}.journal_mode=WAL")
    conn.execute(f"PRAGMA {SCHEMA_NAME}.synchronous=NORMAL")
    conn.execute(f"PRAGMA {SCHEMA_NAME}.journal_size_limit={_LOG_LIMIT}")


def create(conn: sqlite3.Connection) -> None:
    """Create the ledger's tables (and the dead letter's index by record key) where missing, and note when
    this ledger started: deliveries before that left no row (a spool older than the ledger)."""
    if _keyed(conn):
        _unkey(conn)
    conn.executescript(_SCHEMA)
    if conn.execute("SELECT 1 FROM meta WHERE name = 'started'").fetchone() is None:
        conn.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('started', ?)", (int(time.time()),))


def forget_earlier_spool(conn: sqlite3.Connection) -> int:
    """For a spool registering its first sinks, in that transaction: the rows this ledger still holds came from
    an earlier ``spool.db`` (deleted beside it), whose sink numbers now name other sinks. Delete them and note
    the ledger as started now; how many were deleted."""
    if conn.execute("SELECT 1 FROM ledger LIMIT 1").fetchone() is None:
        return 0
    deleted = int(conn.execute("DELETE FROM ledger").rowcount)
    conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES ('started', ?)", (int(time.time()),))
    return deleted


def _keyed(conn: sqlite3.Connection) -> bool:
    """Whether the ledger has its first layout: one row per sink and record, keyed by them."""
    found = conn.execute(f"SELECT sql FROM {SCHEMA_NAME}.sqlite_master WHERE type = 'table' AND name = 'ledger'")
    row = found.fetchone()
    return row is not None and "WITHOUT ROWID" in str(row[0]).upper()


def _unkey(conn: sqlite3.Connection) -> None:
    """Turn the first layout into rows in delivery order (keyed, a second delivery of a record would fail)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _keyed(conn):  # not done meanwhile by another process opening the spool
            conn.execute(f"ALTER TABLE {SCHEMA_NAME}.ledger RENAME TO ledger_keyed")
            conn.execute(_TABLE)
            conn.execute(f"INSERT INTO {SCHEMA_NAME}.ledger(sink, record_key, hash, acked) "
                         f"SELECT sink, record_key, hash, acked FROM {SCHEMA_NAME}.ledger_keyed ORDER BY acked")
            conn.execute(f"DROP TABLE {SCHEMA_NAME}.ledger_keyed")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# -- writing and expiring --------------------------------------------------------------------------
def record(conn: sqlite3.Connection, bit: int, delivered: Iterable[tuple[str, bytes]], now: float) -> None:
    """Ledger ``(record_key, digest)`` pairs as acknowledged by sink ``bit`` now, in the caller's transaction."""
    acked = int(now)
    conn.executemany("INSERT INTO ledger(sink, record_key, hash, acked) VALUES (?, ?, ?, ?)",
                     [(bit, key, digest, acked) for key, digest in delivered])


class _Transactions(Protocol):
    """What the retention sweep needs of a spool (structural: no import of it here)."""

    def read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction."""
        ...

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction that keeps the spool's log within its budget."""
        ...


class RetentionSweep:
    """Deletes ledger rows acknowledged more than ``retention`` seconds ago, oldest first.

    A step (at most one per ``every`` seconds) is one indexed look when nothing expired, else up to
    :data:`SWEEP_CHUNKS` transactions of :data:`SWEEP_CHUNK` rows, so the log stays small while the sweep
    keeps up with any delivery rate. ``retention`` 0 (ledger off) empties the table the same way.
    """

    def __init__(self, retention: float, every: float = SWEEP_EVERY) -> None:
        self.retention = retention
        self.every = every
        self._last = 0.0
        self._lock = threading.Lock()

    def step(self, spool: _Transactions, now: float | None = None, *, force: bool = False) -> int:
        """One step (skipped within ``every`` seconds of the last unless ``force``); the rows deleted."""
        if not self._lock.acquire(blocking=False):
            return 0  # another thread is stepping
        try:
            clock = time.monotonic()
            if not force and clock - self._last < self.every:
                return 0
            self._last = clock
            cutoff = int((time.time() if now is None else now) - self.retention)
            return self._step(spool, cutoff)
        finally:
            self._lock.release()

    def _step(self, spool: _Transactions, cutoff: int) -> int:
        deleted = 0
        for _ in range(SWEEP_CHUNKS):
            with spool.read() as conn:
                if conn.execute("SELECT 1 FROM ledger WHERE acked < ? LIMIT 1", (cutoff,)).fetchone() is None:
                    break
            with spool.transaction() as conn:
                done = conn.execute("DELETE FROM ledger WHERE rowid IN (SELECT rowid FROM ledger WHERE acked < ? "
                                    "ORDER BY acked LIMIT ?)", (cutoff, SWEEP_CHUNK)).rowcount
            deleted += done
            if done < SWEEP_CHUNK:
                break
        return deleted
