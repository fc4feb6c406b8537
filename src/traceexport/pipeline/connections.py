"""SQLite connections shared by the threads of one process, bounded by how many threads use them at once.

A thread gets a connection in one of two ways:

* :meth:`ConnectionPool.lease` for one operation (a transaction): taken from the idle connections (or
  opened) and given back when the block ends, so short-lived threads (one per HTTP connection) cost no
  connection of their own;
* :meth:`ConnectionPool.current` for code that runs statements one by one: inside a lease it is the
  leased connection (one snapshot, one transaction), otherwise a connection held for the thread's
  life, as long-lived worker threads want. It goes back to the idle connections once the thread has
  ended (looked at whenever another thread needs one), so dead threads never accumulate connections.

At most ``max_idle`` idle connections are kept open; the rest are closed when given back.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

MAX_IDLE = 8


class ConnectionPool:
    """Connections opened by ``open``, leased per operation or held per live thread."""

    def __init__(self, open: Callable[[], sqlite3.Connection], *, max_idle: int = MAX_IDLE) -> None:
        self._open_connection = open
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._local = threading.local()
        self._idle: list[sqlite3.Connection] = []
        self._held: dict[threading.Thread, sqlite3.Connection] = {}
        self._every: set[sqlite3.Connection] = set()

    @property
    def open_count(self) -> int:
        """Connections open now (idle, leased or held)."""
        with self._lock:
            return len(self._every)

    def current(self) -> sqlite3.Connection:
        """The connection this thread is using: its lease's, else one held until the thread ends."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        self._reclaim_from_ended_threads()
        conn = self._take()
        with self._lock:
            self._held[threading.current_thread()] = conn
        self._local.conn = conn
        return conn

    @contextmanager
    def lease(self) -> Iterator[sqlite3.Connection]:
        """A connection for the block: this thread's own if it has one, else an idle one given back after."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:  # nested, or a thread that holds a connection
            yield conn
            return
        conn = self._take()
        self._local.conn = conn
        try:
            yield conn
        finally:
            self._local.conn = None
            self._give_back(conn)

    def close(self) -> None:
        """Close every connection (leased ones included); the pool opens new ones if used again."""
        with self._lock:
            every, self._every = self._every, set()
            self._idle, self._held = [], {}
        for conn in every:
            with suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def _take(self) -> sqlite3.Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        conn = self._open_connection()
        with self._lock:
            self._every.add(conn)
        return conn

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn not in self._every:  # closed by close() meanwhile
                return
        if conn.in_transaction:  # a block left without COMMIT/ROLLBACK: never hand on an open transaction
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                self._discard(conn)
                return
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        self._discard(conn)

    def _discard(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            self._every.discard(conn)
        with suppress(sqlite3.Error):
            conn.close()

    def _reclaim_from_ended_threads(self) -> None:
        with self._lock:
            ended = [thread for thread in self._held if not thread.is_alive()]
            conns = [self._held.pop(thread) for thread in ended]
        for conn in conns:
            self._give_back(conn)


__all__ = ["MAX_IDLE", "ConnectionPool"]
