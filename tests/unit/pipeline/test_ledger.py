"""The delivery ledger: one row per delivered record and sink with its payload hash, written with the cursor."""

from __future__ import annotations

import functools
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from pipeline_helpers import ScriptedSink, StandInMapping, fail_first, make_records, wait_for

from traceexport.pipeline import Pipeline, PipelineSettings, RetryPolicy, Route
from traceexport.pipeline.ledger import RetentionSweep, payload_digest, payload_hash
from traceexport.pipeline.ledger_reader import LedgerReader
from traceexport.pipeline.spool import _SCHEMA, Spool
from traceexport.records import Record
from traceexport.sinks.base import ExportResult, ItemFailure, Payload

QUICK = RetryPolicy(max_attempts=10**6, max_age=1e9, initial_backoff=0.001, max_backoff=0.01)
FAST = PipelineSettings(fsync=False, poll_interval=0.01, retry=QUICK)


def _pipe(tmp_path: Path, *sinks: ScriptedSink, settings: PipelineSettings = FAST) -> Pipeline:
    return Pipeline(tmp_path / "spool", [Route(s, StandInMapping()) for s in sinks], settings)


def _rows(spool: Spool) -> dict[tuple[int, str], tuple[bytes, int]]:
    """The ledger's rows by sink and record key (the test fails if one has two)."""
    rows = spool.conn().execute("SELECT sink, record_key, hash, acked FROM ledger").fetchall()
    assert len({(sink, key) for sink, key, _, _ in rows}) == len(rows)
    return {(sink, key): (bytes(digest), acked) for sink, key, digest, acked in rows}


def test_a_delivered_batch_writes_one_row_per_record_with_its_payload_hash(tmp_path: Path) -> None:
    """Each delivered record gets one ledger row for its sink: the sink's bit, the payload hash, whole seconds."""
    pipe = _pipe(tmp_path, ScriptedSink("a"), ScriptedSink("b"))
    records = make_records(3)
    pipe.accept(records)
    before = int(time.time())
    pipe.workers[0].step()
    rows = _rows(pipe.spool)
    bit = pipe.bits["a"]
    assert set(rows) == {(bit, r.key) for r in records}
    for r in records:
        digest, acked = rows[(bit, r.key)]
        assert digest == payload_digest(StandInMapping().map(r))
        assert len(digest) == 8
        assert before <= acked <= time.time()
    with LedgerReader(pipe.spool) as reader:
        got = reader.acknowledged("a", [r.key for r in records])
        assert {k: h for k, (h, _) in got.items()} == {r.key: payload_hash(StandInMapping().map(r)) for r in records}
        assert reader.acknowledged("b", [r.key for r in records]) == {}
    pipe.close()


def test_dead_lettered_and_retried_items_write_no_row(tmp_path: Path) -> None:
    """A record refused permanently or scheduled for retry is not in the ledger; the dead letter has its reason."""
    refused = ScriptedSink("refused", plan=fail_first(1, ItemFailure("bad payload", permanent=True)))
    flaky = ScriptedSink("flaky", plan=fail_first(1, ItemFailure("timeout", permanent=False)))
    pipe = _pipe(tmp_path, refused, flaky)
    records = make_records(2)
    pipe.accept(records)
    for worker in pipe.workers:
        worker.step()
    assert _rows(pipe.spool) == {}
    keys = [r.key for r in records]
    with LedgerReader(pipe.spool) as reader:
        assert reader.dead_letters("refused", keys) == dict.fromkeys(keys, "bad payload")
        assert reader.dead_letters("flaky", keys) == {}
    pipe.close()


def test_skipped_records_write_no_row(tmp_path: Path) -> None:
    """A record whose mapping produced nothing to send (skipped) is not ledgered."""

    class Nothing:
        fingerprint = None

        def map(self, record: object) -> list[Payload]:
            return []

    pipe = Pipeline(tmp_path / "spool", [Route(ScriptedSink("a"), Nothing())], FAST)
    pipe.accept(make_records(2))
    pipe.workers[0].step()
    assert pipe.metrics()["sinks"]["a"]["skipped"] == 2
    assert _rows(pipe.spool) == {}
    pipe.close()


def test_a_delivery_again_counts_over_the_earlier_one(tmp_path: Path) -> None:
    """Delivering the same record again (a replay, a backfill) adds a row, and the reader gives the latest."""

    class Versioned(StandInMapping):
        def __init__(self, version: int) -> None:
            super().__init__()
            self.version = version

        def map(self, record: Record) -> list[Payload]:
            return [Payload("event", {"key": record.key, "version": self.version}, record.key)]

    record = make_records(1)[0]
    for version in (1, 2, 3):
        pipe = Pipeline(tmp_path / "spool", [Route(ScriptedSink("a"), Versioned(version))], FAST)
        pipe.accept([record])
        pipe.workers[0].step()
        with LedgerReader(pipe.spool) as reader:
            (got,) = reader.acknowledged("a", [record.key]).values()
        assert got[0] == payload_hash(Versioned(version).map(record))
        assert pipe.spool.conn().execute("SELECT count(*) FROM ledger").fetchone()[0] == version
        pipe.close()


def test_a_record_dropped_while_its_batch_is_on_the_way_is_not_ledgered(tmp_path: Path) -> None:
    """A record drop_oldest deleted while its batch was being sent gets no ledger row, even if the send got through."""
    settings = PipelineSettings(fsync=False, poll_interval=0.01, retry=QUICK, max_bytes=1_500_000,
                                on_full="drop_oldest")
    pipe = _pipe(tmp_path, ScriptedSink("a", max_items=10), settings=settings)
    pipe.accept(make_records(10))
    worker = pipe.workers[0]
    batch = worker._collect(time.time())
    outcome = worker.deliver(batch)
    assert all(i.payload_hash is not None for i in outcome.delivered)
    accepted = 10
    while pipe.spool.conn().execute("SELECT ifnull(min(seq), 0) FROM records").fetchone()[0] <= batch[-1].seq:
        pipe.accept(make_records(20, start=accepted))
        accepted += 20
    worker.queue.commit(outcome)
    assert _rows(pipe.spool) == {}
    pipe.close()


def test_retention_sweep_deletes_only_rows_older_than_the_retention(tmp_path: Path) -> None:
    """A sweep step removes every row acknowledged before the retention, in bounded chunks, and keeps the rest."""
    from traceexport.pipeline import ledger

    spool = Spool(tmp_path / "spool", PipelineSettings(fsync=False))
    now = 1_000_000.0
    old = ledger.SWEEP_CHUNK + 7  # more than one chunk
    with spool.transaction() as conn:
        conn.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?)",
                         [(i % 2, f"old{i}", b"\0" * 8, int(now - 100 - i % 5)) for i in range(old)]
                         + [(i % 2, f"new{i}", b"\0" * 8, int(now - 10 + i)) for i in range(30)])
    sweep = RetentionSweep(retention=50, every=3600)
    assert sweep.step(spool, now, force=True) == old
    assert sweep.step(spool, now) == 0  # within its interval: nothing looked at
    left = spool.conn().execute("SELECT record_key, acked FROM ledger").fetchall()
    assert sorted(k for k, _ in left) == sorted(f"new{i}" for i in range(30))
    assert sweep.step(spool, now + 45, force=True) == 5
    spool.close()


def test_the_spool_sweep_steps_the_retention_and_retention_zero_writes_nothing(tmp_path: Path) -> None:
    """With ledger_retention 0 delivery writes no row, and the spool's sweep empties what an earlier run left."""
    pipe = _pipe(tmp_path, ScriptedSink("a"))
    pipe.accept(make_records(2))
    pipe.workers[0].step()
    with pipe.spool.transaction() as conn:  # acknowledged an hour from now: no second ticking over expires them
        conn.execute("UPDATE ledger SET acked = acked + 3600")
    pipe.close()
    off = PipelineSettings(fsync=False, poll_interval=0.01, retry=QUICK, ledger_retention=0)
    pipe = _pipe(tmp_path, ScriptedSink("a"), settings=off)
    assert len(_rows(pipe.spool)) == 2
    pipe.accept(make_records(2, start=5))
    pipe.workers[0].step()
    assert len(_rows(pipe.spool)) == 2  # the new deliveries wrote nothing
    with pipe.spool.transaction() as conn:  # acknowledged a while ago, not within this second
        conn.execute("UPDATE ledger SET acked = acked - 3610")
    pipe.spool.sweep(every=0)
    assert _rows(pipe.spool) == {}
    pipe.close()


def test_a_spool_made_without_the_ledger_gains_it(tmp_path: Path) -> None:
    """A spool written before the ledger existed gets its ledger file and table on opening, and ledgers deliveries."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    conn = sqlite3.connect(spool_dir / "spool.db")
    conn.executescript(_SCHEMA)
    conn.close()
    before = int(time.time())
    pipe = _pipe(tmp_path, ScriptedSink("a"))
    assert "ledger" in _tables(spool_dir / "ledger.db")
    assert "ledger" not in _tables(spool_dir / "spool.db")
    with LedgerReader(pipe.spool) as reader:
        started = reader.started_at()
    assert before <= started <= time.time()
    pipe.accept(make_records(2))
    pipe.workers[0].step()
    assert len(_rows(pipe.spool)) == 2
    pipe.close()
    again = Spool(spool_dir)
    with LedgerReader(again) as reader:
        assert reader.started_at() == started  # noted once, when the ledger began
    again.close()


def test_a_ledger_that_outlived_its_spool_file_is_not_read_as_the_new_spool_s(tmp_path: Path) -> None:
    """spool.db deleted (a spool reset by hand) while ledger.db stays: the new spool numbers its sinks afresh, so
    the old rows would read as another sink's acknowledgements (the audit would call records delivered that
    never were). The first sinks registered clear them and restart the ledger's clock; a spool that already
    has sinks keeps its rows."""
    spool_dir = tmp_path / "spool"
    pipe = _pipe(tmp_path, ScriptedSink("old"))
    records = make_records(3)
    pipe.accept(records)
    pipe.workers[0].step()
    pipe.close()
    for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
        (spool_dir / name).unlink(missing_ok=True)
    before = int(time.time())
    pipe = _pipe(tmp_path, ScriptedSink("new"))
    assert pipe.bits["new"] == 0  # the number "old" had
    with LedgerReader(pipe.spool) as reader:
        assert reader.acknowledged("new", [r.key for r in records]) == {}
        assert reader.started_at() >= before
    pipe.accept(records[:1])
    pipe.workers[0].step()
    pipe.close()
    pipe = _pipe(tmp_path, ScriptedSink("new"), ScriptedSink("added"))
    with LedgerReader(pipe.spool) as reader:
        assert set(reader.acknowledged("new", [r.key for r in records])) == {records[0].key}
    pipe.close()


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_lookups_go_in_chunks_and_take_the_latest_dead_letter(tmp_path: Path) -> None:
    """The reader answers for more keys than one query holds, and gives a record's latest dead-letter reason."""
    pipe = _pipe(tmp_path, ScriptedSink("a"))
    bit = pipe.bits["a"]
    keys = [f"message:{i}" for i in range(1203)]
    with pipe.spool.transaction() as conn:
        conn.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?)", [(bit, k, b"\xab" * 8, 5) for k in keys[::2]])
    with pipe.spool.transaction() as conn:
        conn.executemany("INSERT INTO dead_letters(sink, record_key, reason, permanent, attempts, last_attempt, "
                         "envelope) VALUES (?, ?, ?, 1, 1, 0, '{}')",
                         [("a", keys[1], "first"), ("a", keys[1], "second"), ("b", keys[3], "other sink")])
    with LedgerReader(pipe.spool) as reader:
        acked = reader.acknowledged("a", iter(keys))
        assert set(acked) == set(keys[::2])
        assert acked[keys[0]] == ("ab" * 8, 5)
        assert reader.dead_letters("a", iter(keys)) == {keys[1]: "second"}
        assert reader.acknowledged("unknown", keys) == {}
    pipe.close()


def test_the_hash_is_stable_across_processes_and_depends_on_content_only() -> None:
    """payload_hash is the same in another interpreter (another hash seed), ignores record_ref, and changes
    with any value, with the payloads' order and with the key order the mapping built (key order is content)."""
    body = {"a": 1, "b": {"x": [1, 2], "y": "é"}}
    one = [Payload("span", body, "k1", record_ref=3)]
    assert payload_hash(one) == payload_hash([Payload("span", dict(body), "k1", record_ref=7)])
    assert len(payload_hash(one)) == 16
    assert payload_hash(one) != payload_hash([Payload("span", {**body, "a": 2}, "k1")])
    assert payload_hash(one) != payload_hash([Payload("span", {"b": body["b"], "a": 1}, "k1")])
    two = [Payload("span", {"n": 1}, "k2"), Payload("span", {"n": 2}, "k3")]
    assert payload_hash(two) != payload_hash(two[::-1])
    code = ("from traceexport.pipeline.ledger import payload_hash; from traceexport.sinks.base import Payload; "
            "print(payload_hash([Payload('span', {'a': 1, 'b': {'x': [1, 2], 'y': '\\u00e9'}}, 'k1')]))")
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": os.pathsep.join(sys.path)}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert other.stdout.strip() == payload_hash(one)


def test_text_pydantic_will_not_write_still_hashes() -> None:
    """A lone surrogate in a body (which fast JSON refuses) still gets a stable hash of its own."""
    odd = [Payload("e", {"text": "\ud800"})]
    assert payload_hash(odd) == payload_hash([Payload("e", {"text": "\ud800"})])
    assert payload_hash(odd) != payload_hash([Payload("e", {"text": "\ud801"})])


def test_a_large_record_hashes_like_the_whole_of_its_json() -> None:
    """Hashing in slices gives the blake2b of the whole JSON, for payloads far larger than one slice."""
    import hashlib

    from traceexport._json import dumps_bytes

    big = [Payload("span", {"text": "x" * 50_000, "n": list(range(1000))}, "k")]
    whole = hashlib.blake2b(dumps_bytes([["span", "k", big[0].body]]), digest_size=8).hexdigest()
    assert payload_hash(big) == whole


def test_a_failed_then_delivered_record_is_ledgered_once(tmp_path: Path) -> None:
    """A record retried after a failure is ledgered when its retry gets through."""
    pipe = _pipe(tmp_path, ScriptedSink("a", plan=fail_first(1, ItemFailure("down", permanent=False))))
    pipe.accept(make_records(1))
    pipe.start()
    assert wait_for(lambda: len(_rows(pipe.spool)) == 1)
    pipe.close()


def test_export_result_warnings_do_not_matter_to_the_ledger(tmp_path: Path) -> None:
    """A batch accepted with a warning (an OTLP partial success note) is ledgered like any delivered batch."""
    def plan(payloads: object, number: int) -> ExportResult:
        return ExportResult(warnings=["note"])

    pipe = _pipe(tmp_path, ScriptedSink("a", plan=plan))
    pipe.accept(make_records(2))
    pipe.workers[0].step()
    assert len(_rows(pipe.spool)) == 2
    pipe.close()


def test_the_delivery_process_ledgers_with_the_hash_of_the_real_mapping(tmp_path: Path) -> None:
    """Deliveries made by the child process are ledgered with the hash the sink's mapping gives each record."""
    from test_delivery_process import file_routes

    from traceexport.mapping import load_mapping

    factory = functools.partial(file_routes, str(tmp_path / "out"))
    pipe = Pipeline(tmp_path / "spool", factory(), PipelineSettings(delivery_process=True, poll_interval=0.05),
                    route_factory=factory)
    records = make_records(5)
    with pipe:
        pipe.start()
        pipe.accept(records)
        assert pipe.wait_idle(60)
        with LedgerReader(pipe.spool) as reader:
            acked = reader.acknowledged("file", [r.key for r in records])
    mapping = load_mapping("otlp")
    assert {k: h for k, (h, _) in acked.items()} == {r.key: payload_hash(mapping.map(r)) for r in records}


def test_a_reader_sees_the_deliveries_of_its_window_and_a_margin_before(tmp_path: Path) -> None:
    """A reader for records made from ``since`` on reads deliveries from an hour before it, not older ones."""
    from traceexport.pipeline.ledger_reader import CLOCK_MARGIN

    pipe = _pipe(tmp_path, ScriptedSink("a"))
    bit, since = pipe.bits["a"], 1_000_000
    with pipe.spool.transaction() as conn:
        conn.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?)",
                         [(bit, "too-old", b"\x01" * 8, since - CLOCK_MARGIN - 1),
                          (bit, "skewed", b"\x02" * 8, since - CLOCK_MARGIN + 1),
                          (bit, "inside", b"\x03" * 8, since + 10)])
    with LedgerReader(pipe.spool, since=since) as reader:
        assert set(reader.acknowledged("a", ["too-old", "skewed", "inside"])) == {"skewed", "inside"}
    with LedgerReader(pipe.spool) as everything:
        assert len(everything.acknowledged("a", ["too-old", "skewed", "inside"])) == 3
    pipe.close()


def test_a_ledger_keyed_by_record_becomes_rows_in_delivery_order(tmp_path: Path) -> None:
    """A ledger.db of the first layout (one row per record, keyed) keeps its rows, and a record delivered again
    is ledgered instead of failing its commit on the key."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    conn = sqlite3.connect(spool_dir / "ledger.db")
    conn.execute("CREATE TABLE ledger(sink INTEGER NOT NULL, record_key TEXT NOT NULL, hash BLOB NOT NULL, "
                 "acked INTEGER NOT NULL, PRIMARY KEY(sink, record_key)) WITHOUT ROWID")
    record = make_records(1)[0]
    conn.execute("INSERT INTO ledger VALUES (0, ?, ?, 5)", (record.key, b"\x01" * 8))
    conn.commit()
    conn.close()
    conn = sqlite3.connect(spool_dir / "spool.db")  # its spool, which numbered "a" 0 (a ledger alone is stale)
    conn.executescript(_SCHEMA)
    conn.execute("INSERT INTO sinks(name, bit) VALUES ('a', 0)")
    conn.commit()
    conn.close()
    pipe = _pipe(tmp_path, ScriptedSink("a"))
    assert pipe.bits["a"] == 0
    assert pipe.spool.conn().execute("SELECT sink, record_key, acked FROM ledger").fetchall() == [(0, record.key, 5)]
    pipe.accept([record])
    pipe.workers[0].step()
    assert pipe.metrics()["sinks"]["a"]["exported"] == 1
    with LedgerReader(pipe.spool) as reader:
        assert reader.acknowledged("a", [record.key])[record.key][0] == payload_hash(StandInMapping().map(record))
    pipe.close()
