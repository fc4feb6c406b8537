"""Delivery on a second core: the sink workers run in a child process that shares the spool.

One Python process is bound to one core by the GIL. Ingest (parsing, the spool commit) and delivery
(re-parsing, mapping, encoding, HTTP) are independent once a record is in the spool, so the parent
accepts and a spawned child delivers, both working on the same SQLite file (WAL lets them). Sinks are
not picklable, so the child rebuilds its routes from a picklable factory (a module-level function, or
a ``functools.partial`` of one). After every commit the parent sets a shared "new records" event, so
the child's workers look at once instead of sleeping out their poll interval or linger time. The child
stops when asked, and on its own when the parent dies (``kill -9``), leaving everything undelivered in
the spool for the next start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traceexport.pipeline.settings import PipelineSettings, Route

RouteFactory = Callable[[], list[Route]]
PrepareFactory = Callable[[], Any]
log = logging.getLogger(__name__)


class DeliveryProcess:
    """A child process running every sink worker for one spool."""

    def __init__(self, spool_dir: Path, route_factory: RouteFactory, settings: PipelineSettings,
                 prepare_factory: PrepareFactory | None = None) -> None:
        self.spool_dir = Path(spool_dir)
        self.route_factory = route_factory
        self.settings = settings
        self.prepare_factory = prepare_factory
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        self._stop = context.Event()
        self._accepted = context.Event()
        self._flushing = context.Event()
        self._process = context.Process(
            target=run_delivery, name="traceexport-delivery", daemon=True,
            args=(self.spool_dir, route_factory, settings, prepare_factory, self._stop, self._accepted,
                  self._flushing, os.getpid()))

    def start(self) -> None:
        """Spawn the child (idempotent)."""
        if self._process.pid is None:
            self._process.start()

    @property
    def pid(self) -> int | None:
        """The child's process id once started."""
        return self._process.pid

    def notify(self) -> None:
        """New records are committed: wake the child's workers."""
        self._accepted.set()

    def set_flushing(self, on: bool) -> None:
        """While on, the child's workers send partial batches at once instead of lingering."""
        if on:
            self._flushing.set()
        else:
            self._flushing.clear()
        self._accepted.set()

    def alive(self) -> bool:
        """True while the child runs."""
        return self._process.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the child to finish its current batches and exit; kill it past ``timeout``."""
        if self._process.pid is None:
            return
        if self._process.is_alive():
            # Never set the shared events once the child is gone: a child killed while waiting on one leaves
            # multiprocessing's condition waiting for it forever, and set() would block this process too.
            self._stop.set()
            self._accepted.set()  # wakes the child's loop at once
            self._process.join(timeout)
        if self._process.is_alive():
            log.warning("delivery process did not stop within %.0fs; killing it (nothing is lost)", timeout)
            self._process.kill()  # it ignores SIGTERM (see run_delivery)
            self._process.join(5.0)


def run_delivery(spool_dir: Path, route_factory: RouteFactory, settings: PipelineSettings,
                 prepare_factory: PrepareFactory | None, stop: Any, accepted: Any, flushing: Any,
                 parent_pid: int) -> None:
    """The child's main: deliver from the spool until told to stop or orphaned."""
    from traceexport.pipeline.pipeline import Pipeline  # the child imports on its own

    # The parent owns this process's life: a SIGTERM or Ctrl-C sent to the whole process group (GNU timeout,
    # systemd's default KillMode, a terminal) reaches the parent, which stops the child within its grace.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    local = dataclasses.replace(settings, delivery_process=False)
    pipe = Pipeline(spool_dir, route_factory(), local, prepare_factory() if prepare_factory else None,
                    flushing=flushing)
    pipe.start()
    try:
        while not stop.is_set():
            if accepted.wait(0.5):
                accepted.clear()  # cleared before the workers look: a later commit sets it again
                pipe.wake()
            if os.getppid() != parent_pid:  # the parent died: stop cleanly, the spool keeps the rest
                break
    finally:
        with contextlib.suppress(Exception):
            pipe.close()
