"""Replay / backfill from files: JSON, JSON arrays or JSON lines, or Dify's ``ops_trace/{app_id}/*.json`` tree.

:func:`replay_files` lists the input files; :func:`read_file` turns one file into records and one-line
problems; :class:`Ledger` remembers which record keys were already handed to which sinks, so a second
run (or a resumed one) does not send them again. Nothing here sends anything: the ``replay`` command
feeds the records to the pipeline.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from traceexport.errors import ConfigError, Problem, RecordError
from traceexport.records import Record, parse_records

SUFFIXES = frozenset({".json", ".jsonl", ".ndjson"})
STDIN = "-"


def replay_files(paths: Sequence[str | Path]) -> Iterator[Path]:
    """Every input file: named files as given (``-`` is standard input), directories walked (sorted) for
    .json/.jsonl/.ndjson files."""
    for raw in paths:
        path = Path(raw)
        if str(raw) == STDIN:
            yield path  # standard input, read by read_file
        elif path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        else:
            yield path  # a missing file is reported by read_file


@dataclass(slots=True)
class FileResult:
    """What one input file held: its records, and a one-line reason for each bad part."""

    path: Path
    records: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    size: int = 0

    @property
    def broken(self) -> bool:
        """True when nothing in the file could be read."""
        return not self.records and bool(self.problems)


def read_file(path: Path, label: str | None = None) -> FileResult:
    """Read and parse one file; never raises for bad content."""
    stdin = str(path) == STDIN
    label = label or ("<stdin>" if stdin else str(path))
    result = FileResult(path)
    try:
        data = sys.stdin.buffer.read() if stdin else path.read_bytes()
    except OSError as exc:
        result.problems.append(f"{label}: cannot read: {exc.strerror or exc}")
        return result
    result.size = len(data)
    try:
        for item in parse_records(data, source=label):
            if isinstance(item, RecordError):
                result.problems.append(str(item))
            else:
                result.records.append(item)
    except Exception as exc:  # a parser bug must cost one file, not the replay
        result.problems.append(f"{label}: could not read ({type(exc).__name__}: {exc})")
    if not result.records and not result.problems:
        result.problems.append(f"{label}: no records (empty file)")
    return result


class Ledger:
    """Record keys already handed to each sink, in a small SQLite file beside the spool.

    A key is written only after the pipeline's ``accept`` returned (the record is durable in the spool),
    so a run interrupted at any point loses nothing: the spool still delivers what the ledger names.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS sent (sink TEXT NOT NULL, key TEXT NOT NULL, "
                             "at REAL NOT NULL, PRIMARY KEY (sink, key)) WITHOUT ROWID")
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError([Problem(str(path), f"cannot open the replay ledger: {exc}")],
                              title="cannot start") from exc

    def missing_sinks(self, key: str, sinks: Iterable[str]) -> list[str]:
        """The sinks of ``sinks`` that have not been handed ``key`` yet."""
        wanted = list(sinks)
        marks = ",".join("?" * len(wanted))
        rows = self._db.execute(f"SELECT sink FROM sent WHERE key = ? AND sink IN ({marks})", (key, *wanted))
        done = {row[0] for row in rows}
        return [s for s in wanted if s not in done]

    def add(self, keys: Iterable[str], sinks: Iterable[str]) -> None:
        """Remember that ``keys`` were handed to ``sinks``; committed on return."""
        now = time.time()
        sink_list = list(sinks)
        self._db.executemany("INSERT OR IGNORE INTO sent (sink, key, at) VALUES (?, ?, ?)",
                             [(s, k, now) for k in keys for s in sink_list])
        self._db.commit()

    def count(self) -> int:
        """How many (sink, key) pairs are recorded."""
        return int(self._db.execute("SELECT count(*) FROM sent").fetchone()[0])

    def close(self) -> None:
        """Close the database; idempotent."""
        self._db.close()


@dataclass(slots=True)
class ReplayStats:
    """Counts for the summary line and the exit code."""

    files: int = 0
    broken_files: int = 0
    records: int = 0
    bad_records: int = 0
    skipped: int = 0
    duplicates: int = 0
    accepted: int = 0
    payloads: dict[str, int] = field(default_factory=dict)

    def summary(self, dry_run: bool) -> str:
        """One line for humans."""
        verb = "would send" if dry_run else "sent to the spool"
        text = (f"{self.files} file(s) ({self.broken_files} broken), {self.records} record(s) read, "
                f"{self.bad_records} bad, {self.skipped} already sent, {self.duplicates} duplicate(s), "
                f"{self.accepted} {verb}")
        if self.payloads:
            text += "; payloads: " + ", ".join(f"{k} {v}" for k, v in self.payloads.items())
        return text


__all__ = ["STDIN", "SUFFIXES", "FileResult", "Ledger", "ReplayStats", "read_file", "replay_files"]
