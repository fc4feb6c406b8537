"""Delivery under faults, against the contract-checking Opik fake on 127.0.0.1: outages, throttling,
``kill -9`` of the exporting process, invalid records, a full spool. Nothing accepted may be lost."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.fakes import RecordedRequest, Response
from tests.fakes.opik_server import OpikFake
from tests.support.processes import kill_hard, python_env, python_process, read_line, start_process, wait_exit

from traceexport.errors import RecordError, SpoolFullError
from traceexport.mapping import load_mapping
from traceexport.pipeline import Pipeline, PipelineSettings, RetryPolicy, Route, deadletter
from traceexport.records import Record, record_from_obj
from traceexport.sinks import create_sink
from traceexport.sinks.base import Payload

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).parents[1] / "data" / "samples" / "05-message-chat.json"
QUICK = RetryPolicy(max_attempts=50, max_age=60.0, initial_backoff=0.05, max_backoff=0.2)


def envelopes(n: int, start: int = 0) -> list[dict[str, Any]]:
    """``n`` copies of the sample chat record, each with its own message id."""
    base = json.loads(SAMPLE.read_text())
    out = []
    for i in range(start, start + n):
        envelope = json.loads(json.dumps(base))
        envelope["trace_info"]["message_id"] = f"10000000-0000-4000-8000-{i:012d}"
        out.append(envelope)
    return out


def records(n: int, start: int = 0) -> list[Record]:
    """``n`` distinct message records."""
    return [record_from_obj(e) for e in envelopes(n, start)]


def trace_ids(recs: Sequence[Record]) -> set[str]:
    """The Opik trace ids the opik mapping gives ``recs`` (deterministic)."""
    mapping = load_mapping("opik")
    return {p.body["id"] for r in recs for p in mapping.map(r) if p.kind == "trace"}


def sent_trace_ids(fake: OpikFake) -> list[str]:
    """Every trace id in every request the fake answered 204, resends included."""
    return [t["id"] for r in fake.requests_to("/v1/private/traces/batch") if r.status == 204
            for t in r.json()["traces"]]


def opik_route(fake: OpikFake, **options: Any) -> Route:
    """A route to the fake through the real opik sink and mapping."""
    sink = create_sink("opik", options={"url": fake.url, **options}, env={})
    return Route(sink, load_mapping("opik"))


class TimedOpik(OpikFake):
    """The Opik fake that also notes when each request arrived and can throttle or slow down."""

    def __init__(self, *, throttle: int = 0, retry_after: str = "1", delay: float = 0.0) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, int]] = []
        self.throttle, self.retry_after, self.delay = throttle, retry_after, delay

    def handle(self, request: RecordedRequest) -> Response:
        if self.delay:
            threading.Event().wait(self.delay)  # a slow backend, so a kill lands mid-stream
        with self._lock:
            throttled = self.throttle > 0
            self.throttle -= 1 if throttled else 0
        response = (Response(429, {"errors": ["rate limited"]}, {"Retry-After": self.retry_after}) if throttled
                    else super().handle(request))
        with self._lock:
            self.arrivals.append((time.monotonic(), response.status))
        return response


def test_outage_then_recovery_delivers_every_record_with_stable_ids(tmp_path: Path) -> None:
    """After 503s for a while every record reaches Opik, and every resend carries the same ids."""
    recs = records(60)
    with OpikFake() as fake:
        fake.fail_next(6, 503)
        with Pipeline(tmp_path, [opik_route(fake, max_items=20)], PipelineSettings(retry=QUICK)) as pipe:
            pipe.start()
            pipe.accept(recs)
            assert pipe.wait_idle(30)
            figures = pipe.metrics()["sinks"]["opik"]
        expected = trace_ids(recs)
        assert set(fake.traces) == expected
        assert set(sent_trace_ids(fake)) == expected
        assert any(r.status == 503 for r in fake.requests)
    assert figures["exported"] == 60 and figures["retried"] > 0 and figures["dead_lettered"] == 0


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    """After a 429 with Retry-After: 1 the next request comes at least one second later."""
    with TimedOpik(throttle=1, retry_after="1") as fake:
        with Pipeline(tmp_path, [opik_route(fake)], PipelineSettings(retry=QUICK)) as pipe:
            pipe.start()
            pipe.accept(records(5))
            assert pipe.wait_idle(30)
        statuses = [s for _, s in fake.arrivals]
        assert statuses[0] == 429 and 204 in statuses
        gap = fake.arrivals[1][0] - fake.arrivals[0][0]
        assert gap >= 1.0, f"retried {gap:.3f}s after a 429 asking for 1s"
        assert set(fake.traces) == trace_ids(records(5))


DRIVER = """
import sys
from pathlib import Path
from traceexport.mapping import load_mapping
from traceexport.pipeline import Pipeline, Route
from traceexport.records import parse_records
from traceexport.sinks import create_sink
spool, url, data = sys.argv[1:4]
sink = create_sink("opik", options={"url": url, "max_items": 25}, env={})
pipe = Pipeline(Path(spool), [Route(sink, load_mapping("opik"))])
recs = list(parse_records(Path(data).read_bytes()))
pipe.accept(recs)
print("accepted", len(recs), flush=True)
pipe.start()
pipe.wait_idle(120)
print("idle", flush=True)
"""


def test_kill_9_mid_stream_then_restart_loses_nothing(tmp_path: Path) -> None:
    """A process killed with SIGKILL mid-delivery loses nothing: `export` on its spool delivers the rest."""
    data = tmp_path / "records.jsonl"
    envs = envelopes(500)
    data.write_text("".join(json.dumps(e) + "\n" for e in envs))
    spool = tmp_path / "spool"
    with TimedOpik(delay=0.05) as fake:
        proc = python_process(["-c", DRIVER, str(spool), fake.url, str(data)])
        try:
            assert read_line(proc, timeout=60) == "accepted 500"
            assert fake.wait_for(lambda: len(fake.requests) >= 4, timeout=30)
        finally:
            kill_hard(proc)
            wait_exit(proc, 10)
        delivered_before = len(fake.traces)
        assert 0 < delivered_before < 500, "the kill should land mid-stream"
        resume = start_process([sys.executable, "-m", "traceexport", "export", "--to", "opik", "--spool", str(spool)],
                               env=python_env({"OPIK_URL_OVERRIDE": fake.url}))
        code, _, err = wait_exit(resume, 120)
        assert code == 0, err
        assert set(fake.traces) == trace_ids([record_from_obj(e) for e in envs])


class RefuseSome:
    """The opik mapping, except that chosen records fail to map and others get a payload Opik refuses."""

    fingerprint = None  # never mapped ahead by the accepting process

    def __init__(self, unmappable: set[str], refused: set[str]) -> None:
        self.inner = load_mapping("opik")
        self.unmappable, self.refused = unmappable, refused

    def map(self, record: Record) -> list[Payload]:
        if record.key in self.unmappable:
            raise RecordError("message record has no usable model")
        payloads = self.inner.map(record)
        if record.key in self.refused:
            payloads = [Payload(p.kind, {**p.body, "start_time": None}, p.key) for p in payloads]
        return payloads


def test_invalid_records_are_dead_lettered_and_valid_ones_delivered(tmp_path: Path) -> None:
    """Unmappable and backend-refused records land in the dead letter with reasons; the rest are delivered."""
    recs = records(20)
    unmappable, refused = {recs[3].key}, {recs[7].key, recs[12].key}
    with OpikFake() as fake:
        route = Route(create_sink("opik", options={"url": fake.url}, env={}), RefuseSome(unmappable, refused))
        with Pipeline(tmp_path, [route], PipelineSettings(retry=QUICK)) as pipe:
            pipe.start()
            pipe.accept(recs)
            assert pipe.wait_idle(30)
            dead = {e.record_key: e for e in deadletter.list_entries(pipe.spool)}
        good = [r for r in recs if r.key not in unmappable | refused]
        assert trace_ids(good) <= set(fake.traces)
        assert not (trace_ids([r for r in recs if r.key in refused]) & set(fake.traces))
    assert set(dead) == unmappable | refused
    assert dead[recs[3].key].reason == "message record has no usable model"
    assert all(dead[k].permanent and dead[k].status_code == 422 and dead[k].reason for k in refused)


def test_full_spool_refuses_new_input_and_keeps_what_was_accepted(tmp_path: Path) -> None:
    """With the backend down and the spool full, accept raises a retryable error; after recovery all
    accepted records are delivered and input is taken again."""
    with OpikFake() as fake:
        fake.fail_next(10**6, 503)
        settings = PipelineSettings(retry=QUICK, max_bytes=1_500_000, full_retry_after=2.0)
        with Pipeline(tmp_path, [opik_route(fake)], settings) as pipe:
            pipe.start()
            accepted: list[Record] = []
            with pytest.raises(SpoolFullError) as err:
                for start in range(0, 2000, 10):
                    batch = records(10, start)
                    pipe.accept(batch)
                    accepted += batch
            assert err.value.retry_after == 2.0
            fake.reset()  # the backend recovers
            assert pipe.wait_idle(60)
            assert set(fake.traces) == trace_ids(accepted)
            pipe.accept(records(5, 5000))
            assert pipe.wait_idle(30)
            assert pipe.metrics()["sinks"]["opik"]["dropped"] == 0
