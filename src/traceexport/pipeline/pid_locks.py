"""Per-sink locks naming the pid that holds them: taken for a process's life, waited for, looked at.

The daemon's spool lock, the commands' turns (``turns.py``) and the delivery processes' sending locks
(``sender_lock.py``) are all an flock on a small file into which the holder writes its pid. The kernel drops
a lock when its process ends, even on ``kill -9``, so a stale file never counts.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

Holder = TypeVar("Holder")


def held_by(path: Path, read: Callable[[int], Holder]) -> Holder | None:
    """``read(fd)`` of the lock file at ``path`` while another process holds its exclusive lock, else None
    (no file, or no one holds it: a shared lock taken and let go at once); looking creates nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file (or unreadable): no one has ever held it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def pid_written(fd: int) -> str | None:
    """The pid a holder wrote into its lock file, as text, or None when the file holds none."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else None


class PidLocks:
    """Exclusive locks on ``files`` (taken in one order, so no two processes wait for each other), each
    stamped with this process's pid, held until :meth:`release`. When another process holds one,
    ``on_busy(file, its pid or None)`` is called first: it may raise to give up, else the lock is waited for."""

    def __init__(self, files: Iterable[Path], on_busy: Callable[[Path, str | None], None]) -> None:
        self._fds: list[int] = []
        try:
            for path in sorted(set(files)):
                self._fds.append(_take(path, on_busy))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let the locks go (idempotent); the files stay, unlocked, and so count for nothing."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)  # closing the only descriptor releases the flock


def _take(path: Path, on_busy: Callable[[Path, str | None], None]) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_busy(path, pid_written(fd))
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


__all__ = ["PidLocks", "held_by", "pid_written"]
