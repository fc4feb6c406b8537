"""The daemon's periodic audit: runs on its interval, survives a failing run, stops at once, exposes gauges."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from tests.unit.pipeline.pipeline_helpers import wait_for

from traceexport.audit import AuditReport, Expected, periodic, reconcile
from traceexport.audit.metrics import prometheus_text
from traceexport.config import Config
from traceexport.pipeline.spool import Spool

DAY = "2026-12-05"


class FakeLedger:
    """Acknowledges keys starting with "ok" with hash "h"; dead-letters nothing."""

    def acknowledged(self, sink_name: str, keys: object, /) -> dict[str, tuple[str, int]]:
        return {k: ("h", 0) for k in keys if k.startswith("ok")}  # type: ignore[attr-defined]

    def dead_letters(self, sink_name: str, keys: object, /) -> dict[str, str]:
        return {}


def _report() -> AuditReport:
    expected = [Expected("ok-1", "app", "message", DAY, {"opik": "h", "otlp": "h"}),
                Expected("lost-1", "app", "message", DAY, {"opik": "h"}),
                Expected("ok-2", None, "workflow", DAY, {"opik": "other"})]
    return reconcile(expected, FakeLedger())


class FakeRunner:
    """Records each (since, until) it is called with; raises for the calls listed in ``fail``."""

    def __init__(self, fail: frozenset[int] = frozenset()) -> None:
        self.calls: list[tuple[datetime, datetime]] = []
        self.fail = fail

    def __call__(self, since: datetime, until: datetime) -> AuditReport:
        self.calls.append((since, until))
        if len(self.calls) - 1 in self.fail:
            raise RuntimeError("database gone: postgresql://dify:s3cret-pw@db/dify")
        return _report()


def test_runs_at_start_and_then_every_interval_over_the_window() -> None:
    """The runner is called at once and again each interval, with until - since equal to the window."""
    runner = FakeRunner()
    scheduler = periodic.AuditScheduler(runner, interval=0.05, window=3600)
    scheduler.start()
    try:
        assert wait_for(lambda: len(runner.calls) >= 3)
    finally:
        assert scheduler.stop()
    since, until = runner.calls[0]
    assert (until - since).total_seconds() == 3600
    assert until.tzinfo is not None
    assert scheduler.last is not None and scheduler.last[0].missing_count == 1


def test_a_failing_run_is_one_log_line_and_the_next_run_still_happens(caplog: pytest.LogCaptureFixture) -> None:
    """A runner that raises is logged once per failure, keeps the last good report, and is called again."""
    runner = FakeRunner(fail=frozenset({1, 2}))
    scheduler = periodic.AuditScheduler(runner, interval=0.02, window=60)
    with caplog.at_level(logging.INFO, logger="traceexport.audit"):
        scheduler.start()
        try:
            assert wait_for(lambda: len(runner.calls) >= 4)
        finally:
            assert scheduler.stop()
    failed = [r for r in caplog.records if r.getMessage() == "audit.failed"]
    assert len(failed) >= 2
    assert all("database gone" in r.te_fields["error"] for r in failed)  # type: ignore[attr-defined]
    assert scheduler.last is not None


def test_run_once_never_raises() -> None:
    """One run whose runner raises returns None and leaves no report."""
    scheduler = periodic.AuditScheduler(FakeRunner(fail=frozenset({0})), interval=60, window=60)
    assert scheduler.run_once() is None
    assert scheduler.last is None
    assert scheduler.prometheus_text() == ""


def test_stop_is_prompt_between_runs_and_does_not_wait_for_a_hung_run() -> None:
    """Stopping wakes the thread at once between runs, and returns within its timeout while a run hangs."""
    runner = FakeRunner()
    scheduler = periodic.AuditScheduler(runner, interval=3600, window=60)
    scheduler.start()
    assert wait_for(lambda: len(runner.calls) == 1)
    started = time.monotonic()
    assert scheduler.stop(timeout=5)
    assert time.monotonic() - started < 1

    release = threading.Event()

    def hung(since: datetime, until: datetime) -> AuditReport:
        release.wait(30)
        return _report()

    stuck = periodic.AuditScheduler(hung, interval=3600, window=60)
    stuck.start()
    started = time.monotonic()
    assert not stuck.stop(timeout=0.2)
    assert time.monotonic() - started < 1
    release.set()


_SAMPLE = re.compile(r'^([a-z_][a-z0-9_]*)(\{([a-z_]+="(?:[^"\\]|\\.)*")(,[a-z_]+="(?:[^"\\]|\\.)*")*\})? '
                     r'(?:[0-9.e+-]+|[+-]Inf|NaN)$')


def _check_exposition(text: str) -> dict[str, list[str]]:
    """Every sample comes after its metric's (or its histogram's) HELP and TYPE lines; returns the samples by
    metric."""
    assert text.endswith("\n")
    described: dict[str, set[str]] = {}
    samples: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            kind, name = line.split()[1:3]
            described.setdefault(name, set()).add(kind)
            continue
        match = _SAMPLE.match(line)
        assert match, line
        family = re.sub(r"_(bucket|sum|count)$", "", match.group(1))  # a histogram's series
        assert {"HELP", "TYPE"} in (described.get(match.group(1)), described.get(family)), line
        samples.setdefault(match.group(1), []).append(line)
    return samples


def test_metrics_text_has_two_gauges_per_sink_and_type_and_the_last_run_time() -> None:
    """The gauges are valid exposition text: missing and mismatched per sink and type, 0 included, and the time."""
    text = prometheus_text(_report(), 1_796_500_000.5)
    samples = _check_exposition(text)
    assert samples["traceexport_audit_missing"] == [
        'traceexport_audit_missing{sink="opik",type="message"} 1',
        'traceexport_audit_missing{sink="opik",type="workflow"} 0',
        'traceexport_audit_missing{sink="otlp",type="message"} 0']
    assert 'traceexport_audit_mismatched{sink="opik",type="workflow"} 1' in samples["traceexport_audit_mismatched"]
    assert samples["traceexport_audit_last_run_timestamp_seconds"] == [
        "traceexport_audit_last_run_timestamp_seconds 1796500000.500"]
    assert "# TYPE traceexport_audit_missing gauge" in text


def test_metrics_text_parses_with_the_prometheus_client_parser() -> None:
    """The reference parser reads the gauges with their labels and values (and escapes a quote in a label)."""
    parser = pytest.importorskip("prometheus_client.parser")
    report = reconcile([Expected("lost", None, "tool", DAY, {'we"ird': "h"})], FakeLedger())
    families = {f.name: f for f in parser.text_string_to_metric_families(prometheus_text(report, 5.0))}
    assert families["traceexport_audit_missing"].type == "gauge"
    (sample,) = families["traceexport_audit_missing"].samples
    assert sample.labels == {"sink": 'we"ird', "type": "tool"} and sample.value == 1
    assert families["traceexport_audit_last_run_timestamp_seconds"].samples[0].value == 5.0


def test_make_runner_is_off_without_a_dify_database_and_says_why_else_reads_it(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """With no Dify database, or no ledger, there is no runner and one log line says why; with both, a runner (the
    real one is exercised against real Dify in tests/realdify/test_audit.py), and the password is logged nowhere."""
    spool = Spool(tmp_path / "spool")
    with caplog.at_level(logging.INFO, logger="traceexport.audit"):
        assert periodic.make_runner(Config(), spool) is None
        configured = Config.model_validate({"enrich": {"database_url": "postgresql://u:pw-secret@db/dify"}})
        assert callable(periodic.make_runner(configured, spool))
        no_ledger = Config.model_validate({"enrich": {"database_url": "postgresql://u:pw-secret@db/dify"},
                                           "ledger": {"retention": 0}})
        assert periodic.make_runner(no_ledger, spool) is None
    lines = [r for r in caplog.records if r.getMessage() == "audit.off"]
    assert len(lines) == 2
    assert "ledger.retention is 0" in lines[1].te_fields["reason"]  # type: ignore[attr-defined]
    assert "no Dify database" in lines[0].te_fields["reason"]  # type: ignore[attr-defined]
    assert "pw-secret" not in caplog.text
    spool.close()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, FakeRunner]]:
    """A Daemon in this process with audit.interval set and make_runner replaced by a fake runner."""
    from traceexport.daemon import Daemon

    runner = FakeRunner()
    monkeypatch.setattr(periodic, "make_runner", lambda config, spool: runner)
    config = Config.model_validate({
        "spool": {"dir": str(tmp_path / "spool"), "delivery_process": False},
        "sinks": {"file": {"type": "file", "path": str(tmp_path / "out")}},
        "sources": {"http": {"listen": "127.0.0.1:0", "shutdown_grace": "1s"}},
        "audit": {"interval": "1h", "window": "2h"}})
    daemon = Daemon(config, env={})
    daemon.start()
    yield daemon, runner
    daemon.stop()


def test_the_daemon_runs_the_audit_and_serves_its_gauges(served: tuple[object, FakeRunner]) -> None:
    """With audit.interval set, serve runs the runner at start and /metrics carries the audit gauges after it."""
    from traceexport.daemon import Daemon

    daemon, runner = served
    assert isinstance(daemon, Daemon) and daemon.audit is not None and daemon.listen_url is not None
    assert wait_for(lambda: daemon.audit is not None and daemon.audit.last is not None)
    since, until = runner.calls[0]
    assert (until - since).total_seconds() == 7200
    metrics = httpx.get(daemon.listen_url.replace("/v1/dify/traces", "/metrics"), timeout=10).text
    samples = _check_exposition(metrics)
    assert 'traceexport_audit_missing{sink="opik",type="message"} 1' in samples["traceexport_audit_missing"]
    assert "traceexport_records_accepted_total" in samples
    scheduler = daemon.audit
    started = time.monotonic()
    daemon.stop()
    assert time.monotonic() - started < 5
    assert daemon.audit is None and scheduler._thread is None


def test_without_audit_interval_there_is_no_audit_and_no_gauge(tmp_path: Path) -> None:
    """With audit.interval unset the daemon starts no audit and /metrics has no audit series."""
    from traceexport.daemon import Daemon

    config = Config.model_validate({
        "spool": {"dir": str(tmp_path / "spool"), "delivery_process": False},
        "sinks": {"file": {"type": "file", "path": str(tmp_path / "out")}},
        "sources": {"http": {"listen": "127.0.0.1:0", "shutdown_grace": "1s"}}})
    daemon = Daemon(config, env={})
    daemon.start()
    try:
        assert daemon.audit is None
        assert "traceexport_audit" not in daemon.metrics_text()
    finally:
        daemon.stop()
