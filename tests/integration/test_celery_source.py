"""The Celery source against a real redis-server and messages produced exactly as Dify produces them.

The tests at the top need no broker: message parsing, the ack/delete order, settings validation.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.support.dify_producer import DifyProducer
from tests.support.net import free_port
from tests.support.redis_server import RedisServer, redis_server_binary

from traceexport.config import validate_config_file
from traceexport.errors import ConfigError, SpoolFullError
from traceexport.records import Record
from traceexport.sources.celery import (
    DIFY_TASK_NAME,
    BadMessage,
    CelerySource,
    CelerySourceSettings,
    Stats,
    TraceFileProcessor,
    mask_url,
    parse_task,
)
from traceexport.sources.celery.probe import hint_for
from traceexport.sources.storage import LocalStorage, StorageError, UnreadableFileError

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "data" / "samples"
SHARED_SAMPLES = REPO / ".." / "shared" / "dify" / "samples"
DIFY_REAL = REPO / ".." / "shared" / "dify" / "real"


def _samples() -> dict[str, bytes]:
    folder = SAMPLES if SAMPLES.is_dir() else SHARED_SAMPLES
    if not folder.is_dir():
        pytest.skip(f"no sample records: neither {SAMPLES} nor {SHARED_SAMPLES} exists")
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json")) if "node_executions" not in p.name}


def _wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)  # polling interval, bounded by the deadline
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Recorder:
    """A thread-safe ``accept`` that records records; ``refuse`` makes the next N calls raise SpoolFull."""

    def __init__(self, refuse: int = 0, retry_after: float = 0.05) -> None:
        self.records: list[Record] = []
        self.calls = 0
        self.refuse = refuse
        self.retry_after = retry_after
        self.lock = threading.Lock()

    def __call__(self, records: Sequence[Record]) -> None:
        with self.lock:
            self.calls += 1
            if self.refuse:
                self.refuse -= 1
                raise SpoolFullError(retry_after=self.retry_after)
            self.records.extend(records)

    def keys(self) -> list[str]:
        with self.lock:
            return [r.key for r in self.records]


def _message_envelope(message_id: str) -> dict[str, Any]:
    """The chat-message sample with a fresh message id, so each copy is a distinct record."""
    envelope = json.loads(_samples()["05-message-chat.json"])
    envelope = copy.deepcopy(envelope)
    envelope["trace_info"]["message_id"] = message_id
    if isinstance(envelope["trace_info"].get("message_data"), dict):
        envelope["trace_info"]["message_data"]["id"] = message_id
    return envelope


# --------------------------------------------------------------------------- no broker needed


def test_parse_task_reads_celery_protocol_2_as_dify_sends_it() -> None:
    """A protocol 2 message (task name in headers, body [args, kwargs, embed]) yields app and file ids."""
    headers = {"task": DIFY_TASK_NAME, "id": "t-1"}
    body = [[{"file_id": "abc123", "app_id": "83d767f2-49a5"}], {}, {"callbacks": None}]
    ref = parse_task(headers, body)
    assert (ref.task_id, ref.app_id, ref.file_id) == ("t-1", "83d767f2-49a5", "abc123")
    assert ref.storage_key == "ops_trace/83d767f2-49a5/abc123.json"


def test_parse_task_reads_protocol_1_and_rejects_unsafe_ids() -> None:
    """Protocol 1 bodies are read too, and ids that could escape the storage root are refused."""
    body = {"task": DIFY_TASK_NAME, "id": "t-2", "args": [{"file_id": "f", "app_id": "tenant-1"}], "kwargs": {}}
    assert parse_task({}, body).storage_key == "ops_trace/tenant-1/f.json"
    with pytest.raises(BadMessage, match="app_id"):
        parse_task({"task": DIFY_TASK_NAME}, [[{"file_id": "f", "app_id": "../etc"}], {}, {}])
    with pytest.raises(BadMessage, match="expected one argument"):
        parse_task({"task": DIFY_TASK_NAME}, [[], {}, {}])


def test_processor_accepts_then_acks_then_deletes(tmp_path: Path) -> None:
    """The record is accepted before the message is acknowledged, and the file is deleted only after."""
    storage = LocalStorage(tmp_path)
    ref = parse_task({"task": DIFY_TASK_NAME, "id": "t"}, [[{"file_id": "f1", "app_id": "a1"}], {}, {}])
    storage.save(ref.storage_key, _samples()["12-generate-name.json"])
    events: list[str] = []

    def accept(records: Sequence[Record]) -> None:
        events.append(f"accept:{records[0].type}:file={storage.load(ref.storage_key) is not None}")

    def ack() -> None:
        events.append(f"ack:file={storage.load(ref.storage_key) is not None}")

    processor = TraceFileProcessor(
        storage, accept, failed_prefix="failed/", retry_delay=0, stopping=threading.Event(), stats=Stats()
    )
    assert processor.process(ref, ack, lambda: events.append("requeue")) == "accepted"
    assert events == ["accept:generate_name:file=True", "ack:file=True"]
    assert storage.load(ref.storage_key) is None


def test_files_that_cannot_be_deleted_are_one_warning_not_one_per_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Storage mounted read-only fails every delete: the records are still accepted and acknowledged, the
    failures counted, and the log says so once (and once when deleting works again), not once per record."""

    class ReadOnly(LocalStorage):
        refuse = True

        def delete(self, key: str) -> None:
            if self.refuse:
                raise StorageError(f"cannot delete {key} under {self.root}: Read-only file system")
            super().delete(key)

    storage = ReadOnly(tmp_path)
    stats = Stats()
    processor = TraceFileProcessor(
        storage, lambda records: None, failed_prefix="failed/", retry_delay=0, stopping=threading.Event(),
        stats=stats,
    )
    caplog.set_level(logging.INFO, logger="traceexport.sources.celery")
    for n in range(6):
        storage.refuse = n < 5
        ref = parse_task({"task": DIFY_TASK_NAME, "id": f"t{n}"}, [[{"file_id": f"f{n}", "app_id": "a1"}], {}, {}])
        storage.save(ref.storage_key, _samples()["12-generate-name.json"])
        assert processor.process(ref, lambda: None, lambda: None) == "accepted"
    assert stats.snapshot()["delete_failed"] == 5 and stats.snapshot()["accepted"] == 6
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "cannot be deleted" in lines[0] and "Read-only file system" in lines[0] and "recovered" in lines[1]


def test_processor_sets_aside_a_stored_file_that_is_not_json(tmp_path: Path) -> None:
    """A stored file that is not JSON is invalid with a one-line reason: acknowledged and kept, never raised."""
    storage = LocalStorage(tmp_path)
    ref = parse_task({"task": DIFY_TASK_NAME, "id": "t"}, [[{"file_id": "f2", "app_id": "a1"}], {}, {}])
    storage.save(ref.storage_key, b"{not json")
    events: list[str] = []
    processor = TraceFileProcessor(storage, lambda records: events.append("accept"), failed_prefix="failed/",
                                   retry_delay=0, stopping=threading.Event(), stats=Stats())
    assert processor.process(ref, lambda: events.append("ack"), lambda: events.append("requeue")) == "invalid"
    assert events == ["ack"] and processor.stats.snapshot()["invalid"] == 1


def test_processor_requeues_without_ack_when_the_spool_is_full(tmp_path: Path) -> None:
    """SpoolFullError leaves the message unacknowledged: it is requeued and the file is kept."""
    storage = LocalStorage(tmp_path)
    ref = parse_task({"task": DIFY_TASK_NAME, "id": "t"}, [[{"file_id": "f1", "app_id": "a1"}], {}, {}])
    storage.save(ref.storage_key, _samples()["12-generate-name.json"])
    events: list[str] = []
    stats = Stats()
    processor = TraceFileProcessor(
        storage,
        Recorder(refuse=1, retry_after=0),
        failed_prefix="failed/",
        retry_delay=0,
        stopping=threading.Event(),
        stats=stats,
    )
    outcome = processor.process(ref, lambda: events.append("ack"), lambda: events.append("requeue"))
    assert (outcome, events, stats.snapshot()["retry"]) == ("retry", ["requeue"], 1)
    assert storage.load(ref.storage_key) is not None


def _refs(storage: LocalStorage, names: Sequence[str], data: bytes) -> list[Any]:
    refs = [parse_task({"task": DIFY_TASK_NAME, "id": n}, [[{"file_id": n, "app_id": "a1"}], {}, {}]) for n in names]
    for ref in refs:
        storage.save(ref.storage_key, data)
    return refs


def test_a_batch_is_accepted_in_one_call_then_acknowledged_in_one_call(tmp_path: Path) -> None:
    """Many messages make one accept() and one ack(); missing and broken files are acknowledged in the same call."""
    storage = LocalStorage(tmp_path)
    good = _refs(storage, ["f1", "f2", "f3"], _samples()["12-generate-name.json"])
    broken = _refs(storage, ["bad"], b"{not json")
    missing = parse_task({"task": DIFY_TASK_NAME, "id": "m"}, [[{"file_id": "gone", "app_id": "a1"}], {}, {}])
    recorder, acks, requeues = Recorder(), [], []
    processor = TraceFileProcessor(storage, recorder, failed_prefix="failed/", retry_delay=0,
                                   stopping=threading.Event(), stats=Stats())
    items = [(ref, ref.file_id) for ref in [*good, missing, *broken]]
    outcomes = processor.process_batch(items, acks.append, requeues.append)
    assert outcomes == ["accepted"] * 3 + ["missing", "invalid"]
    assert recorder.calls == 1 and len(recorder.records) == 3
    assert acks == [["f1", "f2", "f3", "gone", "bad"]] and requeues == []
    assert not list((tmp_path / "ops_trace").rglob("*.json")) and (tmp_path / "failed" / broken[0].storage_key).exists()


def test_a_batch_of_large_files_is_read_stored_and_acknowledged_a_part_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files of more than PART_BYTES in all (200 workflow runs of a megabyte each would need about 750 MB at once)
    are read, stored and acknowledged a part at a time, so no more than a part's records are ever in memory."""
    from traceexport.sources.celery import processor as processor_module

    data = _samples()["12-generate-name.json"]
    monkeypatch.setattr(processor_module, "PART_BYTES", 2 * len(data))
    storage = LocalStorage(tmp_path)
    refs = _refs(storage, ["f1", "f2", "f3", "f4", "f5"], data)
    events: list[str] = []
    processor = TraceFileProcessor(storage, lambda records: events.append(f"accept {len(records)}"),
                                   failed_prefix="failed/", retry_delay=0, stopping=threading.Event(), stats=Stats())
    outcomes = processor.process_batch([(r, r.file_id) for r in refs], lambda h: events.append(f"ack {h}"),
                                       lambda h: events.append(f"requeue {h}"))
    assert outcomes == ["accepted"] * 5 and processor.stats.snapshot()["accepted"] == 5
    assert events == ["accept 2", "ack ['f1', 'f2']", "accept 2", "ack ['f3', 'f4']", "accept 1", "ack ['f5']"]


def test_a_full_spool_puts_the_whole_batch_back_after_one_wait(tmp_path: Path) -> None:
    """SpoolFullError leaves every message of the batch unacknowledged: one requeue call, files kept."""
    storage = LocalStorage(tmp_path)
    refs = _refs(storage, ["f1", "f2"], _samples()["12-generate-name.json"])
    acks, requeues = [], []
    processor = TraceFileProcessor(storage, Recorder(refuse=1, retry_after=0), failed_prefix="failed/",
                                   retry_delay=0, stopping=threading.Event(), stats=Stats())
    outcomes = processor.process_batch([(r, r.file_id) for r in refs], acks.append, requeues.append)
    assert (outcomes, acks, requeues) == (["retry", "retry"], [], [["f1", "f2"]])
    assert all(storage.load(r.storage_key) is not None for r in refs)


def test_a_record_the_spool_can_never_hold_is_kept_aside_and_the_others_are_accepted(tmp_path: Path) -> None:
    """RecordTooLargeError naming one record sets that one aside (acknowledged, kept) and accepts the rest."""
    from traceexport.errors import RecordTooLargeError

    storage = LocalStorage(tmp_path)
    refs = _refs(storage, ["f1", "big", "f3"], _samples()["12-generate-name.json"])
    calls: list[int] = []

    def accept(records: Sequence[Record]) -> None:
        calls.append(len(records))
        if len(records) == 3:
            raise RecordTooLargeError("too large", indexes=[1])

    acks: list[list[str]] = []
    processor = TraceFileProcessor(storage, accept, failed_prefix="failed/", retry_delay=0,
                                   stopping=threading.Event(), stats=Stats())
    outcomes = processor.process_batch([(r, r.file_id) for r in refs], acks.append, lambda _: None)
    assert outcomes == ["accepted", "invalid", "accepted"] and calls == [3, 2]
    assert acks == [["f1", "big", "f3"]] and (tmp_path / "failed" / refs[1].storage_key).exists()


def test_a_file_that_is_no_regular_file_is_retried_for_a_bounded_time_then_its_message_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory where a trace file should be is retried (one line naming the file, when first seen) for
    ``unreadable_timeout``, then the message as the queue held it is kept under failed/messages/, counted as
    unreadable and acknowledged; the directory stays and the good record beside it goes on at once."""
    storage = LocalStorage(tmp_path)
    good = _refs(storage, ["f1"], _samples()["12-generate-name.json"])[0]
    odd = parse_task({"task": DIFY_TASK_NAME, "id": "t-odd"}, [[{"file_id": "odd", "app_id": "a1"}], {}, {}])
    (tmp_path / odd.storage_key).mkdir()
    stats, recorder = Stats(), Recorder()
    processor = TraceFileProcessor(storage, recorder, failed_prefix="failed/", retry_delay=0,
                                   stopping=threading.Event(), stats=stats, unreadable_timeout=0.3)
    caplog.set_level(logging.INFO, logger="traceexport.sources.celery")
    acks: list[list[str]] = []
    requeues: list[list[str]] = []
    content = {"f1": b"message f1", "odd": b"message odd"}.__getitem__
    assert processor.process_batch([(good, "f1"), (odd, "odd")], acks.append, requeues.append,
                                   content=content) == ["accepted", "retry"]
    assert processor.process_batch([(odd, "odd")], acks.append, requeues.append, content=content) == ["retry"]
    time.sleep(0.35)
    assert processor.process_batch([(odd, "odd")], acks.append, requeues.append, content=content) == ["unreadable"]
    assert acks == [["f1"], ["odd"]] and requeues == [["odd"], ["odd"]] and len(recorder.records) == 1
    assert (tmp_path / "failed" / "messages" / "odd.msg").read_bytes() == b"message odd"
    assert (tmp_path / odd.storage_key).is_dir() and stats.snapshot()["unreadable"] == 1
    assert 'traceexport_celery_events_total{event="unreadable"} 1' in stats.prometheus_text()
    lines = [r.getMessage() for r in caplog.records if "ops_trace/a1/odd.json" in r.getMessage()]
    assert len(lines) == 2 and all("\n" not in line and "a directory, not a regular file" in line for line in lines)
    assert "kept as failed/messages/odd.msg and acknowledged" in lines[1]
    assert not any("unavailable" in r.getMessage() for r in caplog.records)  # the storage itself is fine


def test_a_file_larger_than_max_file_bytes_is_never_read_and_its_message_is_set_aside(tmp_path: Path) -> None:
    """A trace file larger than max_file_bytes (one that would take the sidecar's memory, and take it down again
    on every redelivery) is not read: its message is set aside like an unreadable file's, the others go on."""
    storage = LocalStorage(tmp_path)
    data = _samples()["12-generate-name.json"]
    small, large = _refs(storage, ["small"], data)[0], _refs(storage, ["large"], data + b" " * 1000)[0]
    recorder = Recorder()
    processor = TraceFileProcessor(storage, recorder, failed_prefix="failed/", retry_delay=0,
                                   stopping=threading.Event(), stats=Stats(), unreadable_timeout=0,
                                   max_file_bytes=len(data) + 10)
    outcomes = processor.process_batch([(small, 1), (large, 2)], lambda _: None, lambda _: None)
    assert outcomes == ["accepted", "unreadable"] and len(recorder.records) == 1
    assert (tmp_path / "failed" / "messages" / "large.msg").exists() and (tmp_path / large.storage_key).exists()


def test_a_file_denied_to_this_process_is_set_aside_only_while_other_files_can_be_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Permission denied may be the whole storage's trouble (the sidecar running as another user): then every
    message waits, however long, with one line for them all; once another file is read after a file's first
    failure, that file's trouble is its own: one line naming it, and its message is set aside."""

    class Denying(LocalStorage):
        def load(self, key: str, max_bytes: int | None = None) -> bytes | None:
            if "/denied" in key:
                raise UnreadableFileError(key, "Permission denied", certain=False)
            return super().load(key, max_bytes)

    storage = Denying(tmp_path)
    denied = [parse_task({"task": DIFY_TASK_NAME, "id": f"t-d{n}"}, [[{"file_id": f"denied{n}", "app_id": "a1"}],
                                                                     {}, {}]) for n in range(5)]
    processor = TraceFileProcessor(storage, Recorder(), failed_prefix="failed/", retry_delay=0,
                                   stopping=threading.Event(), stats=Stats(), unreadable_timeout=0)
    caplog.set_level(logging.INFO, logger="traceexport.sources.celery")
    for _ in range(3):
        outcomes = processor.process_batch([(ref, n) for n, ref in enumerate(denied)], lambda _: None, lambda _: None)
        assert outcomes == ["retry"] * 5
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "unavailable" in lines[0] and "Permission denied" in lines[0], lines
    good = _refs(storage, ["f1"], _samples()["12-generate-name.json"])[0]
    outcomes = processor.process_batch([(good, 9), (denied[0], 0)], lambda _: None, lambda _: None)
    assert outcomes == ["accepted", "unreadable"]
    kept = json.loads((tmp_path / "failed" / "messages" / "denied0.msg").read_bytes())
    assert kept == {"task": DIFY_TASK_NAME, "id": "t-d0", "file_info": {"file_id": "denied0", "app_id": "a1"}}
    assert "kept as failed/messages/denied0.msg" in caplog.records[-1].getMessage()


def test_plain_json_messages_are_read_without_kombu_and_anything_else_is_left_to_it() -> None:
    """Celery's default message (base64 JSON body) is read directly; compressed or non-JSON bodies are not."""
    import base64

    from traceexport.sources.celery.message import plain_json_message

    body = [[{"file_id": "f", "app_id": "a"}], {}, {"callbacks": None}]
    message = {"body": base64.b64encode(json.dumps(body).encode()).decode(), "content-encoding": "utf-8",
               "content-type": "application/json", "headers": {"task": DIFY_TASK_NAME, "id": "t"},
               "properties": {"body_encoding": "base64", "delivery_tag": "x"}}
    assert plain_json_message(json.dumps(message).encode()) == (message["headers"], body)
    for change in ({"content-type": "application/x-python-serialize"},
                   {"headers": {"task": DIFY_TASK_NAME, "compression": "application/x-gzip"}},
                   {"body": "%%%"}):
        assert plain_json_message(json.dumps(message | change).encode()) is None
    assert plain_json_message(b"not json") is None and plain_json_message(b"[1]") is None


def test_settings_report_every_problem_with_its_key_path() -> None:
    """Bad ``sources.celery`` values become one ConfigError naming each key."""
    with pytest.raises(ConfigError) as info:
        CelerySourceSettings.from_config({"concurrency": 0, "storage": {"type": "s3"}, "bogus": 1})
    text = str(info.value)
    assert "sources.celery.concurrency" in text
    assert "sources.celery.storage.s3.bucket" in text
    assert "sources.celery.bogus" in text


def test_other_tasks_queue_cannot_be_the_queue_itself() -> None:
    """``other_tasks_queue`` equal to ``queue`` would move a foreign task back onto the queue it was taken from,
    round and round (some 400 warnings a second): a config problem naming the key instead."""
    with pytest.raises(ConfigError, match=r"sources.celery.other_tasks_queue: .*must not be the queue itself"):
        CelerySourceSettings.from_config({"other_tasks_queue": "ops_trace"}, env={})
    with pytest.raises(ConfigError, match="must not be the queue itself"):
        CelerySourceSettings.from_config({"queue": "traces", "other_tasks_queue": "traces"}, env={})
    assert CelerySourceSettings.from_config({"queue": "traces"}, env={}).other_tasks_queue == "ops_trace_other"


def test_broker_password_is_masked_in_logged_urls() -> None:
    """The broker URL in log lines never carries the password."""
    assert mask_url("redis://:difyai123456@redis:6379/1") == "redis://:***@redis:6379/1"
    assert mask_url("redis://user:pw@[::1]:6380/0") == "redis://user:***@[::1]:6380/0"
    assert mask_url("redis://redis:6379/1") == "redis://redis:6379/1"
    settings = CelerySourceSettings(broker_url="redis://:difyai123456@redis:6379/1")  # type: ignore[arg-type]
    assert "difyai123456" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://:Secretpart#tail9@127.0.0.1:6379/1", "port is not a number"),
        ("redis://:Secretpart?tail9@127.0.0.1:6379/1", "port is not a number"),
        ("redis://:Secretpart/tail9@127.0.0.1:6379/1", "port is not a number"),
        ("redis://:Secretpart@127.0.0.1:99999/1", "port is not a number"),
        ("redis://:Secretpart@127.0.0.1:6379/one", "database number"),
        ("redis://127.0.0.1:6379/1?password=Secretpart", "password query parameter"),
        ("http://:Secretpart@127.0.0.1:6379/1", "must start with redis://"),
        ("sentinel://:Secretpart@h1:26379;sentinel://:Secretpart@h2:x/1", "port is not a number"),
        ("socket://:Secretpart@/run/redis.sock", "redis+socket:///path/to/redis.sock"),
        ("unix://:Secretpart@/run/redis.sock?db=1", "redis+socket:///path/to/redis.sock"),
        ("rediss+socket://:Secretpart@/run/redis.sock", "TLS over a Unix socket"),
        ("redis+socket://:Secretpart@", "names no socket"),
    ],
)
def test_a_broker_url_kombu_cannot_read_is_one_problem_that_never_quotes_it(url: str, why: str) -> None:
    """A broker URL kombu would choke on (a raw # in the password, a port or database that is not a number, ...)
    is a config problem naming ``sources.celery.broker_url`` and what is wrong, never a traceback at start-up, and
    no piece of the password is in the message."""
    with pytest.raises(ConfigError) as info:
        CelerySourceSettings.from_config({"broker_url": url}, env={})
    text = str(info.value)
    assert "sources.celery.broker_url" in text and why in text and "Secretpart" not in text


def test_urls_kombu_reads_are_accepted_and_every_password_is_masked() -> None:
    """Dify's forms (redis, rediss with options, sentinel's ;-separated URLs, a Unix socket) pass; each URL's
    password is masked in the logged form and registered for redaction, as written and percent-decoded."""
    cases = {
        "redis://:difyai123456@redis:6379/1": "redis://:***@redis:6379/1",
        "rediss://user:pa%23ss1234@h:6380/0?ssl_cert_reqs=required": "rediss://user:***@h:6380/0?ssl_cert_reqs=required",
        "sentinel://:sentinelpw@h1:26379;sentinel://:sentinelpw@h2:26379": "sentinel://:***@h1:26379;sentinel://:***@h2:26379",
        "redis+socket:///run/redis.sock": "redis+socket:///run/redis.sock",
        "redis+socket://:sockpw1234@/run/redis.sock?virtual_host=1": "redis+socket://:***@/run/redis.sock?virtual_host=1",
        "redis://redis:6379": "redis://redis:6379",
    }
    for url, masked in cases.items():
        options = {"master_name": "mymaster"} if url.startswith("sentinel") else {}
        settings = CelerySourceSettings.from_config({"broker_url": url, "transport_options": options}, env={})
        assert settings.masked_broker_url() == masked
    assert "pa#ss1234" in CelerySourceSettings.from_config(
        {"broker_url": "rediss://user:pa%23ss1234@h:6380/0"}, env={}).secrets()


def test_a_sentinel_url_without_its_master_name_is_a_config_problem_and_the_sentinels_password_is_masked() -> None:
    """kombu cannot use sentinel:// without transport_options.master_name: validate and serve say so in one line
    (before, serve retried for ever); the sentinels' own password (Dify's CELERY_SENTINEL_PASSWORD, in
    sentinel_kwargs) is registered for masking like the broker URL's."""
    with pytest.raises(ConfigError) as info:
        CelerySourceSettings.from_config({"broker_url": "sentinel://:pw@h1:26379;sentinel://:pw@h2:26379"}, env={})
    assert "\n" not in str(info.value) and "transport_options.master_name" in str(info.value)
    settings = CelerySourceSettings.from_config(
        {"broker_url": "sentinel://h1:26379", "transport_options": {
            "master_name": "mymaster", "sentinel_kwargs": {"password": "Sentinel-pw-1"}}}, env={})
    assert "Sentinel-pw-1" in settings.secrets()


def test_missing_celery_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without kombu installed the source refuses to start with a ConfigError naming the extra."""
    monkeypatch.setitem(sys.modules, "kombu", None)
    monkeypatch.setitem(sys.modules, "kombu.mixins", None)
    with pytest.raises(ConfigError, match=r"traceexport\[celery\]"):
        CelerySource(CelerySourceSettings(storage={"type": "local", "path": tmp_path}), Recorder())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "keyprefix"),
    [("", ""), ("   ", ""), ("dify", "dify:"), (" dify\n", "dify:"), ("dify:", "dify::"), ("a b", "a b:")],
)
def test_redis_key_prefix_becomes_kombus_global_keyprefix_by_difys_rule(value: str, keyprefix: str) -> None:
    """Dify's REDIS_KEY_PREFIX is stripped and, if anything is left, gets one ':' appended, as Dify 1.14 does."""
    settings = CelerySourceSettings.from_config({"redis_key_prefix": value}, env={})
    options = settings.kombu_transport_options()
    assert options.get("global_keyprefix", "") == keyprefix
    assert settings.queue_key() == f"{keyprefix}ops_trace"
    assert options["unacked_key"] == "traceexport.unacked"  # kombu puts the prefix in front itself


def test_redis_key_prefix_falls_back_to_the_environment_only_when_the_config_is_silent() -> None:
    """REDIS_KEY_PREFIX from the environment applies unless redis_key_prefix or global_keyprefix is configured."""
    env = {"REDIS_KEY_PREFIX": "dify"}
    from_env = CelerySourceSettings.from_config({}, env=env)
    assert from_env.global_keyprefix == "dify:"
    assert "environment variable REDIS_KEY_PREFIX" in from_env.describe_prefix()
    assert CelerySourceSettings.from_config({"redis_key_prefix": ""}, env=env).global_keyprefix == ""
    explicit = CelerySourceSettings.from_config({"transport_options": {"global_keyprefix": "x:"}}, env=env)
    assert explicit.kombu_transport_options()["global_keyprefix"] == "x:"
    assert CelerySourceSettings.from_config({}, env={"REDIS_KEY_PREFIX": ""}).global_keyprefix == ""


def test_key_prefix_problems_are_reported_with_their_key_path(tmp_path: Path) -> None:
    """A non-text prefix, or both prefix settings at once, is a one-line problem at its key path in validate."""
    with pytest.raises(ConfigError) as info:
        CelerySourceSettings.from_config({"redis_key_prefix": ["dify"]}, env={})
    assert [p.where for p in info.value.problems] == ["sources.celery.redis_key_prefix"]
    config = tmp_path / "traceexport.yaml"
    config.write_text(
        f"sinks:\n  out:\n    type: file\n    path: {tmp_path / 'out'}\n"
        "sources:\n  celery:\n    redis_key_prefix: dify\n    transport_options:\n      global_keyprefix: 'x:'\n"
    )
    problems = validate_config_file(config, env={})
    assert [p.where for p in problems] == ["sources.celery.redis_key_prefix"]
    assert "not both" in problems[0].message and "\n" not in problems[0].message


def test_the_empty_queue_hint_names_the_key_and_the_setting() -> None:
    """The hint names the key that holds messages and what to configure: Dify's prefix, no prefix, or a raw one."""
    plain = CelerySourceSettings.from_config({}, env={})
    prefixed = CelerySourceSettings.from_config({"redis_key_prefix": "dify"}, env={})
    assert hint_for(plain, {}) is None
    text = hint_for(plain, {"dify:ops_trace": 3, "other:ops_trace": 1}) or ""
    assert "'dify:ops_trace' holds 3 message(s)" in text
    assert "if that is your Dify's queue, its REDIS_KEY_PREFIX is probably 'dify'" in text
    assert "clear the key prefix" in (hint_for(prefixed, {"ops_trace": 2}) or "")
    assert "global_keyprefix: 'q.'" in (hint_for(plain, {"q.ops_trace": 1}) or "")


def _default_queues(version: str) -> list[str]:
    """The community edition's DEFAULT_QUEUES of a real Dify tree's worker entrypoint, minus ops_trace."""
    entrypoint = DIFY_REAL / f"dify-{version}" / "api" / "docker" / "entrypoint.sh"
    if not entrypoint.is_file():
        pytest.skip(f"{entrypoint} not found: the real Dify trees are only beside the CI checkout")
    text = entrypoint.read_text()
    community = text[text.index("# Community edition") :]
    line = re.search(r'DEFAULT_QUEUES="([^"]+)"', community)
    assert line is not None, f"no community DEFAULT_QUEUES in {entrypoint}"
    return [q for q in line.group(1).split(",") if q != "ops_trace"]


def test_readme_and_compose_queue_lists_match_difys_entrypoints() -> None:
    """The README's CELERY_QUEUES per Dify version, and the compose default, are Dify's lists minus ops_trace."""
    readme = (REPO / "README.md").read_text()
    for row, version in (("1.10.x (1.10.1)", "1.10.1"), ("1.14.x (1.14.1)", "1.14.1")):
        documented = re.search(rf"\| {re.escape(row)} \| `([^`]+)` \|", readme)
        assert documented is not None, f"README has no CELERY_QUEUES row for {row}"
        assert documented.group(1).split(",") == _default_queues(version), row
    compose = (REPO / "deploy" / "docker-compose.traceexport.yaml").read_text()
    default = re.search(r"CELERY_QUEUES: \$\{TRACEEXPORT_WORKER_QUEUES:-([^}]+)\}", compose)
    assert default is not None and default.group(1).split(",") == _default_queues("1.14.1")
    assert set(_default_queues("1.10.1")) <= set(_default_queues("1.14.1"))


# --------------------------------------------------------------------------- real redis-server

UNACKED = "traceexport.unacked"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway redis-server; skipped when the binary is absent."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer.start(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    """Dify's storage directory as the sidecar sees it."""
    root = tmp_path / "storage"
    root.mkdir()
    return root


@pytest.fixture
def producer(redis: RedisServer, storage_root: Path) -> Iterator[DifyProducer]:
    """Dify's API side: writes files and enqueues process_trace_tasks on db 1."""
    prod = DifyProducer(redis.url(1), storage_root)
    yield prod
    prod.close()


def _settings(redis: RedisServer, storage_root: Path, **extra: Any) -> CelerySourceSettings:
    values: dict[str, Any] = {
        "broker_url": redis.url(1),
        "storage": {"type": "local", "path": str(storage_root)},
        "visibility_timeout": 2,
        "retry_delay": 0.1,
    }
    values.update(extra)
    return CelerySourceSettings.from_config(values, env={})  # a REDIS_KEY_PREFIX around the tests stays out


def _drained(redis: RedisServer, keyprefix: str = "") -> bool:
    client = redis.client(1)
    return bool(client.llen(f"{keyprefix}ops_trace") == 0 and client.hlen(f"{keyprefix}{UNACKED}") == 0)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "ops_trace").rglob("*.json"))


@pytest.mark.integration
def test_sample_records_arrive_and_messages_and_files_are_gone(
    redis: RedisServer, storage_root: Path, producer: DifyProducer
) -> None:
    """Every sample record reaches accept(); the queue ends empty with nothing unacked and no files left."""
    samples = _samples()
    for data in samples.values():
        producer.send(data)
    recorder = Recorder()
    source = CelerySource(_settings(redis, storage_root, concurrency=2), recorder)
    source.start()
    try:
        _wait_for(lambda: len(recorder.records) == len(samples), what="all samples accepted")
        _wait_for(lambda: _drained(redis) and not _files(storage_root), what="queue drained, files deleted")
    finally:
        source.stop(10)
    types = sorted(r.type for r in recorder.records)
    assert types == sorted(
        ["workflow", "message", "tool", "dataset_retrieval", "moderation", "suggested_question", "generate_name"]
    )
    assert source.stats.snapshot()["accepted"] == len(samples)


_CRASHING_CONSUMER = textwrap.dedent(
    """
    import json, sys, threading
    from pathlib import Path
    from traceexport.sources.celery import CelerySource, CelerySourceSettings

    settings = CelerySourceSettings.from_config(json.loads(sys.argv[1]))
    marker = Path(sys.argv[2])

    def accept(records):
        marker.write_text(records[0].key)   # received, not yet acknowledged ...
        threading.Event().wait()            # ... and never returns: the test kills us here

    CelerySource(settings, accept).start()
    threading.Event().wait()
    """
)


@pytest.mark.integration
@pytest.mark.parametrize("dify_prefix", ["", "dify"])
def test_a_crash_between_receipt_and_ack_loses_nothing(
    redis: RedisServer, storage_root: Path, tmp_path: Path, dify_prefix: str
) -> None:
    """A consumer killed (-9) inside accept() leaves message and file (under Dify's key prefix, if any, as is
    its unacked entry); a new consumer delivers and cleans up."""
    keyprefix = f"{dify_prefix}:" if dify_prefix else ""
    producer = DifyProducer(redis.url(1), storage_root, redis_key_prefix=dify_prefix)
    try:
        key = producer.send(_samples()["05-message-chat.json"])
    finally:
        producer.close()
    settings = _settings(redis, storage_root, visibility_timeout=1, redis_key_prefix=dify_prefix)
    marker = tmp_path / "received"
    config = json.dumps(settings.model_dump(mode="json") | {"broker_url": redis.url(1)})
    paths = [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    child = subprocess.Popen([sys.executable, "-c", _CRASHING_CONSUMER, config, str(marker)], env=env)
    try:
        _wait_for(marker.exists, what="the child consumer to receive the message")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    client = redis.client(1)
    assert client.hlen(f"{keyprefix}{UNACKED}") == 1 and client.llen(f"{keyprefix}ops_trace") == 0
    assert (storage_root / key).exists()

    recorder = Recorder()
    source = CelerySource(settings, recorder)
    source.start()
    try:
        _wait_for(lambda: recorder.keys() == [marker.read_text()], what="the redelivered record")
        _wait_for(lambda: _drained(redis, keyprefix) and not (storage_root / key).exists(), what="ack and delete")
    finally:
        source.stop(10)
    if keyprefix:
        assert not [k for k in client.keys("*") if not k.startswith(keyprefix.encode())]


@pytest.mark.integration
def test_a_broken_file_is_reported_kept_and_does_not_stop_the_others(
    redis: RedisServer, storage_root: Path, producer: DifyProducer, caplog: pytest.LogCaptureFixture
) -> None:
    """Dify's ``trace_info: null`` file is logged with its reason and kept under failed/; the rest go on."""
    samples = _samples()
    producer.send(samples["05-message-chat.json"])
    broken = producer.send(
        {"app_id": "83d767f2-49a5-4a3f-89fd-fdebaf4cfca1", "trace_info_type": "dict", "trace_info": None}
    )
    producer.send(samples["12-generate-name.json"])
    recorder = Recorder()
    source = CelerySource(_settings(redis, storage_root), recorder)
    caplog.set_level(logging.INFO, logger="traceexport.sources.celery")
    source.start()
    try:
        _wait_for(lambda: len(recorder.records) == 2 and source.stats.snapshot()["invalid"] == 1, what="2 ok, 1 bad")
        _wait_for(lambda: _drained(redis) and not _files(storage_root), what="queue drained, files gone")
    finally:
        source.stop(10)
    kept = storage_root / "traceexport" / "failed" / broken
    assert json.loads(kept.read_bytes())["trace_info"] is None
    lines = [r.getMessage() for r in caplog.records if "not a valid record" in r.getMessage()]
    assert len(lines) == 1 and "trace_info null" in lines[0] and str(Path(broken).name) in lines[0]


@pytest.mark.integration
def test_a_missing_file_is_acknowledged_and_counted(
    redis: RedisServer, storage_root: Path, producer: DifyProducer
) -> None:
    """A task whose file is gone (handled by another sidecar) is acknowledged, not retried forever, and counted on
    /metrics."""
    (storage_root / "ops_trace" / "83d767f2-49a5-4a3f-89fd-fdebaf4cfca1").mkdir(parents=True)  # Dify's folder
    producer.enqueue("83d767f2-49a5-4a3f-89fd-fdebaf4cfca1", uuid.uuid4().hex)
    source = CelerySource(_settings(redis, storage_root), Recorder())
    source.start()
    try:
        _wait_for(lambda: source.stats.snapshot()["missing"] == 1 and _drained(redis), what="missing acked")
    finally:
        source.stop(10)
    text = source.stats.prometheus_text()
    assert 'traceexport_celery_events_total{event="missing"} 1\n' in text
    assert 'traceexport_celery_events_total{event="taken"} 1\n' in text


@pytest.mark.integration
def test_a_fifo_or_a_directory_in_place_of_a_file_neither_hangs_the_consumer_nor_comes_back_for_ever(
    redis: RedisServer, storage_root: Path, producer: DifyProducer
) -> None:
    """Someone who can write Dify's storage puts a FIFO (which a plain read would wait on for ever) and a directory
    where trace files should be: the good record beside them is delivered at once, and after unreadable_timeout
    their messages (each as the queue last held it) are kept under failed/messages/ and acknowledged: the queue
    drains."""
    app = "83d767f2-49a5-4a3f-89fd-fdebaf4cfca1"
    (storage_root / "ops_trace" / app).mkdir(parents=True)
    os.mkfifo(storage_root / "ops_trace" / app / "fifo.json")
    (storage_root / "ops_trace" / app / "folder.json").mkdir()
    producer.enqueue(app, "fifo")
    producer.enqueue(app, "folder")
    queued = sorted(redis.client(1).lrange("ops_trace", 0, -1))
    producer.send(_samples()["12-generate-name.json"])
    recorder = Recorder()
    source = CelerySource(_settings(redis, storage_root, unreadable_timeout=1), recorder)
    source.start()
    try:
        _wait_for(lambda: len(recorder.records) == 1, timeout=5, what="the good record, not held by the FIFO")
        _wait_for(lambda: source.stats.snapshot()["unreadable"] == 2 and _drained(redis),
                  what="the unreadable files' messages set aside")  # (llen, then hlen: a requeue between fools one)
    finally:
        source.stop(10)
    kept = storage_root / "traceexport" / "failed" / "messages"
    def task(entry: bytes) -> tuple[str, str]:
        message = json.loads(entry)
        return message["headers"]["id"], message["body"]

    assert sorted(task(p.read_bytes()) for p in kept.iterdir()) == sorted(task(m) for m in queued)


@pytest.mark.integration
def test_storage_that_is_not_difys_leaves_the_messages_on_the_queue(
    redis: RedisServer, storage_root: Path, tmp_path: Path, producer: DifyProducer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With storage.path pointing at a directory without Dify's ``ops_trace/`` (a volume not mounted), no message
    is acknowledged as "already handled": one warning says so, and once the path is right every record arrives."""
    producer.send(_samples()["05-message-chat.json"])
    producer.send(_samples()["12-generate-name.json"])
    empty = tmp_path / "not-mounted"
    empty.mkdir()
    caplog.set_level(logging.INFO, logger="traceexport.sources.celery")
    source = CelerySource(_settings(redis, empty), Recorder())
    source.start()
    try:
        _wait_for(lambda: source.stats.snapshot()["retry"] >= 4, what="the messages retried")
    finally:
        source.stop(10)
    assert source.stats.snapshot()["missing"] == 0
    client = redis.client(1)
    assert client.llen("ops_trace") + client.hlen(UNACKED) == 2
    warnings = [r.getMessage() for r in caplog.records if "mounted there" in r.getMessage()]
    assert len(warnings) == 1 and "no folder ops_trace/" in warnings[0], warnings

    recorder = Recorder()
    source = CelerySource(_settings(redis, storage_root, visibility_timeout=0.5), recorder)
    source.start()
    try:
        _wait_for(lambda: len(recorder.records) == 2 and _drained(redis), what="both records, once mounted")
    finally:
        source.stop(10)


@pytest.mark.integration
def test_a_full_spool_requeues_until_accepted(redis: RedisServer, storage_root: Path, producer: DifyProducer) -> None:
    """SpoolFullError twice puts the message back twice; the third attempt delivers it once and cleans up."""
    key = producer.send(_samples()["12-generate-name.json"])
    recorder = Recorder(refuse=2, retry_after=0.05)
    source = CelerySource(_settings(redis, storage_root), recorder)
    source.start()
    try:
        _wait_for(lambda: len(recorder.records) == 1, what="the record after two refusals")
        _wait_for(lambda: _drained(redis) and not (storage_root / key).exists(), what="ack and delete")
    finally:
        source.stop(10)
    assert recorder.calls == 3 and source.stats.snapshot()["retry"] == 2


@pytest.mark.integration
def test_stop_while_the_spool_is_full_puts_the_message_back(
    redis: RedisServer, storage_root: Path, producer: DifyProducer
) -> None:
    """stop() cuts the back-pressure wait short and leaves the message on the queue with its file."""
    key = producer.send(_samples()["12-generate-name.json"])
    recorder = Recorder(refuse=1000, retry_after=60)
    source = CelerySource(_settings(redis, storage_root), recorder)
    source.start()
    _wait_for(lambda: recorder.calls >= 1, what="the first refused accept")
    started = time.monotonic()
    source.stop(10)
    assert time.monotonic() - started < 10
    client = redis.client(1)
    _wait_for(lambda: client.llen("ops_trace") == 1 and client.hlen(UNACKED) == 0, what="message back on queue")
    assert (storage_root / key).exists()


@pytest.mark.integration
def test_a_batch_that_outlasts_visibility_timeout_is_one_warning_saying_what_it_risks(
    redis: RedisServer, storage_root: Path, producer: DifyProducer, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch held longer than visibility_timeout (a slow spool) may be put back and stored again by another
    consumer: nothing is lost, but records may be sent twice, so one line says so and what to raise."""
    producer.send(_samples()["12-generate-name.json"])
    recorder = Recorder()

    def slow_accept(records: Sequence[Record]) -> None:
        time.sleep(1.2)
        recorder(records)

    source = CelerySource(_settings(redis, storage_root, visibility_timeout=1), slow_accept)
    caplog.set_level(logging.WARNING, logger="traceexport.sources.celery")
    source.start()
    try:
        _wait_for(lambda: len(recorder.records) == 1 and _drained(redis), what="the record, late")
    finally:
        source.stop(10)
    lines = [r.getMessage() for r in caplog.records if "longer than visibility_timeout" in r.getMessage()]
    assert len(lines) == 1 and "raise visibility_timeout" in lines[0] and "\n" not in lines[0]


@pytest.mark.integration
def test_two_consumers_on_one_queue_lose_nothing(
    redis: RedisServer, storage_root: Path, producer: DifyProducer
) -> None:
    """Two sidecars sharing the queue (prefetch 2) deliver every message at least once and leave nothing."""
    ids = [str(uuid.uuid4()) for _ in range(16)]
    for message_id in ids:
        producer.send(_message_envelope(message_id))
    first, second = Recorder(), Recorder()
    sources = [
        CelerySource(_settings(redis, storage_root, prefetch=2), first),
        CelerySource(_settings(redis, storage_root, prefetch=2), second),
    ]
    for source in sources:
        source.start()
    try:
        expected = {f"message:{i}" for i in ids}
        _wait_for(lambda: set(first.keys()) | set(second.keys()) == expected, what="every message delivered")
        _wait_for(lambda: _drained(redis) and not _files(storage_root), what="queue drained, files gone")
    finally:
        for source in sources:
            source.stop(10)
    assert len(first.keys()) + len(second.keys()) >= len(ids)


@pytest.mark.integration
def test_another_task_on_the_queue_is_moved_unchanged_for_difys_worker(
    redis: RedisServer, storage_root: Path, producer: DifyProducer, caplog: pytest.LogCaptureFixture
) -> None:
    """A message for another task is moved as it is to ops_trace_other, with one warning naming the task."""
    task_id = producer.app.send_task("tasks.something_else", args=[{"x": 1}], queue="ops_trace").id
    original = json.loads(redis.client(1).lindex("ops_trace", 0))
    source = CelerySource(_settings(redis, storage_root), Recorder())
    caplog.set_level(logging.WARNING, logger="traceexport.sources.celery")
    source.start()
    client = redis.client(1)
    try:
        _wait_for(lambda: client.llen("ops_trace_other") == 1 and _drained(redis), what="the message moved")
    finally:
        source.stop(10)
    moved = json.loads(client.lindex("ops_trace_other", 0))
    assert moved["body"] == original["body"] and moved["headers"] == original["headers"]
    assert moved["headers"]["id"] == task_id and moved["content-type"] == "application/json"
    assert source.stats.snapshot()["unknown_task"] == 1
    assert any("tasks.something_else" in r.getMessage() and "ops_trace_other" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
@pytest.mark.parametrize("lost", ["before", "after"])
def test_a_foreign_task_is_moved_once_when_the_broker_is_lost_around_the_move(
    redis: RedisServer, storage_root: Path, producer: DifyProducer, monkeypatch: pytest.MonkeyPatch, lost: str
) -> None:
    """The broker is lost (restarted, failed over) just before or just after moving a foreign task: moving and
    acknowledging are one step, so the task is moved exactly once, never left moved but still in flight to come back
    after visibility_timeout and be moved again; and it is moved as kombu's own producer would publish it."""
    import redis as redis_py

    from traceexport.sources.celery.unacked import UnackedQueue

    producer.app.send_task("tasks.something_else", args=[{"x": 1}], queue="ops_trace", priority=5, reply_to="rq")
    client = redis.client(1)
    original = json.loads(client.lrange("ops_trace\x06\x163", 0, -1)[0])
    move, failures = UnackedQueue.move, [1]

    def lossy_move(self: UnackedQueue, message: Any, key: str, text: bytes) -> bool:
        if failures:
            failures.pop()
            if lost == "after":
                move(self, message, key, text)
            raise redis_py.exceptions.ConnectionError("Connection closed by server.")
        return move(self, message, key, text)

    monkeypatch.setattr(UnackedQueue, "move", lossy_move)
    source = CelerySource(_settings(redis, storage_root, visibility_timeout=1), Recorder())
    source.start()
    try:
        _wait_for(lambda: not failures and _drained(redis) and client.llen("ops_trace_other\x06\x163") == 1,
                  what="the task moved")
        time.sleep(2.5)  # past visibility_timeout: nothing comes back to be moved again
    finally:
        source.stop(10)
    moved = [json.loads(m) for m in client.lrange("ops_trace_other\x06\x163", 0, -1)]
    assert len(moved) == 1 and client.llen("ops_trace_other") == 0 and _drained(redis)

    import kombu

    with kombu.Connection(redis.url(1)) as connection:  # the oracle: kombu's producer publishing the same message
        channel = connection.channel()
        message = channel.Message(original, channel=channel)
        kombu.Producer(channel).publish(
            message.body, exchange="", routing_key="oracle", headers=message.headers,
            content_type=message.content_type, content_encoding=message.content_encoding, serializer=None,
            priority=5, reply_to="rq", correlation_id=message.properties["correlation_id"], delivery_mode=2)
    oracle = json.loads(client.lindex("oracle\x06\x163", 0))
    for entry in (moved[0], oracle):
        entry["properties"].pop("delivery_tag")
        entry["properties"]["delivery_info"].pop("routing_key")
        entry["headers"].pop("redelivered", None)  # put back on the queue after the loss: marked, as kombu does
    assert moved[0] == oracle


@pytest.mark.integration
def test_entries_no_celery_worker_can_read_are_kept_in_storage_not_moved_to_its_queue(
    redis: RedisServer, storage_root: Path, producer: DifyProducer, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries that are not kombu messages (not JSON, a JSON list, a body that is not base64) would make a Dify
    worker on ops_trace_other exit; each is kept byte for byte under traceexport/failed/messages/ with one
    warning and acknowledged, and the trace task beside them is delivered. An entry kept again (its
    acknowledgement lost) is the same file, not a second copy."""
    producer.send(_samples()["12-generate-name.json"])
    client = redis.client(1)
    message = json.loads(client.lindex("ops_trace", 0))
    garbage = [b"this is not json {", b"[1, 2, 3]", json.dumps(dict(message, body="!!!not base64!!!")).encode()]
    for entry in garbage:
        client.lpush("ops_trace", entry)
    recorder = Recorder()
    source = CelerySource(_settings(redis, storage_root), recorder)
    caplog.set_level(logging.WARNING, logger="traceexport.sources.celery")
    source.start()
    try:
        _wait_for(lambda: len(recorder.records) == 1 and _drained(redis), what="the task delivered, all acked")
    finally:
        source.stop(10)
    assert client.llen("ops_trace_other") == 0
    kept = sorted(p.read_bytes() for p in (storage_root / "traceexport" / "failed" / "messages").iterdir())
    assert kept == sorted(garbage)
    lines = [r.getMessage() for r in caplog.records if "no Celery worker can run it" in r.getMessage()]
    assert len(lines) == 3 and all("kept as traceexport/failed/messages/" in line for line in lines)
    assert any("Invalid base64-encoded string" in line for line in lines)  # what kombu said, not just "Error"

    client.lpush("ops_trace", garbage[0])  # the same entry again (kept, then its acknowledgement lost): one file
    source = CelerySource(_settings(redis, storage_root), recorder)
    source.start()
    try:
        _wait_for(lambda: source.stats.snapshot()["bad_message"] == 1 and _drained(redis), what="kept again")
    finally:
        source.stop(10)
    assert len(list((storage_root / "traceexport" / "failed" / "messages").iterdir())) == 3


@pytest.mark.integration
def test_another_task_is_dropped_with_a_warning_when_other_tasks_queue_is_null(
    redis: RedisServer, storage_root: Path, producer: DifyProducer, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``other_tasks_queue: null`` a foreign task is acknowledged and dropped, and the log says so."""
    producer.app.send_task("tasks.something_else", args=[{"x": 1}], queue="ops_trace")
    source = CelerySource(_settings(redis, storage_root, other_tasks_queue=None), Recorder())
    caplog.set_level(logging.WARNING, logger="traceexport.sources.celery")
    source.start()
    try:
        _wait_for(lambda: source.stats.snapshot()["unknown_task"] == 1 and _drained(redis), what="dropped")
    finally:
        source.stop(10)
    assert redis.client(1).llen("ops_trace_other") == 0
    assert any("dropped" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_a_broker_down_at_start_is_retried_until_it_comes_up(
    tmp_path: Path, storage_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The source starts without its broker, logs one masked line, and consumes once Redis is up."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    settings = CelerySourceSettings.from_config(
        {
            "broker_url": f"redis://:pw-not-logged@127.0.0.1:{port}/1",
            "storage": {"type": "local", "path": str(storage_root)},
        }
    )
    recorder = Recorder()
    source = CelerySource(settings, recorder)
    caplog.set_level(logging.INFO, logger="traceexport.sources.celery")
    source.start()
    try:
        _wait_for(lambda: any("unreachable" in r.getMessage() for r in caplog.records), what="the unreachable line")
        with RedisServer.start(tmp_path / "late-redis", port=port) as server:
            server.client(1).config_set("requirepass", "pw-not-logged")
            prod = DifyProducer(f"redis://:pw-not-logged@127.0.0.1:{port}/1", storage_root)
            try:
                prod.send(_samples()["12-generate-name.json"])
            finally:
                prod.close()
            _wait_for(lambda: len(recorder.records) == 1, timeout=20, what="the record after the broker came up")
    finally:
        source.stop(10)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "pw-not-logged" not in text and "reachable again" in text


@pytest.mark.integration
def test_a_connection_kombu_refuses_is_one_warning_and_the_consumer_keeps_trying(
    redis: RedisServer, storage_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A transport option kombu refuses only when it connects is one warning naming it (no traceback); the
    consumer thread stays alive and keeps retrying rather than dying while the daemon looks healthy."""
    settings = _settings(redis, storage_root, transport_options={"max_connections": "many"})
    source = CelerySource(settings, Recorder())
    caplog.set_level(logging.INFO, logger="traceexport.sources.celery")
    source.start()
    try:
        _wait_for(lambda: any("cannot be used" in r.getMessage() for r in caplog.records), what="the warning")
        time.sleep(1.5)  # a retry or two
        assert all(thread.is_alive() for thread in source._threads)
    finally:
        source.stop(10)
    lines = [r for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(lines) == 1 and "max_connections" in lines[0].getMessage() and lines[0].exc_info is None


@pytest.mark.integration
def test_an_error_the_broker_answers_every_time_is_one_warning_with_backoff_not_a_reconnect_loop(
    redis: RedisServer, storage_root: Path, producer: DifyProducer, caplog: pytest.LogCaptureFixture
) -> None:
    """When every take gets an error reply (here the queue's key holds a string: WRONGTYPE; out of memory acts
    the same), the consumer logs one warning and backs off instead of reconnecting in a tight loop hundreds of
    times a second; once the key is right it says so once and delivers."""
    client = redis.client(1)
    client.set("ops_trace", "not a list")
    recorder = Recorder()
    source = CelerySource(_settings(redis, storage_root), recorder)
    caplog.set_level(logging.INFO, logger="traceexport.sources.celery")
    source.start()
    try:
        _wait_for(lambda: any("WRONGTYPE" in r.getMessage() for r in caplog.records), what="the warning")
        time.sleep(2.5)  # the old loop logged some 1,500 lines in this time
        client.delete("ops_trace")
        producer.send(_samples()["12-generate-name.json"])
        _wait_for(lambda: len(recorder.records) == 1, timeout=20, what="the record once the key is a list")
    finally:
        source.stop(10)
    lines = [r.getMessage() for r in caplog.records if "celery-source-0" in r.getMessage()]
    assert len([line for line in lines if "WRONGTYPE" in line]) == 1, lines
    assert len([line for line in lines if "reachable again" in line]) == 1, lines


@pytest.mark.integration
def test_a_broker_that_stops_answering_is_noticed_and_left_behind(
    redis: RedisServer, storage_root: Path, producer: DifyProducer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that hangs (here stopped with SIGSTOP; a connection a network dropped silently is the same) is
    reported after the default socket timeout as one warning, instead of holding the consumer without a word
    forever; once it answers again the consumer reconnects by itself and delivers."""
    assert CelerySourceSettings().kombu_transport_options()["socket_timeout"] == 10.0
    recorder = Recorder()
    source = CelerySource(_settings(redis, storage_root), recorder)
    caplog.set_level(logging.INFO, logger="traceexport.sources.celery")
    source.start()
    try:
        time.sleep(1.0)  # connected, polling the empty queue
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            _wait_for(lambda: any("lost broker" in r.getMessage() for r in caplog.records), timeout=20,
                      what="the hung broker noticed")
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        producer.send(_samples()["12-generate-name.json"])
        _wait_for(lambda: len(recorder.records) == 1, timeout=40, what="the record once Redis answers")
    finally:
        source.stop(10)
    lines = [r.getMessage() for r in caplog.records if "celery-source-0" in r.getMessage()]
    assert len([line for line in lines if "lost broker" in line or "unreachable" in line]) == 1, lines


@pytest.mark.integration
def test_a_batch_stored_when_the_broker_is_lost_is_acknowledged_once_it_is_back_not_stored_twice(
    redis: RedisServer, storage_root: Path, producer: DifyProducer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stops answering between the spool taking a batch and its acknowledgement (a restart, a failover):
    once it is back the consumer acknowledges that batch and deletes its files before taking anything, so the
    messages do not come back after ``visibility_timeout`` to be stored and sent a second time."""
    key = producer.send(_samples()["12-generate-name.json"])
    records: list[Record] = []

    def accept(batch: Sequence[Record]) -> None:
        records.extend(batch)
        if len(records) == 1:  # stored; the acknowledgement comes next and finds Redis frozen
            os.kill(redis.process.pid, signal.SIGSTOP)
            threading.Timer(2.0, os.kill, (redis.process.pid, signal.SIGCONT)).start()

    settings = _settings(redis, storage_root, visibility_timeout=8,
                         transport_options={"socket_timeout": 1, "socket_connect_timeout": 1})
    source = CelerySource(settings, accept)
    caplog.set_level(logging.INFO, logger="traceexport.sources.celery")
    source.start()
    try:
        _wait_for(lambda: any("acknowledged 1 message(s)" in r.getMessage() for r in caplog.records), timeout=20,
                  what="the owed acknowledgement")
        _wait_for(lambda: _drained(redis) and not (storage_root / key).exists(), what="acked and deleted")
        time.sleep(9)  # past visibility_timeout: nothing comes back
    finally:
        source.stop(10)
    assert len(records) == 1 and source.stats.snapshot()["accepted"] == 1


@pytest.mark.integration
def test_sample_records_reach_a_file_sink_through_a_real_pipeline(
    redis: RedisServer, storage_root: Path, producer: DifyProducer, tmp_path: Path
) -> None:
    """Dify's queue → CelerySource → Pipeline.accept (spool) → otlp mapping → file sink, with the queue drained."""
    from traceexport.mapping import load_mapping
    from traceexport.pipeline import Pipeline, Route
    from traceexport.records import record_from_obj
    from traceexport.sinks.file import FileSink

    samples = _samples()
    mapping = load_mapping("otlp")
    expected = sum(len(mapping.map(record_from_obj(json.loads(data)))) for data in samples.values())
    out = tmp_path / "out"
    pipeline = Pipeline(tmp_path / "spool", [Route(FileSink("file", out, "otlp", fsync=False), mapping)])
    pipeline.start()
    source = CelerySource(_settings(redis, storage_root), pipeline.accept)
    for data in samples.values():
        producer.send(data)
    source.start()

    def lines() -> int:
        path = out / "otlp.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    try:
        _wait_for(lambda: lines() >= expected, timeout=30, what=f"{expected} spans in the file sink")
        _wait_for(lambda: _drained(redis) and not _files(storage_root), what="queue drained, files deleted")
    finally:
        source.stop(10)
        pipeline.stop(10)
        pipeline.close()
    assert lines() == expected


@pytest.mark.integration
def test_a_prefixed_dify_reaches_a_source_with_its_redis_key_prefix(
    redis: RedisServer, storage_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With Dify's REDIS_KEY_PREFIX on both sides every record arrives, foreign tasks move under the prefix,
    and no key outside the prefix is touched."""
    samples = _samples()
    producer = DifyProducer(redis.url(1), storage_root, redis_key_prefix=" dify ")
    try:
        for data in samples.values():
            producer.send(data)
        producer.app.send_task("tasks.something_else", args=[{"x": 1}], queue="ops_trace")
    finally:
        producer.close()
    client = redis.client(1)
    assert client.llen("dify:ops_trace") == len(samples) + 1 and not client.exists("ops_trace")
    recorder = Recorder()
    settings = _settings(redis, storage_root, concurrency=2, redis_key_prefix="dify")
    source = CelerySource(settings, recorder, empty_queue_hint_after=0.2)
    caplog.set_level(logging.INFO, logger="traceexport.sources.celery")
    source.start()
    probe = source._probe
    try:
        _wait_for(lambda: len(recorder.records) == len(samples), what="all samples accepted")
        _wait_for(lambda: client.llen("dify:ops_trace_other") == 1, what="the foreign task moved")
        _wait_for(lambda: _drained(redis, "dify:") and not _files(storage_root), what="queue drained, files gone")
        _wait_for(lambda: probe is not None and not probe.thread.is_alive(), what="the empty-queue probe to end")
    finally:
        source.stop(10)
    assert not [k for k in client.keys("*") if not k.startswith(b"dify:")]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Redis key 'dify:ops_trace'" in text and "redis_key_prefix 'dify' from config" in text
    assert "holds" not in text  # no empty-queue hint: the queue was found


@pytest.mark.integration
@pytest.mark.parametrize(("dify_prefix", "source_prefix", "advice"), [
    ("dify", "", "its REDIS_KEY_PREFIX is probably 'dify': set redis_key_prefix to that"),
    ("", "dify", "clear the key prefix"),
])
def test_a_mismatched_prefix_sees_an_empty_queue_and_logs_a_hint(
    redis: RedisServer,
    storage_root: Path,
    caplog: pytest.LogCaptureFixture,
    dify_prefix: str,
    source_prefix: str,
    advice: str,
) -> None:
    """A source whose key prefix differs from Dify's receives nothing, leaves the messages alone, and after
    a quiet spell logs one warning naming the key that holds them and what to set."""
    producer = DifyProducer(redis.url(1), storage_root, redis_key_prefix=dify_prefix)
    try:
        producer.send(_samples()["12-generate-name.json"])
        producer.send(_samples()["05-message-chat.json"])
    finally:
        producer.close()
    dify_key = f"{dify_prefix}:ops_trace" if dify_prefix else "ops_trace"
    recorder = Recorder()
    settings = _settings(redis, storage_root, redis_key_prefix=source_prefix)
    source = CelerySource(settings, recorder, empty_queue_hint_after=0.3)
    caplog.set_level(logging.WARNING, logger="traceexport.sources.celery")
    source.start()
    try:
        _wait_for(lambda: any("holds" in r.getMessage() for r in caplog.records), what="the empty-queue hint")
    finally:
        source.stop(10)
    hints = [r.getMessage() for r in caplog.records if "holds" in r.getMessage()]
    assert len(hints) == 1 and f"Redis key {dify_key!r} holds 2 message(s)" in hints[0] and advice in hints[0]
    assert recorder.records == [] and redis.client(1).llen(dify_key) == 2
