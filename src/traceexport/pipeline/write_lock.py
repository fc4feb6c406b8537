"""Taking the spool's write lock (``BEGIN IMMEDIATE``) by polling for it, not through SQLite's busy handler.

Several writers share the lock: serve's HTTP threads inserting, its delivery process committing each batch,
the sweep and the checkpoints. SQLite's busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 and
then 100 ms between tries, so a writer that missed the lock a few times slept on through the gaps between
the others' transactions: with ingest fast, the delivery process spent a fifth of its time waiting to
commit. Here a waiting writer tries again after 0.2 ms, doubling up to every 2 ms, for as long as the
connection's own timeout allows, and then fails the way SQLite would ("database is locked").
"""

from __future__ import annotations

import sqlite3
import time

# The connections' busy timeout (seconds): how long any statement, and so this wait, may wait for a lock.
BUSY_TIMEOUT = 60.0
POLL_FIRST = 0.0002
POLL_MAX = 0.002
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def begin_immediate(conn: sqlite3.Connection, timeout: float = BUSY_TIMEOUT) -> None:
    """``BEGIN IMMEDIATE`` on ``conn``, waiting up to ``timeout`` seconds for the write lock.

    The connection's busy timeout is off while it polls and ``BUSY_TIMEOUT`` again afterwards. Raises
    the last ``sqlite3.OperationalError`` once the time is up, and any other error at once.
    """
    conn.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + timeout
        pause = POLL_FIRST
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, POLL_MAX)
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLite saying another connection holds a lock it needs."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BUSY_CODES
