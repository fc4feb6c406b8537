"""The SQLite spool: durable accept, size limit, cleanup, resume after reopening."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_helpers import ScriptedSink, StandInMapping, make_records

from traceexport.errors import SpoolFullError
from traceexport.pipeline import Pipeline, PipelineSettings, Route
from traceexport.pipeline.premapped import is_premapped
from traceexport.pipeline.spool import Spool
from traceexport.pipeline.worker import BACKLOG_REQUESTS

FAST = PipelineSettings(fsync=False, poll_interval=0.01)


def _pipe(tmp_path: Path, *sinks: ScriptedSink, settings: PipelineSettings = FAST) -> Pipeline:
    return Pipeline(tmp_path / "spool", [Route(s, StandInMapping()) for s in sinks], settings)


def test_accepted_records_survive_reopening(tmp_path: Path) -> None:
    """Records accepted by one pipeline are pending for the next pipeline opened on the same directory."""
    first = _pipe(tmp_path, ScriptedSink("a"))
    first.accept(make_records(5))
    first.close()
    second = _pipe(tmp_path, ScriptedSink("a"))
    assert second.pending() == {"a": 5}
    assert second.metrics()["sinks"]["a"]["accepted"] == 5
    second.close()


def test_sequence_numbers_never_go_back_after_deletes(tmp_path: Path) -> None:
    """Once delivered records are swept, new records still get higher sequence numbers than the cursor."""
    sink = ScriptedSink("a")
    pipe = _pipe(tmp_path, sink)
    pipe.accept(make_records(3))
    pipe.workers[0].step()
    pipe.spool.sweep(every=0)
    assert pipe.spool.record_count() == 0
    pipe.accept(make_records(2, start=10))
    pipe.workers[0].step()
    assert len(sink.delivered) == 5
    pipe.close()


def test_full_spool_refuses_with_retryable_error_and_keeps_what_it_has(tmp_path: Path) -> None:
    """Over max_bytes, accept raises SpoolFullError with retry_after and stores nothing of that call."""
    settings = PipelineSettings(fsync=False, max_bytes=1_500_000, full_retry_after=3.0)
    pipe = _pipe(tmp_path, ScriptedSink("a"), settings=settings)
    accepted = 0
    with pytest.raises(SpoolFullError) as err:
        for start in range(0, 1000, 5):
            pipe.accept(make_records(5, start=start))
            accepted += 5
    assert err.value.retry_after == 3.0
    assert accepted > 0
    assert pipe.pending() == {"a": accepted}
    pipe.close()


def test_a_spool_full_of_delivered_records_makes_room_instead_of_refusing(tmp_path: Path) -> None:
    """Once the records filling the spool are delivered, the next accept deletes them and is taken, without
    waiting for the once-a-second sweep; records still owed keep the spool full."""
    settings = PipelineSettings(fsync=False, max_bytes=1_500_000, full_retry_after=3.0)
    sink = ScriptedSink("a", max_items=10_000)
    pipe = _pipe(tmp_path, sink, settings=settings)
    accepted = 0
    with pytest.raises(SpoolFullError):
        for start in range(0, 1000, 5):
            pipe.accept(make_records(5, start=start))
            accepted += 5
    with pytest.raises(SpoolFullError):  # nothing delivered yet: nothing to delete
        pipe.accept(make_records(5, start=5000))
    pipe.spool.sweep()  # the worker's own sweep has just run: the next one waits a second
    pipe.workers[0].step()
    assert len(sink.delivered) == accepted and pipe.spool.record_count() == accepted
    pipe.accept(make_records(5, start=5000))
    assert pipe.spool.record_count() == 5 and pipe.pending() == {"a": 5}
    pipe.close()


def test_drop_oldest_counts_every_drop(tmp_path: Path) -> None:
    """With on_full=drop_oldest the oldest records make room and each drop is counted for its sink."""
    settings = PipelineSettings(fsync=False, max_bytes=1_500_000, on_full="drop_oldest")
    pipe = _pipe(tmp_path, ScriptedSink("a"), settings=settings)
    for start in range(0, 800, 5):
        pipe.accept(make_records(5, start=start))
    figures = pipe.metrics()["sinks"]["a"]
    assert figures["dropped"] > 0
    assert figures["accepted"] == 800
    assert figures["queue_depth"] + figures["dropped"] == 800
    pipe.close()


def test_sweep_keeps_records_another_sink_still_owes(tmp_path: Path) -> None:
    """A record delivered to one sink stays in the spool until the other routed sink is done with it."""
    fast, slow = ScriptedSink("fast"), ScriptedSink("slow")
    pipe = _pipe(tmp_path, fast, slow)
    pipe.accept(make_records(4))
    pipe.workers[0].step()
    pipe.spool.sweep(every=0)
    assert pipe.spool.record_count() == 4
    pipe.workers[1].step()
    pipe.spool.sweep(every=0)
    assert pipe.spool.record_count() == 0
    pipe.close()


def test_missing_spool_is_reported_without_creating_one(tmp_path: Path) -> None:
    """Opening a spool for reading where none exists says so and creates nothing."""
    from traceexport.errors import ConfigError

    with pytest.raises(ConfigError, match="no spool at"):
        Spool(tmp_path / "nothing", create=False)
    assert not (tmp_path / "nothing").exists()


def test_wait_idle_sees_records_after_a_moved_cursor(tmp_path: Path) -> None:
    """wait_idle is False while records beyond an advanced cursor are pending, True once delivered."""
    sink = ScriptedSink("a", max_items=2)
    pipe = _pipe(tmp_path, ScriptedSink("z"), sink)
    count = 2 * BACKLOG_REQUESTS + 1  # one more than a step of sink "a" takes
    pipe.accept(make_records(count))
    pipe.workers[1].step()
    pipe.workers[0].step()
    assert not pipe.wait_idle(0)
    pipe.start()
    assert pipe.wait_idle(10)
    assert len(sink.delivered) == count
    pipe.close()


def test_a_new_spool_uses_large_pages_and_an_old_small_page_spool_still_opens(tmp_path: Path) -> None:
    """New spool files get 32 KiB pages; a spool made with SQLite's default 4 KiB pages keeps working."""
    import sqlite3

    new = Spool(tmp_path / "new")
    assert new.conn().execute("PRAGMA page_size").fetchone()[0] == 32768
    new.close()
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    sqlite3.connect(old_dir / "spool.db").execute("PRAGMA page_size=4096").connection.execute(
        "CREATE TABLE t(x)").connection.close()
    pipe = Pipeline(old_dir, [Route(ScriptedSink("a"), StandInMapping())], FAST)
    pipe.accept(make_records(2))
    assert pipe.pending() == {"a": 2}
    assert pipe.spool.conn().execute("PRAGMA page_size").fetchone()[0] == 4096
    pipe.close()


def test_the_spool_stores_an_envelope_as_it_arrived(tmp_path: Path) -> None:
    """A record parsed from a JSON line is stored as that line's text, not re-encoded; a bare one is encoded."""
    import json

    from pipeline_helpers import message_envelope

    from traceexport.records import parse_records
    from traceexport.records.parse import Record as ParsedRecord

    line = json.dumps(message_envelope(1), indent=None, separators=(", ", ": "))
    bare = json.dumps(message_envelope(2)["trace_info"] | {"trace_info_type": "MessageTraceInfo"})
    records = [r for r in parse_records(line + "\n" + bare) if isinstance(r, ParsedRecord)]
    assert [r.raw is not None for r in records] == [True, False]
    pipe = _pipe(tmp_path, ScriptedSink("a"))
    pipe.accept(records)
    stored = [row[0] for row in pipe.spool.conn().execute("SELECT envelope FROM records ORDER BY seq")]
    assert stored[0] == line
    assert json.loads(stored[1])["trace_info_type"] == "MessageTraceInfo"
    pipe.close()


def test_a_spool_from_before_the_compact_column_is_upgraded(tmp_path: Path) -> None:
    """A spool written without the later columns (``compact``, ``last_seq``, ``saved``) opens, gains them, and
    delivers its pending records."""
    import sqlite3

    old = tmp_path / "spool"
    old.mkdir()
    conn = sqlite3.connect(old / "spool.db")
    conn.executescript(
        "CREATE TABLE records(seq INTEGER PRIMARY KEY AUTOINCREMENT, mask INTEGER NOT NULL, key TEXT NOT NULL, "
        "type TEXT NOT NULL, app_id TEXT, trace_key TEXT, received REAL NOT NULL, envelope TEXT NOT NULL);"
        "CREATE TABLE sinks(name TEXT PRIMARY KEY, bit INTEGER NOT NULL UNIQUE, cursor INTEGER NOT NULL DEFAULT 0);")
    record = make_records(1)[0]
    conn.execute("INSERT INTO sinks VALUES ('a', 0, 0)")
    conn.execute("INSERT INTO records(mask, key, type, app_id, trace_key, received, envelope) "
                 "VALUES (1, ?, 'message', NULL, 't', 0, ?)", (record.key, record.envelope_text()))
    conn.commit()
    conn.close()
    sink = ScriptedSink("a")
    pipe = _pipe(tmp_path, sink)
    pipe.workers[0].step()
    assert sink.delivered == [record.key]
    pipe.close()


def test_compact_forms_are_stored_only_while_delivery_lags_within_bounds(tmp_path: Path) -> None:
    """With a delivery process, records get a compact form only while the sink is between the two lags behind."""
    import functools

    from test_delivery_process import file_routes

    factory = functools.partial(file_routes, str(tmp_path / "out"))
    settings = PipelineSettings(fsync=False, delivery_process=True, compact_min_lag=2, compact_max_lag=6)
    pipe = Pipeline(tmp_path / "spool", factory(), settings, route_factory=factory)  # never started
    for start in range(0, 10, 2):
        pipe.accept(make_records(2, start=start))
    stored = [row[0] for row in pipe.spool.conn().execute("SELECT compact FROM records ORDER BY seq")]
    # lag before each accept: 0, 2, 4, 6, 8 records; growing each time: the payloads, mapped ahead
    assert [blob is not None for blob in stored] == [False, False, True, True, True, True, False, False, False, False]
    assert all(is_premapped(blob) for blob in stored[2:6])
    pipe.close()


def test_payloads_are_mapped_ahead_only_while_the_backlog_grows(tmp_path: Path) -> None:
    """Within the lags, a batch gets its payloads mapped ahead when the backlog grew since the last batch
    (delivery is the slower side), else the compact form; ``always_compact`` (backfill) chooses alike."""
    import functools

    from test_delivery_process import file_routes

    factory = functools.partial(file_routes, str(tmp_path / "out"))
    settings = PipelineSettings(fsync=False, delivery_process=True, compact_min_lag=2, compact_max_lag=100)
    for name, always in (("lagging", False), ("backfill", True)):
        pipe = Pipeline(tmp_path / name, factory(), settings, route_factory=factory, always_compact=always)
        pipe.accept(make_records(4))

        def forms(pipe: Pipeline = pipe) -> tuple[bool, bool]:
            stage = pipe.stager()
            return stage.compact, stage.premap

        assert forms() == (True, True)  # 0 → 4 behind
        assert forms() == (True, False)  # still 4: no longer growing
        with pipe.spool.write() as conn:
            conn.execute("UPDATE sinks SET cursor = 2")
        assert forms() == (True, False)  # 2: delivery caught up some
        pipe.accept(make_records(2, start=4))
        assert forms() == (True, True)  # 4 again
        pipe.close()


def test_always_compact_stores_the_compact_form_at_any_lag(tmp_path: Path) -> None:
    """``always_compact`` (backfill: history makes its backlog on purpose) stores the compact form with no lag yet
    and past ``compact_max_lag``; a pipeline delivering in this process has no use for it and stores none."""
    import functools

    from test_delivery_process import file_routes

    factory = functools.partial(file_routes, str(tmp_path / "out"))
    settings = PipelineSettings(fsync=False, delivery_process=True, compact_min_lag=2, compact_max_lag=4)
    pipe = Pipeline(tmp_path / "spool", factory(), settings, route_factory=factory, always_compact=True)
    for start in range(0, 10, 2):
        pipe.accept(make_records(2, start=start))
    stored = [row[0] is not None for row in pipe.spool.conn().execute("SELECT compact FROM records ORDER BY seq")]
    assert stored == [True] * 10
    pipe.close()
    local = Pipeline(tmp_path / "local", factory(), FAST, always_compact=True)
    assert not local.always_compact and local.stager().compact is False
    local.close()


def test_staged_rows_are_stored_as_the_records_would_be(tmp_path: Path) -> None:
    """Records staged one by one (as HTTP ingest does while parsing) are stored like records accepted whole:
    with their compact form while it is wanted (whole records needed), from heads when it is not, and
    delivered from memory when this process delivers."""
    import functools

    from test_delivery_process import file_routes

    from traceexport.records import head_from_obj

    factory = functools.partial(file_routes, str(tmp_path / "out"))
    for name, min_lag in (("compact", 0), ("heads", 10**9)):
        settings = PipelineSettings(fsync=False, delivery_process=True, compact_min_lag=min_lag,
                                    compact_max_lag=10**12)
        pipe = Pipeline(tmp_path / name, factory(), settings, route_factory=factory)  # never started
        stage = pipe.stager()
        assert stage.full == (name == "compact")
        records = make_records(3)
        staged = [stage(r if stage.full else head_from_obj(r.envelope)) for r in records]
        assert all(item.record is None for item in staged)  # the delivery process parses (or reads compact)
        pipe.accept(staged)
        pipe.accept(make_records(3, start=3))
        rows = pipe.spool.conn().execute("SELECT key, envelope, compact IS NOT NULL FROM records ORDER BY seq")
        expected = [(r.key, r.envelope_text(), name == "compact") for r in make_records(6)]
        assert [(key, json.loads(text), has) for key, text, has in rows] == [
            (key, json.loads(text), has) for key, text, has in expected]
        pipe.close()
    sink = ScriptedSink("a")
    local = _pipe(tmp_path / "local", sink)
    assert local.stager().full
    local.accept([local.stager()(record) for record in make_records(2)])
    local.workers[0].step()
    assert sink.delivered == [r.key for r in make_records(2)]
    local.close()


def test_a_sink_removed_from_the_config_keeps_only_what_it_was_owed(tmp_path: Path) -> None:
    """Records accepted after a sink left the config are swept once delivered; the removed sink's own
    undelivered records stay (nothing lost), so the spool does not grow until it refuses input."""
    first = _pipe(tmp_path, ScriptedSink("a"), ScriptedSink("gone"))
    first.accept(make_records(3))
    first.close()
    sink = ScriptedSink("a")
    pipe = _pipe(tmp_path, sink)
    for start in range(100, 600, 100):
        pipe.accept(make_records(100, start=start))
        while pipe.workers[0].step():
            pass
        pipe.spool.sweep(every=0, scan_every=3600)
    assert len(sink.delivered) == 503
    assert pipe.spool.record_count() == 3  # what "gone" was owed before it was removed
    pipe.close()
    assert Pipeline(tmp_path / "spool", [Route(ScriptedSink("gone"), StandInMapping())], FAST).pending() == {"gone": 3}


def test_unowed_ranges_are_the_gaps_between_what_sinks_still_owe() -> None:
    """Ranges above the slowest cursor that lie outside every (cursor, last_seq] are free to delete."""
    from traceexport.pipeline.spool import _unowed_ranges

    assert _unowed_ranges(0, [(0, 3), (100, 500)]) == [(3, 100)]
    assert _unowed_ranges(0, [(0, 3), (203, 203)]) == [(3, 203)]
    assert _unowed_ranges(10, [(10, 50), (20, 40), (60, 70), (80, 80)]) == [(50, 60), (70, 80)]
    assert _unowed_ranges(5, [(5, 5)]) == []
