"""Three ``traceexport serve`` sidecars on one Dify ``ops_trace`` queue, one of them killed with ``kill -9``.

A real redis-server holds 30,000 of Dify's ``process_trace_tasks`` messages (files in a shared storage
directory, as Dify's API leaves them). Three sidecars, each with its own spool, consume the queue and deliver
OTLP to one receiver that counts every span id it is sent. Mid-stream one sidecar is frozen (``SIGSTOP``: its
state at that instant can be read from outside), its messages in flight are read from Redis, and it is killed
with ``SIGKILL`` together with its delivery process, as a crashed container dies. What must hold:

* the other two put the killed sidecar's messages in flight back on the queue once ``visibility_timeout`` has
  passed (without any restart), and deliver them;
* the killed sidecar, restarted on its own spool (its persistent volume), delivers what it had already
  acknowledged from Redis but not yet sent: without that restart those records would wait in its spool;
* every record is delivered, no span id other than the records' own arrives, and a span arrives twice only if
  its record was in flight in the killed sidecar (taken, not acknowledged: taken again by another) or not yet
  confirmed by the receiver in its spool (sent again after the restart).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import re
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from tests.conftest import SAMPLE_FILES
from tests.fakes._server import FakeServer, RecordedRequest, Response
from tests.support.daemon import Served
from tests.support.dify_producer import DifyProducer
from tests.support.processes import wait_until
from tests.support.redis_server import RedisServer, redis_server_binary

from traceexport.mapping import load_mapping
from traceexport.records import record_from_obj

pytestmark = pytest.mark.integration

RECORDS = 30_000
SIDECARS = 3
VISIBILITY_TIMEOUT = 10  # seconds: well above one batch, short enough for the test
QUEUE, UNACKED, INDEX = "ops_trace", "traceexport.unacked", "traceexport.unacked_index"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class SpanCounter(FakeServer):
    """An OTLP/HTTP protobuf receiver that counts how often each span id arrives (and keeps no bodies)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def handle(self, request: RecordedRequest) -> Response:
        message = ExportTraceServiceRequest.FromString(request.body)
        ids = [s.span_id.hex() for rs in message.resource_spans for ss in rs.scope_spans for s in ss.spans]
        with self._lock:
            self.counts.update(ids)
        request.body = b""  # the fake keeps every request: not its 30,000 records' bodies
        return Response(200, ExportTraceServiceResponse().SerializeToString(),
                        {"Content-Type": "application/x-protobuf"})

    def snapshot(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self.counts)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway redis-server; skipped when the binary is absent."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer.start(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[SpanCounter]:
    fake = SpanCounter().start()
    yield fake
    fake.stop()


def fresh_envelopes(count: int) -> list[bytes]:
    """``count`` Dify TaskData files: the seven sample types in turn, every UUID but the app's fresh in each copy."""
    texts = [json.dumps(json.loads(p.read_text()), separators=(",", ":")) for p in SAMPLE_FILES]
    apps = {json.loads(text)["app_id"] for text in texts}
    pieces = [_UUID.split(text) for text in texts]  # text, uuid, text, uuid, ..., text (UUIDs at odd places)
    names = [_UUID.findall(text) for text in texts]
    out: list[bytes] = []
    serial = itertools.count()
    run = uuid.uuid4().hex[:8]  # these ids differ from any other test's
    while len(out) < count:
        fresh = {app: app for app in apps}
        for parts, found in zip(pieces, names, strict=True):
            ids = [fresh.setdefault(u, f"{run}-0000-4000-8000-{next(serial):012x}") for u in found]
            out.append("".join(x for pair in zip(parts, [*ids, ""], strict=True) for x in pair).encode())
    return out[:count]


def keys_and_spans(envelopes: list[bytes]) -> list[tuple[str, set[str]]]:
    """Each record's key and the span ids the otlp mapping gives it (what the sidecars send), in order."""
    mapping = load_mapping("otlp")
    out = []
    for data in envelopes:
        record = record_from_obj(json.loads(data))
        out.append((record.key, {p.key for p in mapping.map(record)}))
    return out


def config(spool: Path, redis: RedisServer, storage: Path, receiver: SpanCounter) -> str:
    return json.dumps({
        "spool": {"dir": str(spool)},
        "retry": {"initial_backoff": 0.2, "max_backoff": 1},
        "sinks": {"out": {"type": "otlp", "traces_endpoint": receiver.url + "/v1/traces"}},
        "sources": {"http": {"listen": "127.0.0.1:0"}, "celery": {
            "broker_url": redis.url(1), "storage": {"type": "local", "path": str(storage)},
            "visibility_timeout": VISIBILITY_TIMEOUT, "retry_delay": 0.2, "redis_key_prefix": ""}},
    })


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (its delivery process, multiprocessing's helpers)."""
    parents: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    family, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return sorted(family)


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, signum)


def spool_query(spool: Path, sql: str) -> list[Any]:
    """Rows of ``sql`` on a sidecar's spool, read-only (the sidecar may be running)."""
    conn = sqlite3.connect(f"file:{spool / 'spool.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def accepted(spool: Path) -> int:
    """How many records the sidecar has accepted so far (its spool's sequence never goes back)."""
    if not (spool / "spool.db").exists():
        return 0
    rows = spool_query(spool, "SELECT seq FROM sqlite_sequence WHERE name = 'records'")
    return int(rows[0][0]) if rows else 0


def undelivered(spool: Path) -> list[str]:
    """Record keys in the spool the receiver has not confirmed (past the sink's cursor)."""
    return [k for (k,) in spool_query(spool, "SELECT key FROM records WHERE seq > "
                                             "(SELECT cursor FROM sinks WHERE name = 'out')")]


def in_flight_of_frozen(client: Any, frozen_at: float) -> dict[str, float]:
    """Messages taken before ``frozen_at`` and still unacknowledged once the running sidecars moved on.

    The frozen sidecar cannot acknowledge; the others acknowledge theirs within a batch. So the entries taken
    before the freeze that stay unchanged for a full second are the frozen sidecar's.
    """
    def older() -> dict[str, float]:
        entries = client.zrangebyscore(INDEX, "-inf", frozen_at, withscores=True)
        return {tag.decode(): score for tag, score in entries if client.hexists(UNACKED, tag)}

    previous, stable_since = older(), time.monotonic()
    while time.monotonic() - stable_since < 1.0:
        time.sleep(0.2)  # polling interval while the running sidecars acknowledge their batches
        current = older()
        if current != previous:
            previous, stable_since = current, time.monotonic()
    return previous


def test_three_sidecars_share_one_queue_and_a_kill_9_loses_nothing(
    tmp_path: Path, redis: RedisServer, receiver: SpanCounter
) -> None:
    """30,000 records over three sidecars, one killed with -9 mid-stream: all delivered, duplicates only from
    the killed one's messages in flight or its unconfirmed spool, with the records' own span ids."""
    started = time.monotonic()
    phases: dict[str, float] = {}
    storage = tmp_path / "storage"
    storage.mkdir()
    envelopes = fresh_envelopes(RECORDS)
    records = keys_and_spans(envelopes)
    spans = dict(records)
    producer = DifyProducer(redis.url(1), storage)
    try:
        sent = producer.send_many(envelopes)
    finally:
        producer.close()
    key_of_file = {tag: (file_key, key) for (file_key, tag), (key, _) in zip(sent, records, strict=True)}
    expected = set().union(*spans.values())
    client = redis.client(1)
    assert client.llen(QUEUE) == RECORDS
    phases["backlog"] = time.monotonic() - started

    spools = [tmp_path / f"sidecar-{i}" / "spool" for i in range(SIDECARS)]
    sidecars = [Served(tmp_path / f"sidecar-{i}", config(spools[i], redis, storage, receiver), name="serve")
                for i in range(SIDECARS)]
    victim, restarted = 0, None
    try:
        # Mid-stream: the victim has accepted (and acknowledged) some records, and much is still queued.
        wait_until(lambda: accepted(spools[victim]) >= 1000 or client.llen(QUEUE) < RECORDS // 3,
                   timeout=120, interval=0.05, what="the first sidecar to accept 1,000 records")
        assert client.llen(QUEUE) >= RECORDS // 3, "the queue drained before the kill: too little left to test"
        family = descendants(sidecars[victim].proc.pid)
        for _ in range(20):  # freeze it holding messages (not in the instant between two batches)
            signal_all(family, signal.SIGSTOP)
            in_flight = in_flight_of_frozen(client, time.time())
            if in_flight:
                break
            signal_all(family, signal.SIGCONT)
            time.sleep(0.05)  # let it take its next batch
        signal_all(family, signal.SIGKILL)
        sidecars[victim].proc.wait(10)
        phases["kill"] = time.monotonic() - started
        pending = undelivered(spools[victim])
        acked_before_kill = accepted(spools[victim])

        # The two others put the victim's messages back (after visibility_timeout) and drain the queue.
        wait_until(lambda: client.llen(QUEUE) == 0 and client.hlen(UNACKED) == 0, timeout=180, interval=0.2,
                   what="the running sidecars to drain the queue, the victim's messages in flight included")
        left = [key_of_file[tag][0] for tag in in_flight if (storage / key_of_file[tag][0]).exists()]
        assert not left, f"{len(left)} files of the victim's messages in flight were never consumed"
        restored = sum(int(n) for s in sidecars[1:] for n in re.findall(r"put (\d+) message\(s\) back", s.log()))
        assert restored == len(in_flight), (restored, len(in_flight))

        phases["drained"] = time.monotonic() - started
        # The victim comes back on its own spool and delivers what it had accepted but not sent.
        restarted = Served(tmp_path / f"sidecar-{victim}", config(spools[victim], redis, storage, receiver),
                           name="serve-restarted")
        wait_until(lambda: expected <= set(receiver.snapshot()), timeout=180, interval=0.2,
                   what="every record's spans at the receiver")
        wait_until(lambda: not any(undelivered(s) for s in spools), timeout=60, interval=0.2,
                   what="every spool to be delivered")
        phases["delivered"] = time.monotonic() - started
    finally:
        for served in [*sidecars, *([restarted] if restarted else [])]:
            served.stop()

    counts = receiver.snapshot()
    assert set(counts) == expected, "span ids other than the records' own arrived"
    assert not list(storage.joinpath("ops_trace").rglob("*.json")), "files left in Dify's storage"
    may_repeat = set().union(*(spans[key_of_file[tag][1]] for tag in in_flight), *(spans[k] for k in pending))
    repeated = {span for span, n in counts.items() if n > 1}
    assert repeated <= may_repeat, f"{len(repeated - may_repeat)} spans arrived twice without cause"
    print(f"\nvictim: {acked_before_kill} records accepted before the kill, {len(in_flight)} messages in flight "
          f"(put back by the others), {len(pending)} records unconfirmed in its spool; receiver: {len(expected)} "
          f"spans, {len(repeated)} of them twice or more ({sum(counts.values()) - len(expected)} extra copies); "
          + ", ".join(f"{name} at {at:.0f}s" for name, at in phases.items()))
