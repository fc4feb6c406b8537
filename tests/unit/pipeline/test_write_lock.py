"""Taking the spool's write lock by polling: waits for the holder, fails as SQLite would once the time is up."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from traceexport.pipeline.write_lock import BUSY_TIMEOUT, begin_immediate, is_busy


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def _busy_timeout(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA busy_timeout").fetchone()[0])


def test_a_waiting_writer_gets_the_lock_once_the_holder_commits(tmp_path: Path) -> None:
    """A writer that finds the lock held keeps trying and begins its transaction after the holder's commit."""
    holder, waiter = _connect(tmp_path / "db"), _connect(tmp_path / "db")
    holder.execute("CREATE TABLE t(x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    began = threading.Event()
    failures: list[BaseException] = []

    def wait_for_lock() -> None:
        try:
            begin_immediate(waiter)
            began.set()
        except BaseException as exc:  # reported below
            failures.append(exc)

    thread = threading.Thread(target=wait_for_lock)
    thread.start()
    assert not began.wait(0.3)  # still held
    holder.execute("COMMIT")
    thread.join(30)
    assert not failures and began.is_set()
    assert waiter.in_transaction
    assert waiter.execute("SELECT x FROM t").fetchall() == [(1,)]  # it sees the holder's commit
    waiter.execute("COMMIT")
    assert _busy_timeout(waiter) == int(BUSY_TIMEOUT * 1000)


def test_a_lock_held_past_the_timeout_fails_as_sqlite_would(tmp_path: Path) -> None:
    """When the lock stays held, the wait ends with SQLite's own 'database is locked' and no transaction."""
    holder, waiter = _connect(tmp_path / "db"), _connect(tmp_path / "db")
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked") as raised:
        begin_immediate(waiter, timeout=0.05)
    assert is_busy(raised.value)
    assert not waiter.in_transaction
    assert _busy_timeout(waiter) == int(BUSY_TIMEOUT * 1000)
    holder.execute("ROLLBACK")


def test_an_error_other_than_a_held_lock_is_raised_at_once(tmp_path: Path) -> None:
    """Beginning inside a transaction is a mistake, not a lock to wait for: it raises on the first try."""
    conn = _connect(tmp_path / "db")
    conn.execute("BEGIN")
    with pytest.raises(sqlite3.OperationalError, match="within a transaction") as raised:
        begin_immediate(conn, timeout=30)
    assert not is_busy(raised.value)
    conn.execute("ROLLBACK")
