"""Backfill at volume from real Dify's tables: killed with SIGKILL part-way and run again, it delivers every record
(what the spool held, then the rows after the checkpoint), re-sending at most a page and an in-flight batch; a
finished job says so and sends nothing until ``--restart``.

The rows are the driver's seeded ones copied in SQL (``bulk.py``) into two apps of their own; the records a
backend must hold are computed from those rows, and a backend's records are told from the spans it received
(each record's root span: its type and Dify ids are attributes, its span id derives from them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.realdify.bulk import Bulk, expected_records, populate, remove
from tests.realdify.conftest import Backends, DifyStack
from tests.support.postgres_server import PostgresServer
from tests.support.processes import python_env, wait_until
from traceexport.mapping.ids import span_id_hex

PAGE = 200
PAGE_RECORDS = 2 * PAGE  # the most records a page of rows makes here: a message and its tool call per row
FILE_BATCH = 1000  # the file sink's largest batch: what a kill between its write and the cursor's commit re-sends
Key = tuple[str, ...]


BulkRows = Callable[[int, int], tuple[str, Bulk, set[Key]]]


@pytest.fixture
def bulk_rows(stack: DifyStack, postgres: PostgresServer) -> Iterator[BulkRows]:
    """Seed Dify's rows and copy them into so many messages and runs (the URL, the bulk, its records); the copies
    are deleted afterwards, as the session's database is shared."""
    url = postgres.url(password=postgres._password, database=stack.settings["DB_DATABASE"])
    made: list[Bulk] = []

    def make(messages: int, runs: int) -> tuple[str, Bulk, set[Key]]:
        ids = stack.run([{"op": "seed"}])[0]
        with psycopg.connect(url, autocommit=True) as conn:
            made.append(populate(conn, ids, messages=messages, runs=runs))
            expected = expected_records(conn, made[-1])
        assert len(expected) == made[-1].records
        return url, made[-1], expected

    yield make
    with psycopg.connect(url, autocommit=True) as conn:
        for bulk in made:
            remove(conn, bulk)


def record_of(span_id: str, attributes: Mapping[str, Any]) -> Key | None:
    """The record whose root span this is, or None for a child span (LLM call, workflow node)."""
    kind = attributes.get("dify.record.type")
    run, message = attributes.get("dify.workflow_run.id"), attributes.get("dify.message.id")
    if kind == "workflow" and span_id == span_id_hex(str(run), "workflow"):
        return ("workflow", str(run))
    if kind == "message" and span_id == span_id_hex(str(message), "message"):
        return ("message", str(message))
    if kind == "tool":
        return ("tool", str(message), str(attributes.get("tool.name")))
    return None


def deliveries(spans: Iterable[Mapping[str, Any]]) -> Counter[Key]:
    """How many times each record's root span arrived."""
    keys = (record_of(s["spanId"], s["attributes"]) for s in spans)
    return Counter(k for k in keys if k is not None)


def file_spans(out: Path) -> list[dict[str, Any]]:
    """The spans the file sink wrote (every line must be whole JSON: a torn line would hide a record)."""
    path = out / "otlp.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line)["body"] for line in lines]


def command(url: str, bulk: Bulk, spool: Path, sinks: str, *extra: str) -> list[str]:
    """``traceexport backfill`` of the bulk apps, as a user runs it (pages of 200 rows)."""
    return [sys.executable, "-m", "traceexport", "backfill", "--dify-db", url, "--apps", bulk.apps, "--to", sinks,
            "--spool", str(spool), "--page-size", str(PAGE), "--no-progress", *extra]


def checkpoint(spool: Path) -> dict[str, Any]:
    """The job's checkpoint file (``{}`` before the first page)."""
    files = list((spool / "backfill").glob("*.json"))
    assert len(files) <= 1, files
    return json.loads(files[0].read_text()) if files else {}


def children(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (the delivery process, multiprocessing's resource tracker)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def pending(spool: Path) -> dict[str, int]:
    """Per sink, the records the spool still owes (``traceexport status --json``)."""
    done = subprocess.run([sys.executable, "-m", "traceexport", "status", "--spool", str(spool), "--json"],
                          env=python_env(), capture_output=True, text=True, timeout=60, check=True)
    return {name: int(sink["queue_depth"]) for name, sink in json.loads(done.stdout)["sinks"].items()}


def kill_part_way(argv: list[str], env: dict[str, str], spool: Path, log: Path, at: int) -> list[dict[str, Any]]:
    """Start the backfill, SIGKILL it once its checkpoint counts ``at`` records, wait until its children are
    gone too (the delivery process leaves when its parent does); the checkpoints it wrote, the last one first."""
    seen: list[dict[str, Any]] = []

    def progressed() -> bool:
        now = checkpoint(spool)
        if now and (not seen or now != seen[0]):
            seen.insert(0, now)
        return proc.poll() is not None or now.get("records", 0) >= at

    with open(log, "wb") as stderr:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_until(progressed, timeout=180, interval=0.005, what=f"a checkpoint of {at} records")
        assert proc.poll() is None, f"backfill ended (exit {proc.returncode}) before the kill: {log.read_text()}"
        kids = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    wait_until(lambda: all(gone(k) for k in kids), timeout=30, what=f"the children {kids} to exit")
    assert checkpoint(spool) == seen[0]
    return seen


def test_a_backfill_killed_mid_way_resumes_and_delivers_every_record(
        bulk_rows: BulkRows, backends: Backends, tmp_path: Path) -> None:
    """kill -9 after the spool accepted a page and before its checkpoint was written (an OTLP backend refusing, a
    file sink delivering), then the same command: both sinks hold every record; the second run sends what the
    spool owed plus the rows after the checkpoint, so only that page (and the file sink's batch in flight) twice."""
    url, bulk, expected = bulk_rows(3000, 1500)
    spool, out = tmp_path / "spool", tmp_path / "out"
    env = python_env({**backends.env(), "TRACEEXPORT_FILE_SINK_DIR": str(out)})
    argv = command(url, bulk, spool, "otlp,file", "--max-rate", "1000")  # ~4.5 s of reading: time to kill
    otlp = backends.otlp
    otlp.fail_next(1_000_000, 503, headers={"Retry-After": "1"})  # down for the whole first run
    written = kill_part_way(argv, env, spool, tmp_path / "first.log", at=bulk.records // 2)
    at_kill, before_page = written[0], written[1]
    assert not at_kill["done"] and 0 < at_kill["records"] < bulk.records, at_kill
    last_page = at_kill["records"] - before_page["records"]
    assert 0 < last_page <= PAGE_RECORDS, written[:2]
    # The kill in the narrowest window: the last page is in the spool, its checkpoint not yet on disk.
    next(spool.glob("backfill/*.json")).write_text(json.dumps(before_page))
    owed = pending(spool)
    before = deliveries(file_spans(out))
    assert not otlp.spans and owed["otlp"] == at_kill["records"], (owed, at_kill)
    otlp.reset()  # the backend is back
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0, second.stderr
    assert f"resuming after {before_page['records']} records" in second.stderr, second.stderr
    unread = bulk.records - before_page["records"]
    got = {"otlp": deliveries(otlp.spans), "file": deliveries(file_spans(out))}
    for sink, counts in got.items():
        assert set(counts) == expected, (f"{sink}: {len(expected - set(counts))} missing, "
                                         f"{len(set(counts) - expected)} unexpected")
    assert sum(got["otlp"].values()) == owed["otlp"] + unread
    assert sum(got["file"].values()) == sum(before.values()) + owed["file"] + unread
    twice = {sink: sum(counts.values()) - len(counts) for sink, counts in got.items()}
    assert twice["otlp"] == last_page, (twice, last_page)
    assert last_page <= twice["file"] <= last_page + FILE_BATCH, (twice, last_page)
    print(f"\n{bulk.records} records, killed at {at_kill['records']} (last page {last_page}); "
          f"delivered to file before: {sum(before.values())}; owed {owed}; sent twice {twice}")


def test_a_finished_backfill_sends_nothing_again_until_restart(
        bulk_rows: BulkRows, backends: Backends, tmp_path: Path) -> None:
    """Run to the end, the same command (a window of fixed times) says it was already backfilled and sends nothing;
    with --restart every record is sent once more."""
    url, bulk, expected = bulk_rows(300, 150)
    argv = command(url, bulk, tmp_path / "spool", "otlp", "--since", bulk.since.isoformat(),
                   "--until", bulk.until.isoformat())
    env = python_env(backends.env())
    otlp = backends.otlp

    def run(*extra: str) -> str:
        done = subprocess.run([*argv, *extra], env=env, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert f"{bulk.records} records accepted" in run()
    assert deliveries(otlp.spans) == Counter(dict.fromkeys(expected, 1))
    requests = len(otlp.requests)
    again = run()
    assert f"already backfilled ({bulk.records} records)" in again and "--restart" in again, again
    assert len(otlp.requests) == requests
    assert f"{bulk.records} records accepted" in run("--restart")
    assert deliveries(otlp.spans) == Counter(dict.fromkeys(expected, 2))
