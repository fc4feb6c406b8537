"""Delivery on a second core: the sink workers run in a child process that shares the spool.

One Python process is bound to one core by the GIL. Ingest (parsing, the spool commit) and delivery
(re-parsing, mapping, encoding, HTTP) are independent once a record is in the spool, so the parent
accepts and a spawned child delivers, both working on the same SQLite file (WAL lets them). Sinks are
not picklable, so the child rebuilds its routes from a picklable factory (a module-level function, or
a ``functools.partial`` of one), and sets up logging as the parent has (level, format, masked secrets).

The two processes share no lock: a parent killed at any instant cannot leave the child waiting for it.
The parent talks through a :class:`Doorbell`, a pipe whose write end only it holds: after every commit
it writes one byte without blocking (a full pipe already holds wake-ups, a closed one means the child is
gone), so the child's workers look at once instead of sleeping out their poll interval or linger time.
To stop the child it writes :data:`STOP` and closes the pipe. End of file without :data:`STOP` means
the parent died (``kill -9``): the child stops on its own within :data:`ORPHAN_GRACE` seconds, leaving
everything undelivered in the spool for the next start. "Flushing" is one byte of shared memory the
child's workers read (:class:`SharedFlag`), again without a lock. The child's sink rate limits reach the
parent's ``/metrics`` the same way, through a :class:`~traceexport.pipeline.rate_board.RateBoard`.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import multiprocessing
import os
import selectors
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

from traceexport.logs import current_settings
from traceexport.pipeline.rate_board import RateBoard
from traceexport.pipeline.settings import PipelineSettings, Route

RouteFactory = Callable[[], list[Route]]
PrepareFactory = Callable[[], Any]
# The child's main (``pipeline.run_delivery``, a module-level function spawn can name): spool dir, route factory,
# settings, prepare factory, doorbell reader, flushing flag, parent pid, log settings, rate board.
DeliveryMain = Callable[..., None]
log = logging.getLogger(__name__)

WAKE = b"w"  # records were committed
STOP = b"s"  # finish the current batches and exit
ORPHAN_GRACE = 3.0  # seconds an orphaned child may spend finishing its batches before it exits anyway
POLL_INTERVAL = 0.5  # seconds between the child's checks that its parent is still the same process


class SharedFlag:
    """A yes/no flag in shared memory, set in the parent and read in the child, with no lock to be left held."""

    def __init__(self, context: SpawnContext) -> None:
        self._value = context.RawValue(ctypes.c_bool, False)

    def set(self) -> None:
        """Raise the flag."""
        self._value.value = True

    def clear(self) -> None:
        """Lower the flag."""
        self._value.value = False

    def is_set(self) -> bool:
        """Whether the flag is up."""
        return bool(self._value.value)


class Doorbell:
    """The parent's end of the pipe to the child: single bytes written without ever blocking or raising."""

    def __init__(self, writer: Connection) -> None:
        self._writer = writer
        os.set_blocking(writer.fileno(), False)
        self._lock = threading.Lock()  # this process's own: close() must not free the fd under a write

    def ring(self, message: bytes = WAKE) -> bool:
        """Send ``message``; False when it could not go (pipe full of earlier wake-ups, child gone, closed)."""
        with self._lock:
            if self._writer.closed:
                return False
            try:
                return os.write(self._writer.fileno(), message) == len(message)
            except OSError:  # BlockingIOError: the child has wake-ups pending; BrokenPipeError: it is gone
                return False

    def close(self) -> None:
        """Close the pipe: the child reads end of file (idempotent)."""
        with self._lock:
            self._writer.close()


class DeliveryProcess:
    """A child process running every sink worker for one spool."""

    def __init__(self, main: DeliveryMain, spool_dir: Path, route_factory: RouteFactory, settings: PipelineSettings,
                 prepare_factory: PrepareFactory | None = None, sinks: Sequence[str] = ()) -> None:
        self.main = main
        self.spool_dir = Path(spool_dir)
        self.route_factory = route_factory
        self.settings = settings
        self.prepare_factory = prepare_factory
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        self._flushing = SharedFlag(self._context)
        self.rates = RateBoard(self._context, sinks)  # the child's rate limiters, for this process's /metrics
        self._process: SpawnProcess | None = None
        self._doorbell: Doorbell | None = None
        self._stopping = False

    def start(self) -> None:
        """Spawn the child (idempotent); it logs with this process's settings as they are now."""
        if self._process is not None:
            return
        self._stopping = False
        reader, writer = self._context.Pipe(duplex=False)
        self._process = self._context.Process(
            target=self.main, name="traceexport-delivery", daemon=True,
            args=(self.spool_dir, self.route_factory, self.settings, self.prepare_factory, reader,
                  self._flushing, os.getpid(), current_settings(), self.rates))
        self._doorbell = Doorbell(writer)
        try:
            self._process.start()
        finally:
            reader.close()  # the child has its own copy; with ours closed, a ring to a dead child fails at once
        # An interpreter leaving without stop() would otherwise wait forever in multiprocessing's exit hook for
        # a child that ignores its SIGTERM; hooks run last-registered first, so this one tells the child first.
        atexit.register(self._hang_up)

    @property
    def pid(self) -> int | None:
        """The child's process id once started."""
        return self._process.pid if self._process is not None else None

    def notify(self) -> None:
        """New records are committed: wake the child's workers (one non-blocking byte; never waits)."""
        if self._doorbell is not None:
            self._doorbell.ring()

    def set_flushing(self, on: bool) -> None:
        """While on, the child's workers send partial batches at once instead of lingering."""
        if on:
            self._flushing.set()
        else:
            self._flushing.clear()
        self.notify()

    def alive(self) -> bool:
        """True while the child runs."""
        return self._process is not None and self._process.is_alive()

    def respawn_if_dead(self) -> int | None:
        """Spawn a new child when the one started has ended on its own (killed, out of memory): its exit code
        (negative: the signal), or None when it runs, was never started or is being stopped. The records it
        had in hand are still owed in the spool: the new child sends them (at least once, as after a restart)."""
        dead = self._process
        if dead is None or self._stopping or dead.is_alive():
            return None
        atexit.unregister(self._hang_up)
        self._hang_up()
        dead.join(0)
        code = dead.exitcode
        self._process = None
        self.start()
        return -1 if code is None else code

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the child to finish its current batches and exit; kill it past ``timeout``."""
        self._stopping = True
        if self._process is None:
            return
        atexit.unregister(self._hang_up)
        self._hang_up()
        if self._process.is_alive():
            self._process.join(timeout)
        if self._process.is_alive():
            log.warning("delivery process did not stop within %.0fs; killing it (nothing is lost)", timeout)
            self._process.kill()  # it ignores SIGTERM (see pipeline.run_delivery)
            self._process.join(5.0)


    def _hang_up(self) -> None:
        """Tell the child to stop and close the pipe (never blocks, never signals: a dead child misses it)."""
        if self._doorbell is not None:
            self._doorbell.ring(STOP)
            self._doorbell.close()


def follow_doorbell(reader: Connection, on_wake: Callable[[], None], parent_pid: int) -> bool:
    """Call ``on_wake`` once per burst of rings until told to stop; True if the parent went away instead."""
    fd = reader.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            if selector.select(POLL_INTERVAL):
                data = os.read(fd, 4096)  # every ring so far: many commits, one wake-up
                if not data:
                    return True  # end of file without STOP: the parent's process is gone
                if STOP in data:
                    return False
                on_wake()
            if os.getppid() != parent_pid:  # re-parented: the parent died (and something holds the pipe)
                return True


def exit_after(seconds: float) -> None:
    """End this process in ``seconds`` whatever its threads are doing (the spool keeps what is undelivered)."""
    timer = threading.Timer(seconds, os._exit, args=(0,))
    timer.daemon = True
    timer.start()
