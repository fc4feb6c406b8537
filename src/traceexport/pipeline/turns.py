"""Turns at delivering: one command at a time delivers from a spool to a sink.

A command that delivers from a spool itself (``export``, ``replay``, ``backfill``, ``audit --fix``, ``dlq
replay``: no daemon delivers its sinks) holds an flock on ``<spool>/deliver.<sink>.lock`` for each of its
sinks while its workers run. Two such commands on one spool would otherwise both send everything pending
for a sink, each record twice; the second one waits for its turn instead, saying for whom. A daemon takes
the turns of its sinks when it starts and holds them for its life; it does not start while a command has one.
The kernel drops a lock when its process ends, even on ``kill -9``, so a stale file never counts.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from traceexport.errors import ConfigError, Problem
from traceexport.pipeline.lock_peek import held_by
from traceexport.shown import shown


def turn_file(spool_dir: Path, sink: str) -> Path:
    """The lock file of ``sink``'s turn (sink names are letters, digits, ``_``, ``-`` and ``.``)."""
    return Path(spool_dir) / f"deliver.{sink}.lock"


class DeliveryTurn:
    """This process's turn at delivering to ``sinks`` from ``spool_dir``: waits (saying so once through
    ``say``) while another command has it, or, with ``say`` None (the daemon, which must not sit waiting
    unseen), raises ConfigError naming who has it; ``release`` when delivery has stopped."""

    def __init__(self, spool_dir: Path, sinks: Iterable[str], say: Callable[[str], None] | None) -> None:
        self._fds: list[int] = []
        try:
            for sink in sorted(set(sinks)):  # one order for every process: no two wait for each other
                self._fds.append(self._take(turn_file(spool_dir, sink), sink, spool_dir, say))
        except BaseException:
            self.release()
            raise

    @staticmethod
    def _take(path: Path, sink: str, spool_dir: Path, say: Callable[[str], None] | None) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _holder(fd)
                if say is None:
                    raise ConfigError([Problem("spool.dir", f"{who} (a traceexport command) is delivering to "
                                                            f"{sink} from spool {shown(spool_dir)}: let it finish "
                                                            "or stop it, then start again")],
                                      title="cannot start") from None
                say(f"waiting for {who}, which is delivering to {sink} from spool {shown(spool_dir)}: one command at "
                    "a time delivers to a sink")
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release(self) -> None:
        """Give the turn up (idempotent); the files stay, unlocked, and so count for nothing."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)  # closing the only descriptor releases the flock


def turn_holder(spool_dir: Path, sink: str) -> str | None:
    """Who has ``sink``'s turn at delivering from ``spool_dir`` now (``pid N``, or ``another command``), or None;
    looking creates nothing."""
    return held_by(turn_file(spool_dir, sink), _holder)


def _holder(fd: int) -> str:
    """The holder a turn file names: the pid its process wrote there."""
    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f"pid {holder}" if holder.isdigit() else "another command"


__all__ = ["DeliveryTurn", "turn_file", "turn_holder"]
