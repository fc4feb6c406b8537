"""The delivery ledger: per sink, which records it acknowledged, when, and a hash of what they became.

One row per sink and record (table ``ledger``), written by
:meth:`traceexport.pipeline.queue.SinkQueue.commit` in the transaction that moves the sink's cursor, so
a record is in the ledger exactly when its delivery is committed. The latest delivery wins (a re-send
replaces the row). Rows are compact: the sink as its bit in the ``sinks`` table, the hash as 8 bytes,
the time as whole seconds, no index besides the primary key (``sink``, ``record_key``).

The table lives in its own file beside the spool (``ledger.db``), attached to every spool connection
(:func:`attach`): one transaction still writes both, but the ledger, bounded by its retention, takes
nothing from the room ``max_bytes`` keeps for records and never pushes the spool's files past it. The
two files commit one after the other: a crash between the two writes leaves a delivered record out of
the ledger (the audit calls it missing, a backfill sends it again: harmless) or a record in it whose
cursor did not move (it is sent again and its row replaced). The ledger's commits are not fsync'd
(``synchronous=NORMAL``): a power cut may lose its last rows, with the same consequence.

:func:`payload_hash` is pure: the audit recomputes it for a record rebuilt from Dify's database and
compares. :class:`RetentionSweep` walks the table in key order, a bounded chunk per step, deleting rows
older than the retention, so a row goes some time after it expires (one pass over the table).
:class:`LedgerReader` answers the audit's batched questions.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from traceexport.sinks.base import Payload

LEDGER_FILE = "ledger.db"
SCHEMA_NAME = "ledger_db"  # the attached file's name in SQL; tables are found without it
HASH_BYTES = 8
LOOKUP_CHUNK = 500  # keys per query: bounded statements and memory, however many records an audit covers
SWEEP_CHUNK = 2_000  # ledger rows one retention step looks at
SWEEP_EVERY = 1.0  # seconds between retention steps
_LOG_LIMIT = 4 * 1024**2  # bytes the ledger's write-ahead log is cut back to after a checkpoint

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA_NAME}.ledger(sink INTEGER NOT NULL, record_key TEXT NOT NULL, hash BLOB NOT NULL,
    acked INTEGER NOT NULL, PRIMARY KEY(sink, record_key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dead_letters_key ON dead_letters(record_key);
"""

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False, default=str)


# -- the content hash ------------------------------------------------------------------------------
def payload_digest(payloads: Sequence[Payload]) -> bytes:
    """The 8-byte hash of a record's mapped payloads (what the ledger stores); see :func:`payload_hash`."""
    items = [[p.kind, p.key, p.body] for p in payloads]
    try:
        text = _ENCODER.encode(items)
    except TypeError:  # keys of mixed types cannot be sorted: compare them as text
        text = _ENCODER.encode(_text_keys(items))
    return hashlib.blake2b(text.encode("ascii"), digest_size=HASH_BYTES).digest()


def payload_hash(payloads: Sequence[Payload]) -> str:
    """A short stable content hash (16 hex digits) of a record's payloads, in mapping order.

    blake2b of the canonical JSON of ``[[kind, key, body], ...]``: keys sorted at every level, compact
    separators, non-ASCII escaped, anything not JSON as ``str()``. ``record_ref`` is left out (the worker
    sets it). The same payloads give the same hash in any process, whatever their dicts' key order.
    """
    return payload_digest(payloads).hex()


def _text_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _text_keys(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_text_keys(v) for v in value]
    return value


# -- the file --------------------------------------------------------------------------------------
def attach(conn: sqlite3.Connection, spool_dir: Path) -> None:
    """Attach ``spool_dir``'s ledger file to a spool connection (created when missing), in WAL mode."""
    conn.execute(f"ATTACH DATABASE ? AS {SCHEMA_NAME}", (str(spool_dir / LEDGER_FILE),))
    conn.execute(f"PRAGMA {SCHEMA_NAME}.journal_mode=WAL")
    conn.execute(f"PRAGMA {SCHEMA_NAME}.synchronous=NORMAL")
    conn.execute(f"PRAGMA {SCHEMA_NAME}.journal_size_limit={_LOG_LIMIT}")


# -- writing and expiring --------------------------------------------------------------------------
def record(conn: sqlite3.Connection, bit: int, delivered: Iterable[tuple[str, bytes]], now: float) -> None:
    """Ledger ``(record_key, digest)`` pairs as acknowledged by sink ``bit`` now, in the caller's transaction."""
    acked = int(now)
    conn.executemany("INSERT OR REPLACE INTO ledger(sink, record_key, hash, acked) VALUES (?, ?, ?, ?)",
                     [(bit, key, digest, acked) for key, digest in delivered])


class _Transactions(Protocol):
    """What the retention sweep and the reader need of a spool (structural: no import of it here)."""

    def read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction."""
        ...

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction that keeps the spool's log within its budget."""
        ...


class RetentionSweep:
    """Deletes ledger rows older than ``retention`` seconds, :data:`SWEEP_CHUNK` rows per step.

    Each step continues in key order where the last one stopped and starts over at the end, so a pass
    over the whole table takes ``rows / SWEEP_CHUNK`` steps (about 4 hours for 30 million rows at one
    step a second) and costs each step a short read, plus a short write when something expired.
    ``retention`` 0 (ledger off) empties the table the same way.
    """

    def __init__(self, retention: float, chunk: int = SWEEP_CHUNK, every: float = SWEEP_EVERY) -> None:
        self.retention = retention
        self.chunk = chunk
        self.every = every
        self._after: tuple[int, str] = (-1, "")
        self._last = 0.0
        self._lock = threading.Lock()

    def step(self, spool: _Transactions, now: float | None = None, *, force: bool = False) -> int:
        """One step (at most one per ``every`` seconds unless ``force``); the rows deleted."""
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
        with spool.read() as conn:
            rows = conn.execute(
                "SELECT sink, record_key, acked FROM ledger WHERE (sink, record_key) > (?, ?) "
                "ORDER BY sink, record_key LIMIT ?", (*self._after, self.chunk)).fetchall()
        self._after = (int(rows[-1][0]), str(rows[-1][1])) if len(rows) == self.chunk else (-1, "")
        old = [(sink, key, cutoff) for sink, key, acked in rows if acked < cutoff]
        if not old:
            return 0
        with spool.transaction() as conn:  # acked re-checked: a row delivered again meanwhile stays
            conn.executemany("DELETE FROM ledger WHERE sink = ? AND record_key = ? AND acked < ?", old)
        return len(old)


# -- reading (the audit) ---------------------------------------------------------------------------
class _Spool(_Transactions, Protocol):
    def sink_bits(self) -> dict[str, int]:
        """Every sink the spool has tracked, by name."""
        ...


class LedgerReader:
    """Batched lookups in a spool's ledger and dead letter, :data:`LOOKUP_CHUNK` keys per query."""

    def __init__(self, spool: _Spool) -> None:
        self.spool = spool

    def acknowledged(self, sink_name: str, keys: Iterable[str]) -> dict[str, tuple[str, int]]:
        """``{record_key: (hash_hex, acked_at)}`` for the ``keys`` sink ``sink_name`` acknowledged."""
        bit = self.spool.sink_bits().get(sink_name)
        found: dict[str, tuple[str, int]] = {}
        if bit is None:
            return found
        for chunk in _chunks(keys):
            with self.spool.read() as conn:
                rows = conn.execute(
                    f"SELECT record_key, hash, acked FROM ledger WHERE sink = ? AND record_key IN "
                    f"({', '.join('?' * len(chunk))})", (bit, *chunk)).fetchall()
            found.update((key, (bytes(digest).hex(), int(acked))) for key, digest, acked in rows)
        return found

    def dead_letters(self, sink_name: str, keys: Iterable[str]) -> dict[str, str]:
        """``{record_key: reason}`` for the ``keys`` in sink ``sink_name``'s dead letter (its latest entry)."""
        found: dict[str, str] = {}
        for chunk in _chunks(keys):
            with self.spool.read() as conn:
                rows = conn.execute(
                    f"SELECT record_key, reason FROM dead_letters WHERE record_key IN "
                    f"({', '.join('?' * len(chunk))}) AND sink = ? ORDER BY id", (*chunk, sink_name)).fetchall()
            found.update((str(key), str(reason)) for key, reason in rows)
        return found


def _chunks(keys: Iterable[str], size: int = LOOKUP_CHUNK) -> Iterator[list[str]]:
    chunk: list[str] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
