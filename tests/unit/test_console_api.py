"""The console's server and JSON API over a real pipeline and spool: auth, headers, limits, status, dead letters,
the playground (docs/console-api.md is the contract)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.unit.pipeline.pipeline_helpers import ScriptedSink, StandInMapping, fail_first, make_records

from traceexport.config import ConsoleConfig
from traceexport.console import ConsoleServer, build_console
from traceexport.console.history import History
from traceexport.console.server import SECURITY_HEADERS
from traceexport.pipeline import Pipeline, PipelineSettings, RetryPolicy, Route
from traceexport.records import Record, parse_records
from traceexport.sinks.base import ExportResult, ItemFailure

FAST = PipelineSettings(fsync=False, poll_interval=0.01, retry=RetryPolicy(max_attempts=1))
TOKEN = "console-token-0123456789"
SAMPLES = Path(__file__).parents[1] / "data" / "samples"


class Console:
    """A running console over a pipeline with a healthy sink ``ok`` and a refusing one ``refused``."""

    def __init__(self, root: Path, token: str | None = TOKEN, max_body: str = "1MiB") -> None:
        self.refused = ScriptedSink("refused", fail_first(99, ItemFailure("HTTP 422: schema says no", True, 422)))
        self.ok = ScriptedSink("ok")
        self.pipeline = Pipeline(root / "spool", [Route(self.ok, StandInMapping()),
                                                  Route(self.refused, StandInMapping())], FAST)
        self.pipeline.start()
        config = ConsoleConfig.model_validate({"listen": "127.0.0.1:0", "token": token, "max_body_bytes": max_body})
        self.server: ConsoleServer = build_console(config, self.pipeline, {"ok": "otlp", "refused": "opik"})
        self.server.start()
        host, port = self.server.address
        self.base = f"http://{host}:{port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.base + path, params=params, headers=self.headers, timeout=10)

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(self.base + path, json=body, headers=self.headers, timeout=10)

    def close(self) -> None:
        self.server.stop()
        self.pipeline.stop(5)
        self.pipeline.close()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    running = Console(tmp_path)
    try:
        yield running
    finally:
        running.close()


def _deliver(console: Console, n: int) -> None:
    console.pipeline.accept(make_records(n))
    assert console.pipeline.wait_idle(10)


def test_every_api_call_needs_the_token_and_the_page_does_not(console: Console) -> None:
    """Without the bearer token (or with a wrong one) every /api/ call is 401 with a challenge; /ui/ is public."""
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        answer = httpx.get(console.base + "/api/status", headers=headers, timeout=10)
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "error" in answer.json()
    refused = httpx.post(console.base + "/api/dead-letters/purge", json={"ids": [1]}, timeout=10)
    assert refused.status_code == 401
    assert httpx.get(console.base + "/api/nope", timeout=10).status_code == 401  # no endpoint list for strangers
    assert console.get("/api/status").status_code == 200
    assert httpx.get(console.base + "/ui/", timeout=10).status_code in (200, 404)  # 404 only without the page


def test_every_answer_carries_the_security_headers(console: Console) -> None:
    """CSP, nosniff, no referrer, no framing and no caching on API answers, errors and redirects alike."""
    for answer in (console.get("/api/status"), console.get("/api/nope"), httpx.get(console.base + "/", timeout=10),
                   httpx.get(console.base + "/api/status", timeout=10)):
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value
    assert "script-src 'self'" in SECURITY_HEADERS["Content-Security-Policy"]
    assert "unsafe-inline" not in SECURITY_HEADERS["Content-Security-Policy"]


def test_a_post_not_declared_json_is_refused_so_no_other_site_can_act(tmp_path: Path) -> None:
    """Without a token (the loopback default), a page on any site could purge dead letters with a text/plain
    or form POST, which browsers send cross-site without asking: every POST must declare application/json
    (415 otherwise, nothing done), which a browser sends cross-site only after a preflight the console
    refuses (OPTIONS is 405 with no Access-Control-Allow-Origin)."""
    open_console = Console(tmp_path, token=None)
    try:
        _deliver(open_console, 1)
        entry = open_console.get("/api/dead-letters").json()["entries"][0]["id"]
        body = json.dumps({"ids": [entry]}).encode()
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                             None):
            headers = {"Origin": "http://elsewhere.example"}
            if content_type:
                headers["Content-Type"] = content_type
            answer = httpx.post(open_console.base + "/api/dead-letters/purge", content=body, headers=headers,
                                timeout=10)
            assert answer.status_code == 415 and "application/json" in answer.json()["error"], content_type
        assert open_console.get("/api/dead-letters").json()["total"] == 1
        preflight = httpx.options(open_console.base + "/api/dead-letters/purge", timeout=10,
                                  headers={"Origin": "http://elsewhere.example",
                                           "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 405 and "Access-Control-Allow-Origin" not in preflight.headers
        assert open_console.post("/api/dead-letters/purge", {"ids": [entry]}).json() == {"purged": 1}
    finally:
        open_console.close()


def test_without_a_token_the_api_answers_only_requests_addressed_to_loopback(tmp_path: Path) -> None:
    """A page that rebinds its own name to 127.0.0.1 (DNS rebinding) reaches a tokenless console from the
    operator's browser with its own name in Host: 403, no dead letter read; loopback names pass, and with a token
    any name does (behind a proxy that forwards the public Host)."""
    open_console = Console(tmp_path / "open", token=None)
    guarded = Console(tmp_path / "guarded")
    try:
        _deliver(open_console, 1)
        port = open_console.base.rsplit(":", 1)[1]
        for host in ("rebind.example", f"rebind.example:{port}", "127.0.0.1.rebind.example", "10.0.0.8"):
            answer = httpx.get(open_console.base + "/api/dead-letters", headers={"Host": host}, timeout=10)
            assert answer.status_code == 403 and "console.token" in answer.json()["error"], host
            assert "entries" not in answer.json()
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "127.9.9.9"):
            answer = httpx.get(open_console.base + "/api/dead-letters", headers={"Host": host}, timeout=10)
            assert answer.status_code == 200 and answer.json()["total"] == 1, host
        answer = httpx.get(guarded.base + "/api/status", headers={**guarded.headers, "Host": "traces.example.com"},
                           timeout=10)
        assert answer.status_code == 200
    finally:
        open_console.close()
        guarded.close()


def test_a_405_allows_what_the_path_takes(console: Console) -> None:
    """A wrong method's 405 lists in Allow the methods that path answers (RFC 9110), not every method the
    console knows: POST for the actions, GET and HEAD for what is read."""
    def allow(method: str, path: str) -> str:
        answer = httpx.request(method, console.base + path, headers={**console.headers,
                                                                     "Content-Type": "application/json"},
                               content=b"{}", timeout=10)
        assert answer.status_code == 405
        return answer.headers["Allow"]

    assert allow("POST", "/api/status") == "GET, HEAD"
    assert allow("DELETE", "/api/status") == "GET, HEAD"
    assert allow("GET", "/api/dead-letters/replay") == "POST"
    assert allow("PUT", "/api/dead-letters/purge") == "POST"
    assert allow("POST", "/api/dead-letters/7") == "GET, HEAD"
    assert allow("PUT", "/ui/") == "GET, HEAD"


def test_bad_calls_get_one_line_json_errors(console: Console) -> None:
    """Unknown paths 404, wrong methods 405 with Allow, bad JSON and bad fields 400: never a traceback."""
    assert console.get("/api/nope").status_code == 404
    wrong = httpx.delete(console.base + "/api/status", headers=console.headers, timeout=10)
    assert wrong.status_code == 405 and "Allow" in wrong.headers
    assert console.get("/api/dead-letters/replay").status_code == 405
    assert console.post("/api/status", {}).status_code == 405
    raw = httpx.post(console.base + "/api/playground/map", content=b"{not json", timeout=10,
                     headers={**console.headers, "Content-Type": "application/json"})
    assert raw.status_code == 400 and "not JSON" in raw.json()["error"]
    for body in ({}, {"ids": []}, {"ids": ["1"]}, {"ids": [True]}, [1, 2]):
        answer = console.post("/api/dead-letters/replay", body)
        assert answer.status_code == 400 and "\n" not in answer.json()["error"]
    assert console.get("/api/dead-letters", limit="many").status_code == 400
    assert console.get("/api/dead-letters/abc").status_code == 404
    assert console.post("/api/playground/map", {"backend": "nope", "record": "{}"}).status_code == 400


def test_bodies_nested_too_deeply_are_400_not_500(console: Console) -> None:
    """A body of a hundred thousand '[' is "not JSON" (400) on every POST, and a playground override nested
    past PyYAML's recursion is a problem of override.yaml: never a 500 and an internal_error log line."""
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/api/dead-letters/replay", "/api/dead-letters/purge", "/api/playground/map"):
        answer = httpx.post(console.base + path, content=deep, timeout=10,
                            headers={**console.headers, "Content-Type": "application/json"})
        assert answer.status_code == 400 and "not JSON" in answer.json()["error"], path
    record = (SAMPLES / "05-message-chat.json").read_text()
    answer = console.post("/api/playground/map", {"backend": "otlp", "record": record,
                                                  "override": "records: " + "[" * 10_000})
    assert answer.status_code == 200 and not answer.json()["ok"]
    assert answer.json()["problems"] == [{"file": "override.yaml", "line": None, "path": None,
                                          "message": "YAML nested too deeply to read"}]


def test_a_playground_override_of_nested_aliases_is_a_problem_not_a_daemon_out_of_memory(console: Console) -> None:
    """An override of a few hundred bytes whose nested YAML aliases expand to a billion values ("billion laughs")
    is one problem of override.yaml, answered at once: it used to make the daemon compile it until memory ran out."""
    lines = ['definitions:', '  l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"  l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * 10) + "]" for n in range(1, 9)]
    lines += ["records:", "  workflow:", "    span:", "      body:", "        attributes: {bomb: {const: *l8}}"]
    record = (SAMPLES / "01-workflow-ok.json").read_text()
    answer = console.post("/api/playground/map", {"backend": "otlp", "record": record, "override": "\n".join(lines)})
    assert answer.status_code == 200 and not answer.json()["ok"]
    [problem] = answer.json()["problems"]
    assert problem["file"] == "override.yaml" and "YAML aliases expand the file by" in problem["message"]


def test_a_playground_override_holding_a_character_yaml_refuses_is_a_problem_not_a_500(console: Console) -> None:
    """An override with a NUL in it is one problem of override.yaml at its line: PyYAML's reader refused it
    before the loader's error handling, and the answer was a 500 'internal error'."""
    record = (SAMPLES / "01-workflow-ok.json").read_text()
    answer = console.post("/api/playground/map", {"backend": "otlp", "record": record,
                                                  "override": "records:\n  workflow: {}\n\x00"})
    assert answer.status_code == 200 and not answer.json()["ok"]
    assert answer.json()["problems"] == [{"file": "override.yaml", "line": 3, "path": None, "message": (
        "YAML syntax: unacceptable character #x0000: special characters are not allowed")}]


def test_ids_beyond_64_bits_or_below_one_are_404_or_400_not_500(console: Console) -> None:
    """Dead-letter ids SQLite cannot hold (beyond 64 bits, negative, zero) are an unknown entry (404) or a bad
    request (400) naming the range, never a 500; other numbers of the query too."""
    huge = 10**23
    _deliver(console, 2)
    for path in (f"/api/dead-letters/{huge}", "/api/dead-letters/-5", "/api/dead-letters/0",
                 "/api/dead-letters/%C2%B2"):
        answer = console.get(path)
        assert answer.status_code == 404 and "no dead letter" in answer.json()["error"], path
    for after_id in (str(huge), "-1", "1.5", "1e30", "x"):
        answer = console.get("/api/dead-letters", after_id=after_id)
        assert answer.status_code == 400 and "after_id" in answer.json()["error"], after_id
    assert console.get("/api/dead-letters", after_id=str(2**63 - 1)).json()["entries"] == []
    for limit in ("1e400", "0", "-3"):
        assert console.get("/api/dead-letters", limit=limit).status_code == 400, limit
    assert len(console.get("/api/dead-letters", limit="1e30").json()["entries"]) == 2
    for path in ("/api/dead-letters/replay", "/api/dead-letters/purge"):
        for ids in ([huge], [1, -1], [0], [2**63]):
            answer = console.post(path, {"ids": ids})
            assert answer.status_code == 400 and "1 to 9223372036854775807" in answer.json()["error"], (path, ids)
    assert console.get("/api/dead-letters").json()["total"] == 2


def test_a_body_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """The playground's input is bounded by console.max_body_bytes: 413 with the limit named."""
    small = Console(tmp_path, max_body="2KB")
    try:
        record = (SAMPLES / "01-workflow-ok.json").read_text()
        answer = small.post("/api/playground/map", {"backend": "otlp", "record": record * 3})
        assert answer.status_code == 413 and "2000-byte limit" in answer.json()["error"]
    finally:
        small.close()


def test_status_lists_each_sink_with_its_figures(console: Console) -> None:
    """Status shows every configured sink with its type, counters, queue, latency, dead letters and rate limit."""
    console.server.api.history.sample()
    _deliver(console, 5)
    status = console.get("/api/status").json()
    assert status["ready"] is True and status["spool"]["max_bytes"] == FAST.max_bytes
    sinks = {s["name"]: s for s in status["sinks"]}
    assert set(sinks) == {"ok", "refused"} and sinks["ok"]["type"] == "otlp"
    ok, refused = sinks["ok"], sinks["refused"]
    assert ok["exported"] == 5 and ok["queue_depth"] == 0 and ok["rate_1m"] > 0
    assert ok["latency"]["delivery"]["count"] == 5 and ok["latency"]["delivery"]["p95_seconds"] is not None
    assert ok["rate_limit"] == {"requests_per_second": None}
    assert refused["dead_letters"] == 5 and refused["dead_lettered"] == 5 and refused["exported"] == 0
    history = console.get("/api/history").json()
    assert history["interval_seconds"] == 5
    console.server.api.history.sample()
    points = console.get("/api/history").json()["points"]
    assert points and points[-1]["sinks"]["ok"]["rate"] >= 0


def test_dead_letters_are_listed_filtered_shown_replayed_and_purged(console: Console) -> None:
    """The dead-letter calls: filters by sink, reason and age; one entry with its record; replay re-sends
    to the sink (which now accepts); purge deletes; ids already gone are skipped."""
    _deliver(console, 4)
    listing = console.get("/api/dead-letters").json()
    assert listing["total"] == 4 and listing["sinks"] == ["ok", "refused"]
    assert {e["sink"] for e in listing["entries"]} == {"refused"}
    assert console.get("/api/dead-letters", sink="ok").json()["total"] == 0
    assert console.get("/api/dead-letters", reason="SCHEMA").json()["total"] == 4
    assert console.get("/api/dead-letters", reason="timeout").json()["total"] == 0
    assert console.get("/api/dead-letters", min_age=3600).json()["total"] == 0
    assert console.get("/api/dead-letters", max_age=3600).json()["total"] == 4
    page = console.get("/api/dead-letters", limit=3).json()
    assert len(page["entries"]) == 3 and page["total"] == 4
    rest = console.get("/api/dead-letters", after_id=page["entries"][-1]["id"]).json()["entries"]
    assert len(rest) == 1
    ids = [e["id"] for e in listing["entries"]]
    entry = console.get(f"/api/dead-letters/{ids[0]}").json()
    assert entry["reason"] == "HTTP 422: schema says no" and entry["status_code"] == 422
    assert entry["record"]["trace_info"]["message_id"]
    console.refused.plan = lambda payloads, n: ExportResult.success()  # the backend is fixed
    replayed = console.post("/api/dead-letters/replay", {"ids": [*ids[:2], 99999]}).json()
    assert replayed == {"replayed": {"refused": 2}, "total": 2}
    assert console.pipeline.wait_idle(10)
    assert len(console.refused.delivered) == 2
    assert console.post("/api/dead-letters/purge", {"ids": ids[2:3]}).json() == {"purged": 1}
    assert console.get("/api/dead-letters").json()["total"] == 1
    assert console.get(f"/api/dead-letters/{ids[0]}").status_code == 404
    status = {s["name"]: s for s in console.get("/api/status").json()["sinks"]}
    assert status["refused"]["dead_letters"] == 1


def test_a_dead_letter_whose_record_holds_a_lone_surrogate_is_shown_not_a_500(console: Console) -> None:
    """A record carrying a lone surrogate escape ("\\ud800", valid JSON that ingest accepts) is shown with the
    escape as it came, where the entry view was a 500 (UTF-8 cannot encode it) and the record could not be read."""
    envelope = json.loads((SAMPLES / "05-message-chat.json").read_text())
    envelope["trace_info"]["inputs"] = {"query": "LONE"}
    [record] = parse_records(json.dumps(envelope).replace("LONE", "\\ud800 and é"))
    assert isinstance(record, Record)
    console.pipeline.accept([record])
    assert console.pipeline.wait_idle(10)
    [entry] = console.get("/api/dead-letters").json()["entries"]
    answer = console.get(f"/api/dead-letters/{entry['id']}")
    assert answer.status_code == 200
    assert answer.json()["record"]["trace_info"]["inputs"] == {"query": "\ud800 and é"}


def test_replay_refuses_dead_letters_of_a_sink_the_daemon_does_not_deliver_to(tmp_path: Path) -> None:
    """Dead letters of a sink taken out of the config are not moved back to a queue nobody sends from: replay
    answers 409 naming the sink and the command that delivers them, and moves nothing (not even the others
    asked for with them); the entries of delivered sinks alone replay as before."""
    retired = ScriptedSink("retired", fail_first(99, ItemFailure("HTTP 422: no", True, 422)))
    with Pipeline(tmp_path / "spool", [Route(retired, StandInMapping())], FAST) as earlier:
        earlier.accept(make_records(2))
        earlier.start()
        assert earlier.wait_idle(10)
    console = Console(tmp_path)
    try:
        _deliver(console, 1)
        entries = console.get("/api/dead-letters").json()["entries"]
        ids = {e["sink"]: e["id"] for e in entries}
        assert set(ids) == {"retired", "refused"}
        answer = console.post("/api/dead-letters/replay", {"ids": [ids["refused"], ids["retired"]]})
        assert answer.status_code == 409
        error = answer.json()["error"]
        assert "does not deliver to retired" in error and "nothing was replayed" in error
        assert f"traceexport dlq replay --spool {tmp_path / 'spool'} --sink retired --config FILE" in error
        assert console.get("/api/dead-letters").json()["total"] == 3
        assert console.post("/api/dead-letters/replay", {"ids": [ids["refused"]]}).json()["total"] == 1
    finally:
        console.close()


def test_the_playground_maps_a_record_with_the_provenance_of_each_field(console: Console) -> None:
    """A sample record maps to its payloads and OTLP/JSON request bodies; each body field names its file and line."""
    info = console.get("/api/playground").json()
    assert info["backends"] == ["opik", "langfuse", "otlp", "amplitude"] and info["max_body_bytes"] == 1024 * 1024
    sample = next(s for s in info["samples"] if s["record_type"] == "workflow")
    answer = console.post("/api/playground/map", {"backend": "otlp", "record": json.dumps(sample["record"])}).json()
    assert answer["ok"] and answer["record_type"] == "workflow" and answer["error"] is None
    span = answer["payloads"][0]
    assert span["kind"] == "span" and span["body"]["traceId"]
    trace_id = next(p for p in span["provenance"] if p["path"] == ["traceId"])
    assert trace_id["file"] == "otlp.yaml" and trace_id["builtin"] and trace_id["line"] > 0
    assert "trace_id" in trace_id["spec"]
    mapping_text = console.get("/api/playground/mapping", backend="otlp").json()["text"]
    assert "traceId" in mapping_text.splitlines()[trace_id["line"] - 1]
    assert answer["requests"][0]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == span["body"]["traceId"]


def test_an_override_shows_its_own_lines_and_its_problems(console: Console) -> None:
    """A field set by the override points at override.yaml's line; an invalid override lists problems with lines."""
    record = (SAMPLES / "05-message-chat.json").read_text()
    override = "backend: opik\nrecords:\n  message:\n    trace:\n      body:\n        name: renamed\n"
    answer = console.post("/api/playground/map", {"backend": "opik", "record": record, "override": override}).json()
    assert answer["ok"], answer
    trace = next(p for p in answer["payloads"] if p["entity"] == "trace")
    assert trace["body"]["name"] == "renamed"
    name = next(p for p in trace["provenance"] if p["path"] == ["name"])
    assert (name["file"], name["line"], name["builtin"]) == ("override.yaml", 6, False)
    broken = "records:\n  message:\n    trace:\n      body:\n        name: $nosuch.field | upper\n"
    bad = console.post("/api/playground/map", {"backend": "opik", "record": record, "override": broken}).json()
    assert not bad["ok"] and bad["problems"]
    assert bad["problems"][0]["file"] == "override.yaml" and bad["problems"][0]["line"] == 5
    assert "traceexport-playground" not in json.dumps(bad)  # the temporary folder is never shown


def test_a_record_that_cannot_be_read_gets_its_one_line_reason(console: Console) -> None:
    """Bad JSON, an unknown type or a record the mapping refuses: ok false and the reason a dead letter would carry."""
    for record in ("{not json", '{"trace_info_type": "Nope", "trace_info": {}}', "[]"):
        answer = console.post("/api/playground/map", {"backend": "otlp", "record": record}).json()
        assert answer["ok"] is False and answer["error"] and "\n" not in answer["error"]
        assert answer["payloads"] == [] and answer["requests"] == []


def test_a_console_beyond_loopback_needs_a_token() -> None:
    """serve refuses a console listening beyond loopback without a token, naming the setting to fix."""
    from traceexport.config import Overrides, resolve_config
    from traceexport.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        resolve_config(Overrides(console="0.0.0.0:4320"), env={})
    assert "TRACEEXPORT_CONSOLE_TOKEN" in str(caught.value)
    config = resolve_config(Overrides(console="0.0.0.0:4320", console_token="s3cret-token"), env={})
    assert config.console is not None and config.console.listen == "0.0.0.0:4320"
    assert resolve_config(Overrides(console="off"), env={}).console is None


def _snapshot(exported: int, delivery: list[float]) -> dict[str, Any]:
    from traceexport.pipeline.histograms import DELIVERY, Histogram

    histogram = Histogram()
    for seconds in delivery:
        histogram.add(seconds)
    return {"sinks": {"s": {"exported": exported, "queue_depth": 0}}, "histograms": {"s": {DELIVERY: histogram}}}


def test_history_rates_and_latency_are_over_their_window() -> None:
    """Rates and windowed p95 are differences from the sample a window ago (or the oldest, while younger)."""
    now = [1000.0]
    snapshots = iter([_snapshot(0, []), _snapshot(600, [5.0] * 10), _snapshot(1200, [5.0] * 10 + [0.2] * 90)])
    history = History(lambda: next(snapshots), interval=60, clock=lambda: now[0])
    history.sample()
    now[0] = 1240.0
    history.sample()
    now[0] = 1300.0
    current = history.sample().sinks["s"]
    assert history.rate("s", current, 60) == pytest.approx(600 / 60)  # since the sample a minute ago
    assert history.rate("s", current, 300) == pytest.approx(1200 / 300)  # since the oldest, five minutes ago
    recent = history.latency("s", current, 60)
    assert recent is not None and recent["delivery"]["count"] == 90 and recent["delivery"]["p95_seconds"] < 1
    assert history.latency("s", current, 300)["delivery"]["count"] == 100  # type: ignore[index]
    points = history.points()
    assert [p["sinks"]["s"]["rate"] for p in points] == [2.5, 10.0]
    assert 2.5 < points[0]["sinks"]["s"]["delivery_p95_seconds"] <= 5.0  # within the 2.5-5 s bucket


def test_provenance_names_a_double_dollar_key_as_the_body_has_it(tmp_path: Path) -> None:
    """A '$$set:' key gives the body key '$set', and the playground's provenance lists it under '$set' at its line."""
    from traceexport.console.provenance import field_sources
    from traceexport.mapping import load_mapping

    override = tmp_path / "o.yaml"
    override.write_text("extends: builtin\nbackend: amplitude\nrecords:\n  message:\n    event:\n      body:\n"
                        "        user_properties: {$$set: {mode: $conversation_mode}}\n", encoding="utf-8")
    sources = field_sources(load_mapping("amplitude", [override]).document, "message", "event")
    entry = next(s for s in sources if s["path"] == ["user_properties", "$set"])
    assert (entry["file"], entry["line"]) == (str(override), 7)
