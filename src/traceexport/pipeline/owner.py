"""Which daemon delivers from a spool: ``traceexport serve`` holds an flock on ``<spool>/daemon.lock``.

The lock lives as long as the daemon's process (the kernel drops it when the process ends, even on
``kill -9``), so a stale file never counts. The file names the holder's pid and sinks, so a command on
the same spool (``export``, ``replay``, ``backfill``, ``audit --fix``, ``dlq replay``) can leave delivery to
that daemon and say so: :func:`delivering_daemon` is the one rule they follow. Looking never creates anything:
no spool, no lock file, no daemon.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from traceexport.errors import ConfigError, DaemonConflictError, Problem
from traceexport.pipeline.pid_locks import held_by
from traceexport.pipeline.spool_dir import LOCK_FILE, check_spool_dir
from traceexport.shown import shown


@dataclass(frozen=True, slots=True)
class Owner:
    """The daemon delivering from a spool: its pid and the sinks it delivers to."""

    pid: int | None
    sinks: tuple[str, ...]

    def describe(self) -> str:
        """``the daemon (pid 123)`` for messages."""
        return f"the daemon (pid {self.pid})" if self.pid else "a daemon"

    def delivers(self, sink: str) -> bool:
        """Whether this daemon delivers to ``sink`` (a daemon whose sinks cannot be read is taken to deliver
        to every sink: a command then leaves delivery to it rather than risk two processes on one sink)."""
        return not self.sinks or sink in self.sinks


class DaemonLock:
    """The exclusive lock a daemon holds on its spool for its whole life."""

    def __init__(self, spool_dir: Path, sinks: list[str]) -> None:
        check_spool_dir(spool_dir)
        self.path = Path(spool_dir) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = owner(Path(spool_dir))
            who = other.describe() if other else "another daemon"
            raise ConfigError([Problem("spool.dir", f"{who} is already delivering from spool {shown(spool_dir)}: "
                                                    "stop it first, or give this one its own --spool")],
                              title="cannot start") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "sinks": sinks}).encode())
        self._fd: int | None = fd

    def release(self) -> None:
        """Drop the lock (idempotent); the file stays, unlocked, and so counts for nothing."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock


def owner(spool_dir: Path) -> Owner | None:
    """The daemon holding ``spool_dir``'s lock, or None when no daemon delivers from it."""
    return held_by(Path(spool_dir) / LOCK_FILE, _read)


def delivering_daemon(spool_dir: Path, sinks: Iterable[str]) -> Owner | None:
    """Who delivers ``sinks`` from ``spool_dir`` once a command has accepted records for them: the daemon,
    when it delivers to every one of them (the command hands the records over and waits), or None, when no
    daemon runs or it delivers to none of them (the command delivers them itself).

    A daemon delivering to only some of them is a :class:`DaemonConflictError`: two processes must never
    deliver to one sink, and one pipeline cannot leave part of its sinks to another process.
    """
    daemon = owner(spool_dir)
    names = list(dict.fromkeys(sinks))
    if daemon is None:
        return None
    covered = [name for name in names if daemon.delivers(name)]
    if not covered:
        return None
    if len(covered) == len(names):
        return daemon
    others = ", ".join(name for name in names if name not in covered)
    raise DaemonConflictError(
        f"{daemon.describe()} is delivering from spool {shown(spool_dir)} to {', '.join(daemon.sinks)}, not to "
        f"{others}: deliver to {', '.join(covered)} and to {others} in separate runs, or use a spool of your "
        "own (--spool)")


def _read(fd: int) -> Owner:
    try:
        data = json.loads(os.pread(fd, 65536, 0) or b"{}")
        pid = data.get("pid")
        sinks = tuple(str(s) for s in data.get("sinks") or ())
        return Owner(pid if isinstance(pid, int) else None, sinks)
    except (OSError, ValueError, AttributeError):
        return Owner(None, ())
