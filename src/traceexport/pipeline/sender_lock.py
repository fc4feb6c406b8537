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

from collections.abc import Callable, Iterable
from pathlib import Path

from traceexport.pipeline.pid_locks import PidLocks


def sender_file(spool_dir: Path, sink: str) -> Path:
    """The lock file of the process sending to ``sink`` (sink names are letters, digits, ``_``, ``-``, ``.``)."""
    return Path(spool_dir) / f"sending.{sink}.lock"


class SenderLock(PidLocks):
    """This process's hold on sending to ``sinks`` from ``spool_dir``: waits for a process that still holds
    one (saying so once through ``say`` with that process's pid); ``release`` when delivery has stopped."""

    def __init__(self, spool_dir: Path, sinks: Iterable[str], say: Callable[[str, str], None]) -> None:
        names = {sender_file(spool_dir, sink): sink for sink in sinks}
        super().__init__(names, lambda path, pid: say(names[path], pid or "unknown"))


__all__ = ["SenderLock", "sender_file"]
