"""One delivery process at a time per sink and spool, also in the seconds after a ``kill -9`` of its daemon.

A daemon (or command) killed with ``kill -9`` leaves its delivery process finishing the batches in flight for
up to ``ORPHAN_GRACE`` seconds, and a daemon restarted at once (systemd, a container's restart policy) spawns a
new one meanwhile. Both would read the same cursor and send the same records at the same time, and the orphan's
late commit would land over the newcomer's work: the records the newcomer had delivered queued again as "not
sent" (sent a second time, counted exported twice), the cursor moved back. So a delivery process holds an flock
on ``<spool>/sending.<sink>.lock`` for each of its sinks for its whole life, taken before it reads a cursor: a
newcomer waits for the orphan to end (within its grace), saying so once. The kernel drops a lock when its
process ends, so a stale file never counts.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable
from pathlib import Path


def sender_file(spool_dir: Path, sink: str) -> Path:
    """The lock file of the process sending to ``sink`` (sink names are letters, digits, ``_``, ``-``, ``.``)."""
    return Path(spool_dir) / f"sending.{sink}.lock"


class SenderLock:
    """This process's hold on sending to ``sinks`` from ``spool_dir``: waits for a process that still holds
    one (saying so once through ``say`` with that process's pid); ``release`` when delivery has stopped."""

    def __init__(self, spool_dir: Path, sinks: Iterable[str], say: Callable[[str, str], None]) -> None:
        self._fds: list[int] = []
        try:
            for sink in sorted(set(sinks)):  # one order for every process: no two wait for each other
                self._fds.append(_take(sender_file(spool_dir, sink), sink, say))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let the sinks go (idempotent); the files stay, unlocked, and so count for nothing."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)  # closing the only descriptor releases the flock


def _take(path: Path, sink: str, say: Callable[[str, str], None]) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            say(sink, holder if holder.isdigit() else "unknown")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


__all__ = ["SenderLock", "sender_file"]
