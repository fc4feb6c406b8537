"""Per-sink rate limits in a running ``traceexport serve`` (delivery in its second process), measured by the
contract-checking OTLP fakes on 127.0.0.1: a sink held to 2 requests/s, and a 429 storm that slows one
sink while the other goes on. The only timing checked is the rate bound itself, which is the feature."""

from __future__ import annotations

import json
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import SAMPLE_FILES
from tests.fakes import RecordedRequest, Response
from tests.fakes.otlp_server import OtlpFake
from tests.support.daemon import Served
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

MESSAGE = json.loads(next(p for p in SAMPLE_FILES if p.name == "05-message-chat.json").read_text("utf-8"))
SPANS_PER_MESSAGE = 2  # the otlp mapping of the sample chat message
# Seconds by which a request may reach the fake later than the one before it, beyond the time between their
# sends (loopback jitter; the first request also opens the connection after its token was granted).
LATENCY_ALLOWANCE = 0.1


def messages(count: int, start: int = 0) -> list[dict[str, Any]]:
    """``count`` copies of the sample chat message, each with its own message id (own spans)."""
    out = []
    for i in range(start, start + count):
        envelope = json.loads(json.dumps(MESSAGE))
        envelope["trace_info"]["message_id"] = f"20000000-0000-4000-8000-{i:012d}"
        out.append(envelope)
    return out


class CountingOtlp(OtlpFake):
    """The OTLP fake noting when each request arrived; while ``storming`` it answers every request 429."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, int]] = []
        self.storming = threading.Event()

    def handle(self, request: RecordedRequest) -> Response:
        response = (Response(429, {"code": 8, "message": "slow down"}) if self.storming.is_set()
                    else super().handle(request))
        with self._lock:
            self.arrivals.append((time.monotonic(), response.status))
        return response

    def times(self) -> list[float]:
        with self._lock:
            return [t for t, _ in self.arrivals]


def config(tmp_path: Path, sinks: dict[str, tuple[OtlpFake, str]]) -> str:
    """A serve config with a delivery process, quick retries, and one OTLP sink (one span per request) per fake."""
    text = (f"spool:\n  dir: {tmp_path / 'spool'}\n  delivery_process: true\n"
            "retry:\n  initial_backoff: 50ms\n  max_backoff: 100ms\n"
            "sources:\n  http:\n    token: ${TEST_TOKEN}\n"
            "sinks:\n")
    for name, (fake, rate_limit) in sinks.items():
        text += (f"  {name}:\n    type: otlp\n    traces_endpoint: {fake.traces_url}\n"
                 f"    max_spans: 1\n    linger_seconds: 0\n{rate_limit}")
    return text


def test_a_sink_held_to_2_requests_per_second_is_measured_at_no_more_by_its_fake(tmp_path: Path) -> None:
    """With requests_per_second: 2 (burst 1), every run of n consecutive requests the fake receives spans at
    least (n - 1) / 2 s less the loopback latency allowance: n <= 1 + 2 * (t_last - t_first + 0.1)."""
    with CountingOtlp() as paced, CountingOtlp() as free:
        sinks = {"paced": (paced, "    rate_limit:\n      requests_per_second: 2\n"), "free": (free, "")}
        with Served(tmp_path, config(tmp_path, sinks)) as daemon:
            assert daemon.post(messages(6)).status_code == 202
            expected = 6 * SPANS_PER_MESSAGE
            wait_until(lambda: len(paced.spans) >= expected, timeout=25, what="the paced sink's 12 spans")
            gauges = daemon.metric("traceexport_sink_rate_limit", "paced"), daemon.metric(
                "traceexport_sink_rate_limit", "free")
        times = paced.times()
        assert len(times) == expected and len(free.spans) == expected
        for first in range(len(times)):
            for last in range(first + 1, len(times)):
                count, span = last - first + 1, times[last] - times[first]
                assert count <= 1 + 2 * (span + LATENCY_ALLOWANCE), (
                    f"{count} requests within {span:.3f}s: over 2 requests/s (burst 1)")
        assert gauges == (2.0, float("inf"))


def test_a_429_storm_slows_its_sink_and_the_other_sink_keeps_delivering(tmp_path: Path) -> None:
    """While one backend answers every request 429, its sink's gauge drops below its 10 requests/s and its
    requests thin out to under 2/s (consecutive gaps of at least 0.5 s), while the other sink in the same
    daemon delivers all its spans; once the storm ends the slowed sink delivers everything and recovers."""
    with CountingOtlp() as storm, CountingOtlp() as calm:
        storm.storming.set()
        sinks = {"storm": (storm, "    rate_limit:\n      requests_per_second: 10\n"), "calm": (calm, "")}
        with Served(tmp_path, config(tmp_path, sinks)) as daemon:
            assert daemon.post(messages(4)).status_code == 202
            expected = 4 * SPANS_PER_MESSAGE
            wait_until(lambda: len(calm.spans) >= expected, timeout=20, what="the calm sink's spans")
            wait_until(lambda: len(storm.arrivals) >= 8, timeout=20, what="eight throttled requests")
            during = daemon.metric("traceexport_sink_rate_limit", "storm")
            calm_gauge = daemon.metric("traceexport_sink_rate_limit", "calm")
            throttled = storm.times()  # every one of them answered 429: the storm is still on
            assert storm.spans == []
            storm.storming.clear()
            wait_until(lambda: len(storm.spans) >= expected, timeout=30, what="the storm sink's spans after the storm")
            wait_until(lambda: daemon.metric("traceexport_sink_rate_limit", "storm") == 10.0, timeout=30,
                       what="the storm sink's rate back at 10 requests/s")
        assert len(calm.spans) == expected and calm_gauge == float("inf")
        assert 0 < during < 10
        gaps = [later - earlier for earlier, later in pairwise(throttled)]
        assert min(gaps[-3:]) >= 0.5, f"gaps between throttled requests: {gaps}"
