"""Where a backfill stopped: per stream, the last row whose records the spool accepted.

A checkpoint belongs to one backfill job (the database, the window, the apps, the types and the sinks), so
running the same command again resumes it, and a different window starts afresh. It is written (atomically,
fsynced) only after a page's records are in the spool: a killed backfill resumes after the last page the
spool holds, re-reading at most the page it was on (re-sent records carry the same ids: harmless).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from traceexport.difydb.reader import Position, Window
from traceexport.errors import SourceError


def job_id(database: str, since: str | None, until: str | None, window: Window, sinks: list[str]) -> str:
    """A short stable name for the job, from the flags as given (``30d`` stays ``30d``, so the same command
    run again is the same job) — no secrets: ``database`` is the masked URL."""
    spec = json.dumps([database, since, until, sorted(window.apps or ()), sorted(window.types), sorted(sinks)])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


class Checkpoint:
    """A job's positions in ``<spool>/backfill/<job>.json``."""

    def __init__(self, spool_dir: Path, job: str) -> None:
        self.path = spool_dir / "backfill" / f"{job}.json"
        self.positions: dict[str, Position] = {}
        self.done = False
        self.records = 0
        self.since: datetime | None = None
        self.until: datetime | None = None
        self.began: datetime | None = None  # when the job's first run read its window
        self._lock_fd: int | None = None
        self._load()

    def _load(self) -> None:
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self.positions = {k: Position.from_json(v) for k, v in data.get("positions", {}).items()}
                self.done = bool(data.get("done"))
                self.records = int(data.get("records", 0))
                self.since = datetime.fromisoformat(data["since"]) if data.get("since") else None
                self.until = datetime.fromisoformat(data["until"]) if data.get("until") else None
                self.began = datetime.fromisoformat(data["began"]) if data.get("began") else None
            except (ValueError, TypeError, KeyError, IndexError):  # unreadable: start afresh (ids make it safe)
                self.positions, self.done, self.records = {}, False, 0

    def claim(self) -> None:
        """Hold this job for this process (an flock on ``<job>.lock``, released when the process ends, killed
        or not): a second run of the same command on the same spool while the first one runs would write the
        same checkpoint and send every record twice. SourceError (one line) when another process holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SourceError(f"cannot keep a backfill checkpoint in {self.path.parent}: "
                              f"{exc.strerror or type(exc).__name__}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SourceError(f"this backfill (the same window, apps, types and sinks) is already running on spool "
                              f"{self.path.parent.parent}: wait for it to finish, or stop it first") from None
        self._lock_fd = fd
        self._load()  # as the run that held it left it

    def release(self) -> None:
        """Let another run of the job begin (closing the descriptor drops the flock)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    @property
    def resumed(self) -> bool:
        return bool(self.positions) or self.done

    @property
    def covered(self) -> bool:
        """Whether the job's window had ended when the job began, so that reading it once read all of it (a
        window ending in the future gains rows after the job finished). A checkpoint written before
        ``began`` was kept counts as covered."""
        return self.until is not None and (self.began is None or self.until <= self.began)

    def pin(self, window: Window) -> Window:
        """The window this job reads: the one its first run resolved (``30d`` or "now" mean the moment the job
        began, so a resumed run reads no more and no less); the first run records ``window``'s."""
        if self.positions:
            return replace(window, since=self.since, until=self.until)
        self.since, self.until = window.since, window.until
        self.began = datetime.now(UTC).replace(tzinfo=None)
        return window

    def advance(self, stream: str, position: Position | None, records: int) -> None:
        """Record that everything up to ``position`` in ``stream`` is in the spool."""
        if position is not None:
            self.positions[stream] = position
        self.records += records
        self._write()

    def finish(self) -> None:
        self.done = True
        self._write()

    def reset(self) -> None:
        self.positions, self.done, self.records = {}, False, 0
        self.since = self.until = self.began = None
        self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        data: dict[str, Any] = {"positions": {k: v.to_json() for k, v in self.positions.items()},
                                "done": self.done, "records": self.records,
                                "since": self.since.isoformat() if self.since else None,
                                "until": self.until.isoformat() if self.until else None,
                                "began": self.began.isoformat() if self.began else None}
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as handle:
                handle.write(json.dumps(data))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk: what the spool accepted stays; the next run re-reads from the last
            raise SourceError(f"cannot write the backfill checkpoint {self.path}: "  # checkpoint written
                              f"{exc.strerror or type(exc).__name__}; the spool keeps what it accepted: run "
                              "the same command again to resume") from None
