"""The spool's SQLite connections: bounded by threads alive at once, and a failure to open one is retryable."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from traceexport.errors import ConfigError, SpoolUnavailableError
from traceexport.pipeline.connections import MAX_IDLE
from traceexport.pipeline.spool import Spool, SpoolRow


def row(key: str) -> SpoolRow:
    return SpoolRow(mask=1, key=key, type="message", app_id="app", trace_key=None, envelope="{}")


def test_short_lived_threads_do_not_accumulate_connections(tmp_path: Path) -> None:
    """500 threads, one after another in groups of 10, each writing and reading: connections stay few."""
    spool = Spool(tmp_path)
    spool.register_sinks(["s"])

    def one(n: int) -> None:
        spool.accept([row(f"k{n}")])
        spool.record_count()  # a statement outside any transaction: a connection held for the thread's life

    try:
        for group in range(50):
            threads = [threading.Thread(target=one, args=(group * 10 + i,)) for i in range(10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert spool.record_count() == 500
        assert spool._pool.open_count <= MAX_IDLE + 10 + 1, spool._pool.open_count
    finally:
        spool.close()


def test_a_thread_keeps_one_snapshot_inside_read(tmp_path: Path) -> None:
    """conn() inside read() is the block's connection, so a statement there sees the block's snapshot."""
    spool = Spool(tmp_path)
    try:
        with spool.read() as conn:
            assert spool.conn() is conn
        with spool.write() as conn:
            assert spool.conn() is conn
    finally:
        spool.close()


def test_no_connection_later_is_retryable_not_a_config_error(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the spool is open, failing to open another connection (no descriptor left) is SpoolUnavailableError."""
    spool = Spool(tmp_path)
    spool.register_sinks(["s"])

    def no_descriptor(*args: object, **kwargs: object) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(sqlite3, "connect", no_descriptor)
    errors: list[BaseException] = []

    def post() -> None:
        try:
            spool.accept([row("k")])
        except BaseException as exc:
            errors.append(exc)

    try:
        thread = threading.Thread(target=post)  # the main thread holds the only connection: it must open one
        thread.start()
        thread.join()
    finally:
        monkeypatch.undo()
        spool.close()
    assert len(errors) == 1 and isinstance(errors[0], SpoolUnavailableError), errors
    assert errors[0].retry_after > 0 and "retry later" in str(errors[0])


def test_an_unopenable_spool_at_start_is_a_config_error(tmp_path: Path) -> None:
    """A spool path that cannot be opened at all is still a start-up ConfigError."""
    (tmp_path / "spool.db").mkdir()
    with pytest.raises(ConfigError):
        Spool(tmp_path)
