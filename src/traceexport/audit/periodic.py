"""The daemon's periodic audit: a thread calling a runner every ``audit.interval``, and its gauges.

A runner is any ``run(since, until) -> AuditReport``; :func:`make_runner` is where the daemon gets
it. A run that raises is one log line and changes nothing else: the next run happens in its time and
``/metrics`` keeps the last good report. Stopping wakes the thread at once; a run still going then
(a slow database) is left to finish in its daemon thread, never waited for.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from traceexport.audit import metrics
from traceexport.audit.reconcile import AuditReport
from traceexport.difydb.rebuild import FILES_URL_DEFAULT
from traceexport.logs import log_event

if TYPE_CHECKING:
    from traceexport.config.models import Config
    from traceexport.pipeline.spool import Spool

Runner = Callable[[datetime, datetime], AuditReport]
log = logging.getLogger("traceexport.audit")


def make_runner(config: Config, spool: Spool) -> Runner | None:
    """The audit the daemon runs every ``audit.interval``, or None (logged, with why) when there is none.

    The runner reads the records of ``[since, until)`` from Dify's database (``enrich.database_url`` or
    ``TRACEEXPORT_DIFY_DATABASE_URL``, the database the node enricher reads), maps each for every sink that
    takes it, and reconciles them with the spool's ledger. None when the ledger is off (``ledger.retention``
    0): there would be nothing to compare with.
    """
    if config.ledger.retention <= 0:
        log_event(log, "audit.off", logging.WARNING, reason="ledger.retention is 0: no ledger to compare with",
                  hint="set ledger.retention (e.g. 30d), or unset audit.interval")
        return None
    if config.enrich.database_url is None:
        log_event(log, "audit.off", logging.WARNING, reason="no Dify database configured",
                  hint="set enrich.database_url or TRACEEXPORT_DIFY_DATABASE_URL, or unset audit.interval")
        return None
    from traceexport.audit.window import Source, runner

    source = Source(config.enrich.database_url.get_secret_value(),
                    files_url=os.environ.get("FILES_URL") or FILES_URL_DEFAULT)
    run: Runner = runner(config, spool, source)
    return run


class AuditScheduler:
    """Runs ``run(now - window, now)`` at start and then every ``interval`` seconds, in a daemon thread."""

    def __init__(self, run: Runner, interval: float, window: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.run = run
        self.interval = interval
        self.window = window
        self.clock = clock
        self.last: tuple[AuditReport, float] | None = None  # the last good report and when it finished
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="traceexport-audit", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the thread; True when it ended within ``timeout`` (else a run is still going: left behind)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)

    def run_once(self) -> AuditReport | None:
        """One audit of the last ``window`` seconds now; its report, or None when it failed (logged)."""
        started = self.clock()
        until = datetime.fromtimestamp(started, UTC)
        try:
            report = self.run(until - timedelta(seconds=self.window), until)
        except Exception as exc:  # any failure is one line; the next run happens in its time
            log_event(log, "audit.failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}",
                      next_in=f"{self.interval:.0f}s")
            return None
        finished = self.clock()
        self.last = (report, finished)
        held = sum(g.held for g in report.groups.values())
        log_event(log, "audit.finished", logging.WARNING if report.exit_code else logging.INFO, held=held,
                  missing=report.missing_count, mismatched=report.mismatched_count,
                  seconds=round(finished - started, 1))
        return report

    def prometheus_text(self) -> str:
        """The last good run's gauges; empty before any run succeeded."""
        last = self.last
        return metrics.prometheus_text(*last) if last is not None else ""
