"""Per-sink rate limits: the token buckets and AIMD on a fake clock, the sinks' requests, config and the gauge."""

from __future__ import annotations

import math
import multiprocessing
import threading
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from traceexport.config import build_routes
from traceexport.config.check import validate_config_file
from traceexport.config.loader import load_config
from traceexport.pipeline import Pipeline, PipelineSettings, Route
from traceexport.pipeline.metrics import label_value
from traceexport.pipeline.rate_board import RateBoard, rate_limit_lines
from traceexport.sinks import create_sink
from traceexport.sinks.base import Payload
from traceexport.sinks.otlp import OtlpSink
from traceexport.sinks.otlp.config import otlp_settings
from traceexport.sinks.rate_limited import RateLimitedSink, limiter_of
from traceexport.sinks.ratelimit import (
    DECREASE,
    MIN_RATE,
    OBSERVE_WINDOW,
    RAMP,
    AimdState,
    RateLimiter,
    SendCancelled,
    resting,
)


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def greedy_sends(limiter: RateLimiter, clock: Clock, count: int, items: int = 0) -> list[float]:
    """Send ``count`` requests as fast as ``limiter`` allows; the time each one went."""
    sent = []
    for _ in range(count):
        clock.advance(limiter.reserve(items))
        sent.append(clock.now)
    return sent


def worst_window(times: list[float], weights: list[int] | None = None) -> Callable[[float, float], bool]:
    """A check that every stretch between two sends carries at most ``allowance + rate * length``."""
    weights = weights or [1] * len(times)

    def holds(rate: float, allowance: float) -> bool:
        for i in range(len(times)):
            for j in range(i, len(times)):
                if sum(weights[i:j + 1]) > allowance + rate * (times[j] - times[i]) + 1e-9:
                    return False
        return True
    return holds


# -- token buckets -------------------------------------------------------------------------------

def test_requests_keep_to_the_rate_with_a_burst_of_one() -> None:
    """At 2 requests/s and burst 1 a greedy sender's requests are 0.5 s apart: no window holds more than 1 + 2*T."""
    clock = Clock()
    limiter = RateLimiter(requests_per_second=2, clock=clock)
    sent = greedy_sends(limiter, clock, 20)
    assert worst_window(sent)(2.0, 1.0)
    assert not worst_window(sent)(2.0, 0.99)  # the bound is tight: the limiter does not waste its budget
    assert [round(b - a, 9) for a, b in pairwise(sent)] == [0.5] * 19


def test_a_burst_goes_at_once_after_a_quiet_spell() -> None:
    """With burst 3, three requests go together after idling, the fourth waits for its token."""
    clock = Clock()
    limiter = RateLimiter(requests_per_second=2, burst=3, clock=clock)
    clock.advance(10)
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.reserve() == pytest.approx(0.5)
    sent = greedy_sends(limiter, clock, 30)
    assert worst_window(sent)(2.0, 3.0)


def test_items_keep_to_their_rate_and_a_large_request_leaves_a_debt() -> None:
    """Items per second bound the items of every window; a request over one second's items goes from a full
    bucket and the next request waits out the excess."""
    clock = Clock()
    limiter = RateLimiter(items_per_second=100, clock=clock)
    sent = greedy_sends(limiter, clock, 20, items=30)
    assert worst_window(sent, [30] * 20)(100.0, 100.0)
    clock.advance(60)  # a full bucket holds one second of items (100)
    assert limiter.reserve(250) == 0.0
    assert limiter.reserve(30) == pytest.approx(1.8)  # the 150 owed, then its own 30


def test_requests_and_items_both_bind() -> None:
    """With both limits, a request goes when it has a request token and its items."""
    clock = Clock()
    limiter = RateLimiter(requests_per_second=10, items_per_second=50, clock=clock)
    sent = greedy_sends(limiter, clock, 10, items=25)  # items bind: the full bucket's 2 requests, then 2/s
    assert worst_window(sent, [25] * 10)(50.0, 50.0)
    assert worst_window(sent)(10.0, 1.0)
    assert sent[1] - sent[0] == pytest.approx(0.1) and sent[-1] - sent[0] == pytest.approx(4.0)


def test_no_limit_never_waits() -> None:
    """A limiter without rates (and no throttle yet) lets every request go at once."""
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    assert all(limiter.reserve(10_000) == 0.0 for _ in range(1000))
    assert limiter.rate() == math.inf


# -- AIMD -----------------------------------------------------------------------------------------

def test_throttling_halves_the_rate_down_to_the_floor() -> None:
    """Each throttle signal halves the configured rate; it never goes below MIN_RATE."""
    clock = Clock()
    limiter = RateLimiter(requests_per_second=10, clock=clock)
    limiter.throttled()
    assert limiter.rate() == pytest.approx(10 * DECREASE)
    limiter.throttled()
    assert limiter.rate() == pytest.approx(10 * DECREASE**2)
    for _ in range(20):
        limiter.throttled()
    assert limiter.rate() == pytest.approx(MIN_RATE)


def test_the_rate_climbs_back_additively_to_the_configured_limit() -> None:
    """After the throttles stop the rate grows by RAMP of the limit per second, and stops at the limit."""
    clock = Clock()
    limiter = RateLimiter(requests_per_second=10, clock=clock)
    limiter.throttled()
    clock.advance(1)
    assert limiter.rate() == pytest.approx(5 + RAMP * 10)
    clock.advance(2)
    assert limiter.rate() == pytest.approx(5 + 3 * RAMP * 10)
    clock.advance(100)
    assert limiter.rate() == 10


def test_a_throttle_empties_the_request_bucket() -> None:
    """After a throttle the next request waits for a token at the lowered rate, burst or not."""
    clock = Clock()
    limiter = RateLimiter(requests_per_second=4, burst=5, clock=clock)
    clock.advance(10)
    limiter.throttled()
    slope = RAMP * 4  # the lowered rate (2/s) climbs meanwhile: 2*t + slope*t^2/2 = 1 token
    assert limiter.reserve() == pytest.approx((math.sqrt(2**2 + 2 * slope) - 2) / slope)


def test_the_bound_holds_while_the_rate_ramps() -> None:
    """While the rate climbs back, no window carries more than burst plus the configured rate times its length."""
    clock = Clock()
    limiter = RateLimiter(requests_per_second=8, clock=clock)
    for _ in range(3):
        limiter.throttled()
    sent = greedy_sends(limiter, clock, 60)
    assert worst_window(sent)(8.0, 1.0)
    gaps = [b - a for a, b in pairwise(sent)]
    assert gaps[0] > gaps[-1]  # slow at first, then faster


def test_an_unlimited_sink_starts_from_half_its_observed_rate_and_is_unlimited_again_once_recovered() -> None:
    """Without requests_per_second, a throttle caps the rate at half of what was sent lately, then lifts the cap."""
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    for _ in range(40):  # 40 requests over the last 4 s: 4 requests/s over the observation window
        limiter.reserve()
        clock.advance(0.1)
    limiter.throttled()
    observed = 40 / OBSERVE_WINDOW
    assert limiter.rate() == pytest.approx(observed * DECREASE)
    assert limiter.state().target == pytest.approx(observed)
    clock.advance((observed - observed * DECREASE) / (RAMP * observed) + 0.01)
    assert limiter.rate() == math.inf


def test_a_limiter_that_is_not_adaptive_ignores_throttling() -> None:
    """adaptive: false keeps the configured rate whatever the backend says."""
    clock = Clock()
    limiter = RateLimiter(requests_per_second=3, adaptive=False, clock=clock)
    limiter.throttled()
    assert limiter.rate() == 3


def test_a_watcher_sees_every_change() -> None:
    """watch() reports the state at once and after each throttle."""
    clock = Clock()
    limiter = RateLimiter(requests_per_second=6, clock=clock)
    seen: list[AimdState] = []
    limiter.watch(seen.append)
    limiter.throttled()
    assert [s.rate(clock.now) for s in seen] == [6, 3]


def test_cancel_ends_a_wait_at_once() -> None:
    """A request waiting for its token when the sink stops raises SendCancelled instead of sending."""
    limiter = RateLimiter(requests_per_second=0.01)
    limiter.acquire()  # the one token a full bucket holds
    outcome: list[BaseException] = []
    started = threading.Event()

    def send() -> None:
        started.set()
        try:
            limiter.acquire()  # 100 s to wait
        except SendCancelled as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    started.wait(5)
    limiter.cancel()
    thread.join(10)
    assert not thread.is_alive() and len(outcome) == 1
    with pytest.raises(SendCancelled):
        limiter.acquire()


# -- every request of every sink ---------------------------------------------------------------

class Spy:
    """Records the items of every request a limiter books (and books nothing: no waiting)."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.items: list[int] = []
        limiter.reserve = self  # type: ignore[method-assign]

    def __call__(self, items: int = 0) -> float:
        self.items.append(items)
        return 0.0


def limited(sink_type: str, options: dict[str, Any], handler: Callable[[httpx.Request], httpx.Response],
            **limits: Any) -> tuple[RateLimitedSink, Spy]:
    """A sink of ``sink_type`` answering through ``handler``, wrapped with a spied rate limiter."""
    module = __import__(f"traceexport.sinks.{sink_type}", fromlist=["from_config"])
    transport = httpx.MockTransport(handler)
    if sink_type == "otlp":
        sink: Any = OtlpSink(sink_type, otlp_settings(sink_type, options, {}), http_transport=transport)
    else:
        sink = module.from_config(sink_type, options, {}, transport=transport)
    wrapped = RateLimitedSink(sink, RateLimiter(**limits))
    return wrapped, Spy(wrapped.rate_limiter)


def otlp_span(i: int) -> Payload:
    """A small valid OTLP span payload."""
    body = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": f"{i + 1:016x}", "name": f"s{i}",
            "kind": "INTERNAL", "startTimeUnixNano": 1, "endTimeUnixNano": 2, "attributes": {}}
    return Payload("span", body, f"k{i}", i)


def test_opik_books_each_request_with_its_items() -> None:
    """Opik's traces then spans, split by max_items, each book one request with their item count."""
    sink, spy = limited("opik", {"url": "http://127.0.0.1:9/api", "max_items": 2},
                        lambda request: httpx.Response(204))
    payloads = ([Payload("trace", {"id": f"t{i}", "name": "t"}, f"t{i}") for i in range(3)]
                + [Payload("span", {"id": f"s{i}", "trace_id": "t0", "name": "s"}, f"s{i}") for i in range(5)])
    assert sink.export(payloads).ok
    assert spy.items == [2, 1, 2, 2, 1]


def test_amplitude_books_each_request_with_its_events() -> None:
    """Amplitude's requests, split by max_events, each book their events."""
    sink, spy = limited("amplitude", {"api_key": "k" * 32, "max_events": 3,
                                      "server_url": "http://127.0.0.1:9/2/httpapi"},
                        lambda request: httpx.Response(200, json={"code": 200}))
    events = [Payload("event", {"event_type": "e", "user_id": f"user-{i}"}, f"e{i}") for i in range(7)]
    assert sink.export(events).ok
    assert spy.items == [3, 3, 1]


def test_otlp_books_split_and_bisected_requests() -> None:
    """OTLP requests split by max_spans each book their spans, and so do the halves of a refused request."""
    refused = {"first": True}

    def answer(request: httpx.Request) -> httpx.Response:
        if refused.pop("first", False):
            return httpx.Response(400, text="bad span")
        return httpx.Response(200)

    sink, spy = limited("otlp", {"traces_endpoint": "http://127.0.0.1:9/v1/traces", "max_spans": 4}, answer)
    assert sink.export([otlp_span(i) for i in range(6)]).ok
    assert spy.items == [4, 2, 2, 2]


def test_a_429_lowers_the_sinks_rate_and_a_503_only_with_retry_after() -> None:
    """Throttling answers reach the limiter through the shared HTTP client; other failures do not."""
    answers = iter([httpx.Response(503), httpx.Response(429), httpx.Response(503, headers={"Retry-After": "1"})])
    sink, _ = limited("otlp", {"traces_endpoint": "http://127.0.0.1:9/v1/traces"},
                      lambda request: next(answers), requests_per_second=8)
    rates = []
    for i in range(3):
        sink.export([otlp_span(i)])
        rates.append(sink.rate_limiter.rate())
    assert rates[0] == 8 and rates[1] < 8 and rates[2] < rates[1]


def test_a_request_cancelled_while_waiting_is_a_retryable_unsent_failure() -> None:
    """When the limiter is cancelled, the sink reports its items retryable, naming why, and sends nothing."""
    sent: list[httpx.Request] = []
    sink, _ = limited("otlp", {"traces_endpoint": "http://127.0.0.1:9/v1/traces"},
                      lambda request: sent.append(request) or httpx.Response(200))
    sink.rate_limiter.cancel()
    result = sink.export([otlp_span(0)])
    failure = result.failures[0]
    assert not failure.permanent and failure.unsent and "not sent" in failure.reason and sent == []


def test_requests_outside_a_limited_export_are_not_paced() -> None:
    """The same sink unwrapped (``traceexport map``, tests) sends without any limiter."""
    sink = OtlpSink("otlp", otlp_settings("otlp", {"traces_endpoint": "http://127.0.0.1:9/v1/traces"}, {}),
                    http_transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    assert sink.export([otlp_span(0)]).ok


# -- config -------------------------------------------------------------------------------------

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "traceexport.yaml"
    path.write_text(text, encoding="utf-8")
    return path


SINK = "sinks:\n  paced:\n    type: otlp\n    endpoint: http://127.0.0.1:4318\n"


def test_rate_limit_settings_build_the_sinks_limiter(tmp_path: Path) -> None:
    """requests_per_second, items_per_second, burst and adaptive reach the route's limiter."""
    config = load_config(write(tmp_path, SINK + "    rate_limit:\n      requests_per_second: 2\n"
                                                "      items_per_second: 500\n      burst: 3\n"
                                                "      adaptive: false\n"), env={})
    routes = build_routes(config, env={})
    limiter = limiter_of(routes[0].sink)
    assert limiter is not None
    assert (limiter.requests_per_second, limiter.items_per_second, limiter.adaptive) == (2, 500, False)
    assert limiter.reserve() == 0.0 and limiter.reserve() == 0.0 and limiter.reserve() == 0.0
    assert limiter.reserve() > 0
    for route in routes:
        route.sink.shutdown(1.0)


def test_a_sink_without_rate_limit_is_adaptive_and_unlimited(tmp_path: Path) -> None:
    """No rate_limit section: no limit until the backend throttles."""
    routes = build_routes(load_config(write(tmp_path, SINK), env={}), env={})
    limiter = limiter_of(routes[0].sink)
    assert limiter is not None and limiter.adaptive and limiter.rate() == math.inf
    routes[0].sink.shutdown(1.0)


@pytest.mark.parametrize(("section", "where", "says"), [
    ("      requests_per_second: 0\n", "sinks.paced.rate_limit.requests_per_second", "greater than 0"),
    ("      items_per_second: -5\n", "sinks.paced.rate_limit.items_per_second", "greater than 0"),
    ("      burst: 0.5\n", "sinks.paced.rate_limit.burst", "greater than or equal to 1"),
    ("      requests_per_second: fast\n", "sinks.paced.rate_limit.requests_per_second", "number"),
    ("      request_per_second: 2\n", "sinks.paced.rate_limit.request_per_second", "unknown key"),
])
def test_bad_rate_limits_are_one_line_problems_with_their_key_path(tmp_path: Path, section: str, where: str,
                                                                     says: str) -> None:
    """validate --config names the key path, the reason and the line of a bad rate_limit value."""
    problems = validate_config_file(write(tmp_path, SINK + "    rate_limit:\n" + section), env={})
    assert [p.where for p in problems] == [where]
    assert says in problems[0].message and "(line 6)" in problems[0].message and "\n" not in problems[0].message


def test_a_file_sink_refuses_a_rate_limit(tmp_path: Path) -> None:
    """A file sink makes no requests: a rate_limit there is a problem, not silently ignored."""
    text = f"sinks:\n  out:\n    type: file\n    path: {tmp_path / 'out'}\n    rate_limit:\n      burst: 2\n"
    problems = validate_config_file(write(tmp_path, text), env={})
    assert [p.where for p in problems] == ["sinks.out.rate_limit"]
    assert "file sink sends no requests" in problems[0].message


# -- the gauge ----------------------------------------------------------------------------------

def test_the_gauge_shows_each_sinks_rate_and_inf_when_unlimited(tmp_path: Path) -> None:
    """/metrics carries traceexport_sink_rate_limit per sink: the effective rate, +Inf without a limit."""
    from traceexport.mapping import load_mapping

    paced = create_sink("otlp", "paced", {"traces_endpoint": "http://127.0.0.1:9/v1/traces"}, env={})
    free = create_sink("otlp", "free", {"traces_endpoint": "http://127.0.0.1:9/v1/traces"}, env={})
    plain = create_sink("file", "plain", {"path": str(tmp_path / "out")}, env={})
    limiter = RateLimiter(requests_per_second=4)
    routes = [Route(RateLimitedSink(paced, limiter), load_mapping("otlp")),
              Route(RateLimitedSink(free, RateLimiter()), load_mapping("otlp")), Route(plain, load_mapping("otlp"))]
    with Pipeline(tmp_path / "spool", routes, PipelineSettings()) as pipe:
        assert pipe.rate_limits() == {"paced": 4, "free": math.inf, "plain": math.inf}
        limiter.throttled()
        assert pipe.rate_limits()["paced"] < 4
        text = pipe.prometheus_text()
    assert 'traceexport_sink_rate_limit{sink="free"} +Inf' in text
    assert "# TYPE traceexport_sink_rate_limit gauge" in text


def test_gauge_lines_format_rates_for_prometheus() -> None:
    """Finite rates as numbers, unlimited as +Inf, label values escaped."""
    lines = rate_limit_lines({'a"b': 2.5, "c": math.inf}, label_value)
    assert lines[2:] == ['traceexport_sink_rate_limit{sink="a\\"b"} 2.5', 'traceexport_sink_rate_limit{sink="c"} +Inf']


def publish_throttled(board: RateBoard, sink: str) -> None:
    """In a child process: a limiter at 10 requests/s, throttled once, published on ``board``."""
    limiter = RateLimiter(requests_per_second=10)
    limiter.watch(lambda state: board.publish(sink, state))
    limiter.throttled()


def test_the_board_carries_a_childs_limiter_state_to_the_parent() -> None:
    """What a spawned process publishes, the parent reads back: the lowered rate, ramping from the same clock."""
    context = multiprocessing.get_context("spawn")
    board = RateBoard(context, ["paced", "other"])
    assert board.read("paced") is None and board.read("unknown") is None
    child = context.Process(target=publish_throttled, args=(board, "paced"))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    state = board.read("paced")
    assert state is not None and state.anchor == 5 and state.target == 10 and state.top == 10
    assert board.read("other") is None


def test_a_resting_state_is_the_configured_rate_or_unlimited() -> None:
    """The state of a limiter nothing throttled: its configured rate at any time, or inf."""
    assert resting(3).rate(0) == 3 and resting(None).rate(1e9) == math.inf


# -- stopping and gRPC -----------------------------------------------------------------------------

def test_stopping_the_pipeline_ends_a_wait_for_the_rate_limit(tmp_path: Path, sample_records: list[Any]) -> None:
    """A worker waiting 20 s for its next request token stops at once; the unsent spans stay pending."""
    from traceexport.mapping import load_mapping

    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200))
    settings = otlp_settings("slow", {"traces_endpoint": "http://127.0.0.1:9/v1/traces", "max_spans": 1,
                                      "linger_seconds": 0}, {})
    sink = RateLimitedSink(OtlpSink("slow", settings, http_transport=transport),
                           RateLimiter(requests_per_second=0.05))
    pipe = Pipeline(tmp_path / "spool", [Route(sink, load_mapping("otlp"))], PipelineSettings(poll_interval=0.05))
    pipe.start()
    pipe.accept(sample_records[:3])
    assert pipe.workers[0].queue.spool.has_pending("slow")
    deadline = threading.Event()
    while not sent and not deadline.wait(0.02):
        pass
    thread = pipe.workers[0]._thread
    assert thread is not None
    pipe.stop(timeout=5.0)
    assert not thread.is_alive()  # without the cancel it would still be waiting for its token
    assert len(sent) == 1 and pipe.pending()["slow"] > 0
    pipe.close()


def test_grpc_requests_are_paced_and_resource_exhausted_lowers_the_rate() -> None:
    """OTLP/gRPC books each request's spans and takes RESOURCE_EXHAUSTED as a throttle."""
    pytest.importorskip("grpc", reason="grpc extra not installed")
    from tests.fakes.otlp_server import OtlpGrpcFake

    with OtlpGrpcFake() as fake:
        settings = otlp_settings("g", {"protocol": "grpc", "endpoint": fake.url, "timeout": 5, "max_spans": 2}, {})
        sink = RateLimitedSink(OtlpSink("g", settings), RateLimiter(requests_per_second=50))
        spy = Spy(sink.rate_limiter)
        assert sink.export([otlp_span(i) for i in range(3)]).ok
        assert spy.items == [2, 1]
        fake.fail_next(1, "RESOURCE_EXHAUSTED")
        assert not sink.export([otlp_span(5)]).ok
        assert sink.rate_limiter.rate() < 50
        sink.shutdown(1.0)
