"""Where a backfill stopped: per stream, the last row whose records the spool accepted.

A checkpoint belongs to one backfill job (the database, the window, the apps, the types and the sinks), so
running the same command again resumes it, and a different window starts afresh. It is written (atomically,
fsynced) only after a page's records are in the spool: a killed backfill resumes after the last page the
spool holds, re-reading at most the page it was on (re-sent records carry the same ids: harmless).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from traceexport.difydb.reader import Position, Window


def job_id(database: str, window: Window, sinks: list[str]) -> str:
    """A short stable name for the job (no secrets: ``database`` is the masked URL)."""
    spec = json.dumps([database, window.since.isoformat() if window.since else None,
                       window.until.isoformat() if window.until else None, sorted(window.apps or ()),
                       sorted(window.types), sorted(sinks)])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


class Checkpoint:
    """A job's positions in ``<spool>/backfill/<job>.json``."""

    def __init__(self, spool_dir: Path, job: str) -> None:
        self.path = spool_dir / "backfill" / f"{job}.json"
        self.positions: dict[str, Position] = {}
        self.done = False
        self.records = 0
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self.positions = {k: Position.from_json(v) for k, v in data.get("positions", {}).items()}
                self.done = bool(data.get("done"))
                self.records = int(data.get("records", 0))
            except (ValueError, TypeError, KeyError, IndexError):  # unreadable: start afresh (ids make it safe)
                self.positions, self.done, self.records = {}, False, 0

    @property
    def resumed(self) -> bool:
        return bool(self.positions) or self.done

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
        self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {"positions": {k: v.to_json() for k, v in self.positions.items()},
                                "done": self.done, "records": self.records}
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            handle.write(json.dumps(data))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
