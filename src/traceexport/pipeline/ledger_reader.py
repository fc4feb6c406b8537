"""The audit's view of a spool's delivery ledger and dead letter: batched lookups by record key.

The ledger is kept in delivery order (:mod:`traceexport.pipeline.ledger`), not by key, so a reader first
gathers the deliveries of its time window, the latest per sink and record, into a temporary table keyed
by record, on a connection of its own; SQLite keeps that table on disk (``temp_store=FILE``), so memory
stays constant however many records the window holds (building it takes about 3 s per million
deliveries). Lookups then go :data:`LOOKUP_CHUNK` keys per query.

An audit of the records Dify created from ``since`` on needs only the deliveries from ``since`` on (a
record is delivered after it was made); :data:`CLOCK_MARGIN` more covers the clocks of Dify's database and
this host disagreeing. One reader answers from the ledger as it was when first asked: use one per audit
run, and close it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Protocol

from traceexport.chunked import chunked
from traceexport.pipeline.ledger import LEDGER_FILE

LOOKUP_CHUNK = 500  # keys per query: bounded statements and memory, however many records an audit covers
CLOCK_MARGIN = 3600.0  # seconds of deliveries read before ``since``


class _Spool(Protocol):
    """What the reader needs of a spool (structural: the audit may hand in a stand-in)."""

    @property
    def dir(self) -> Path:
        """The spool directory (``ledger.db`` is there)."""
        ...

    def read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction on the spool."""
        ...

    def sink_bits(self) -> dict[str, int]:
        """Every sink the spool has tracked, by name."""
        ...


class LedgerReader:
    """Which records each sink acknowledged (with their payload hash) or dead-lettered (with the reason)."""

    def __init__(self, spool: _Spool, since: float | None = None) -> None:
        self.spool = spool
        self.since = since  # None: every delivery the ledger still holds
        self._conn: sqlite3.Connection | None = None

    def acknowledged(self, sink_name: str, keys: Iterable[str]) -> dict[str, tuple[str, int]]:
        """``{record_key: (hash_hex, acked_at)}`` for the ``keys`` sink ``sink_name`` acknowledged (latest
        delivery), within the reader's window."""
        bit = self.spool.sink_bits().get(sink_name)
        found: dict[str, tuple[str, int]] = {}
        if bit is None:
            return found
        conn = self._window()
        for chunk in chunked(keys, LOOKUP_CHUNK):
            rows = conn.execute(f"SELECT record_key, hash, acked FROM temp.acks WHERE sink = ? AND record_key IN "
                                f"({', '.join('?' * len(chunk))})", (bit, *chunk)).fetchall()
            found.update((key, (bytes(digest).hex(), int(acked))) for key, digest, acked in rows)
        return found

    def dead_letters(self, sink_name: str, keys: Iterable[str]) -> dict[str, str]:
        """``{record_key: reason}`` for the ``keys`` in sink ``sink_name``'s dead letter (its latest entry)."""
        found: dict[str, str] = {}
        for chunk in chunked(keys, LOOKUP_CHUNK):
            with self.spool.read() as conn:
                rows = conn.execute(
                    f"SELECT record_key, reason FROM dead_letters WHERE record_key IN "
                    f"({', '.join('?' * len(chunk))}) AND sink = ? ORDER BY id", (*chunk, sink_name)).fetchall()
            found.update((str(key), str(reason)) for key, reason in rows)
        return found

    def started_at(self) -> int:
        """When this spool's ledger began (Unix seconds): deliveries before then left no row, so an audit
        should not look at records older than that (nor older than ``ledger.retention``)."""
        row = self._connection().execute("SELECT value FROM meta WHERE name = 'started'").fetchone()
        return int(row[0]) if row is not None else int(time.time())

    def close(self) -> None:
        """Drop the window and close the reader's connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> LedgerReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.spool.dir / LEDGER_FILE, timeout=60.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA temp_store=FILE")
            self._conn = conn
        return self._conn

    def _window(self) -> sqlite3.Connection:
        """The connection holding ``temp.acks``: the latest delivery per sink and record in the window."""
        conn = self._connection()
        if conn.execute("SELECT 1 FROM temp.sqlite_master WHERE name = 'acks'").fetchone() is None:
            start = int(self.since - CLOCK_MARGIN) if self.since is not None else 0
            conn.execute("CREATE TEMP TABLE acks(sink INTEGER, record_key TEXT, hash BLOB, acked INTEGER, "
                         "seq INTEGER, PRIMARY KEY(sink, record_key)) WITHOUT ROWID")
            # max(rowid) picks each group's last row for the other columns (SQLite's rule for min/max).
            conn.execute("INSERT INTO temp.acks SELECT sink, record_key, hash, acked, max(rowid) FROM main.ledger "
                         "WHERE acked >= ? GROUP BY sink, record_key", (start,))
        return conn


