"""HTTP ingest handler: status codes, per-record rejections, auth, limits, back-pressure, shutdown."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from traceexport.errors import SpoolFullError
from traceexport.records import Record
from traceexport.sources.http import INGEST_PATH, IngestServer, IngestSettings, parse_body

SAMPLES = Path(__file__).parents[1] / "data" / "samples"
TOKEN = "test-token-0123456789"


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text(encoding="utf-8"))
    return data


class StandIn:
    """A stand-in pipeline: collects accepted records, or fails as told."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.error: Exception | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def accept(self, records: list[Record]) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.error is not None:
            raise self.error
        self.records.extend(records)


@pytest.fixture
def pipeline() -> StandIn:
    return StandIn()


def start(pipeline: StandIn, **settings: Any) -> IngestServer:
    ready = settings.pop("ready", lambda: None)
    server = IngestServer(IngestSettings(host="127.0.0.1", port=0, **settings), pipeline.accept,
                          ready=ready, metrics_text=lambda: "traceexport_queue_depth 0\n")
    server.start()
    return server


@pytest.fixture
def server(pipeline: StandIn) -> Iterator[IngestServer]:
    srv = start(pipeline, max_body_bytes=64 * 1024)
    yield srv
    srv.stop(1.0)


def url(server: IngestServer, path: str = INGEST_PATH) -> str:
    host, port = server.address
    return f"http://{host}:{port}{path}"


def post(server: IngestServer, body: Any, *, content_type: str = "application/json", path: str = INGEST_PATH,
         headers: dict[str, str] | None = None) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url(server, path), content=data, timeout=10,
                      headers={"Content-Type": content_type, **(headers or {})})


def test_envelope_is_accepted_after_the_pipeline_took_it(server: IngestServer, pipeline: StandIn) -> None:
    """A TaskData envelope answers 202 with the count once accept returned."""
    response = post(server, sample("05-message-chat.json"))
    assert response.status_code == 202 and response.json() == {"accepted": 1}
    assert [r.type for r in pipeline.records] == ["message"]


def test_bare_trace_info_takes_its_type_from_the_query(server: IngestServer, pipeline: StandIn) -> None:
    """A bare TraceInfo is typed by ?type= (and gets its app id from ?app_id=)."""
    trace_info = sample("07-tool-call.json")["trace_info"]
    response = post(server, trace_info, path=f"{INGEST_PATH}?type=ToolTraceInfo&app_id=app-1")
    assert response.status_code == 202
    assert pipeline.records[0].type == "tool" and pipeline.records[0].app_id == "app-1"


def test_bare_trace_info_takes_its_type_from_a_field(server: IngestServer, pipeline: StandIn) -> None:
    """A bare TraceInfo is typed by its trace_info_type field."""
    trace_info = {**sample("12-generate-name.json")["trace_info"], "trace_info_type": "GenerateNameTraceInfo"}
    assert post(server, trace_info).status_code == 202
    assert pipeline.records[0].type == "generate_name"


def test_array_with_a_bad_record_accepts_the_good_ones(server: IngestServer, pipeline: StandIn) -> None:
    """A bad record in an array is listed by index while the others are still accepted (400)."""
    bad = {"app_id": "a", "trace_info_type": "NoSuchTraceInfo", "trace_info": {}}
    response = post(server, [sample("05-message-chat.json"), bad, sample("07-tool-call.json")])
    assert response.status_code == 400
    answer = response.json()
    assert answer["accepted"] == 2 and len(pipeline.records) == 2
    assert answer["rejected"][0]["index"] == 1 and "NoSuchTraceInfo" in answer["rejected"][0]["reason"]


def test_ndjson_rejections_name_the_line(server: IngestServer, pipeline: StandIn) -> None:
    """NDJSON is read line by line; a broken line is reported by its number."""
    body = (json.dumps(sample("05-message-chat.json")) + "\n{not json\n"
            + json.dumps(sample("09-dataset-retrieval.json")) + "\n").encode()
    response = post(server, body, content_type="application/x-ndjson")
    assert response.status_code == 400
    assert response.json()["accepted"] == 2 and response.json()["rejected"][0]["line"] == 2


def test_invalid_json_is_a_400_with_a_reason(server: IngestServer, pipeline: StandIn) -> None:
    """A body that is not JSON answers 400 with the parser's reason and accepts nothing."""
    response = post(server, b'{"app_id": ')
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["rejected"][0]["reason"] and not pipeline.records


def test_empty_body_is_a_400(server: IngestServer) -> None:
    """An empty NDJSON body is rejected with a reason rather than accepted as nothing."""
    assert post(server, b"", content_type="application/x-ndjson").status_code == 400


def test_wrong_content_type_is_415(server: IngestServer) -> None:
    """Form posts and other content types are refused with 415."""
    response = post(server, b"a=b", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415 and "application/json" in response.json()["error"]


def test_oversized_body_is_413(server: IngestServer, pipeline: StandIn) -> None:
    """A body over max_body_bytes is refused before it is read."""
    response = post(server, b"[" + b" " * (70 * 1024) + b"]")
    assert response.status_code == 413 and not pipeline.records


def test_token_is_required_when_configured(pipeline: StandIn) -> None:
    """Without or with a wrong bearer token the answer is 401 with a challenge; the right one passes."""
    srv = start(pipeline, token=TOKEN)
    try:
        missing = post(srv, sample("05-message-chat.json"))
        wrong = post(srv, sample("05-message-chat.json"), headers={"Authorization": "Bearer nope"})
        right = post(srv, sample("05-message-chat.json"), headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        srv.stop(1.0)
    assert missing.status_code == 401 and wrong.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in missing.text + wrong.text
    assert right.status_code == 202


def test_spool_full_is_503_with_retry_after(server: IngestServer, pipeline: StandIn) -> None:
    """Back-pressure from the spool becomes 503 with a Retry-After in whole seconds."""
    pipeline.error = SpoolFullError("spool is full", retry_after=2.5)
    response = post(server, sample("05-message-chat.json"))
    assert response.status_code == 503 and response.headers["Retry-After"] == "3"


def test_unexpected_failure_is_500_without_a_traceback(server: IngestServer, pipeline: StandIn) -> None:
    """An unexpected error answers 500 with a short message and no traceback or exception text."""
    pipeline.error = RuntimeError("secret internals")
    response = post(server, sample("05-message-chat.json"))
    assert response.status_code == 500
    assert "Traceback" not in response.text and "secret internals" not in response.text


def test_health_readiness_and_metrics(pipeline: StandIn) -> None:
    """/healthz is 200, /readyz reports the not-ready reason as 503, /metrics is Prometheus text."""
    srv = start(pipeline, ready=lambda: "pipeline not running")
    try:
        health = httpx.get(url(srv, "/healthz"))
        ready = httpx.get(url(srv, "/readyz"))
        metrics = httpx.get(url(srv, "/metrics"))
        missing = httpx.get(url(srv, "/nope"))
    finally:
        srv.stop(1.0)
    assert health.status_code == 200
    assert ready.status_code == 503 and ready.json()["reason"] == "pipeline not running"
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "traceexport_queue_depth" in metrics.text
    assert missing.status_code == 404


def test_draining_server_answers_503(server: IngestServer) -> None:
    """Once shutdown began, new posts get 503 with Retry-After and /readyz turns 503."""
    server.draining = True
    response = post(server, sample("05-message-chat.json"))
    assert response.status_code == 503 and "Retry-After" in response.headers
    assert httpx.get(url(server, "/readyz")).status_code == 503


def test_stop_lets_an_in_flight_request_finish(pipeline: StandIn) -> None:
    """stop() waits for a request already inside accept, which still gets its 202."""
    srv = start(pipeline)
    pipeline.gate = threading.Event()
    answers: list[httpx.Response] = []
    client = threading.Thread(target=lambda: answers.append(post(srv, sample("05-message-chat.json"))))
    client.start()
    assert pipeline.entered.wait(10)
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(srv.stop(10.0)))
    stopper.start()
    pipeline.gate.set()
    client.join(10)
    stopper.join(10)
    assert answers[0].status_code == 202 and stopped == [True]


def test_parse_body_single_object_and_wrong_shape() -> None:
    """parse_body reads one object as index 0 and rejects a JSON scalar with a reason."""
    records, rejected = parse_body(json.dumps(sample("10-moderation-flagged.json")).encode(), "application/json")
    assert [r.type for r in records] == ["moderation"] and rejected == []
    records, rejected = parse_body(b"42", "application/json")
    assert records == [] and rejected[0]["index"] == 0 and "object" in rejected[0]["reason"]
