"""Turns at delivering: one command at a time delivers from a spool to a sink.

A command that delivers from a spool itself (``export``, ``replay``, ``backfill``, ``audit --fix``, ``dlq
replay``: no daemon delivers its sinks) holds an flock on ``<spool>/deliver.<sink>.lock`` for each of its
sinks while its workers run. Two such commands on one spool would otherwise both send everything pending
for a sink, each record twice; the second one waits for its turn instead, saying for whom. A daemon takes
the turns of its sinks when it starts and holds them for its life; it does not start while a command has one.
The kernel drops a lock when its process ends, even on ``kill -9``, so a stale file never counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from traceexport.errors import ConfigError, Problem
from traceexport.pipeline.pid_locks import PidLocks, held_by, pid_written
from traceexport.shown import shown


def turn_file(spool_dir: Path, sink: str) -> Path:
    """The lock file of ``sink``'s turn (sink names are letters, digits, ``_``, ``-`` and ``.``)."""
    return Path(spool_dir) / f"deliver.{sink}.lock"


class DeliveryTurn(PidLocks):
    """This process's turn at delivering to ``sinks`` from ``spool_dir``: waits (saying so once through
    ``say``) while another command has it, or, with ``say`` None (the daemon, which must not sit waiting
    unseen), raises ConfigError naming who has it; ``release`` when delivery has stopped."""

    def __init__(self, spool_dir: Path, sinks: Iterable[str], say: Callable[[str], None] | None) -> None:
        names = {turn_file(spool_dir, sink): sink for sink in sinks}

        def busy(path: Path, pid: str | None) -> None:
            who, sink = _named(pid), names[path]
            if say is None:
                raise ConfigError([Problem("spool.dir", f"{who} (a traceexport command) is delivering to "
                                                        f"{sink} from spool {shown(spool_dir)}: let it finish "
                                                        "or stop it, then start again")],
                                  title="cannot start") from None
            say(f"waiting for {who}, which is delivering to {sink} from spool {shown(spool_dir)}: one command at "
                "a time delivers to a sink")

        super().__init__(names, busy)


def turn_holder(spool_dir: Path, sink: str) -> str | None:
    """Who has ``sink``'s turn at delivering from ``spool_dir`` now (``pid N``, or ``another command``), or None;
    looking creates nothing."""
    return held_by(turn_file(spool_dir, sink), _holder)


def _holder(fd: int) -> str:
    """The holder a turn file names: the pid its process wrote there."""
    return _named(pid_written(fd))


def _named(pid: str | None) -> str:
    return f"pid {pid}" if pid else "another command"


__all__ = ["DeliveryTurn", "turn_file", "turn_holder"]
