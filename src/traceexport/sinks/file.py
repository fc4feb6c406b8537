"""The file sink: mapped payloads as JSON lines in a local directory, rotated by size.

Options (config file) / environment:

* ``path`` / ``TRACEEXPORT_FILE_SINK_DIR``: the directory (default ``./traceexport-out``).
* ``mapping``: which backend mapping's payloads to write (default ``otlp``); also the file name,
  ``<path>/<mapping>.jsonl``, and this sink's ``backend``.
* ``max_file_bytes``: rotate the file once it grows past this (default 64 MiB); the full file is renamed
  ``<mapping>.<UTC time>.<n>.jsonl``.
* ``fsync``: fsync after every batch before reporting success (default true).

Each line is ``{"kind": ..., "key": ..., "body": ...}``. Write errors are retryable (a full disk may
be cleaned up), so the pipeline keeps the records.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from traceexport import _json
from traceexport.errors import ConfigError
from traceexport.sinks.base import BatchLimits, ExportResult, ItemFailure, Payload

DEFAULT_DIR = "traceexport-out"
MAPPINGS = ("opik", "langfuse", "otlp", "amplitude")


class FileSink:
    """Writes payloads as JSON lines; one file per mapping, rotated by size."""

    def __init__(self, name: str, directory: Path, mapping: str = "otlp", *,
                 max_file_bytes: int = 64 * 1024**2, fsync: bool = True,
                 limits: BatchLimits | None = None) -> None:
        self.name = name
        self.backend = mapping
        self.limits = limits or BatchLimits(max_items=1000, max_bytes=16 * 1024**2, linger_seconds=0.2)
        self.directory = Path(directory)
        self.max_file_bytes = max_file_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._file: TextIO | None = None

    @property
    def current_path(self) -> Path:
        """The file being written."""
        return self.directory / f"{self.backend}.jsonl"

    def request_bodies(self, payloads: Sequence[Payload], /) -> list[Any]:
        """The lines this batch becomes, as JSON-compatible objects."""
        return [{"kind": p.kind, "key": p.key, "body": p.body} for p in payloads]

    def export(self, payloads: Sequence[Payload], /) -> ExportResult:
        """Append the batch (fsync'd when configured); an OSError fails every item, retryably."""
        lines = "".join(_json.dumps(b) + "\n" for b in self.request_bodies(payloads))
        try:
            with self._lock:
                handle = self._open()
                handle.write(lines)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
                if handle.tell() >= self.max_file_bytes:
                    self._rotate()
        except OSError as exc:
            failure = ItemFailure(f"file sink {self.name}: cannot write {self.current_path}: {exc.strerror}",
                                  permanent=False)
            return ExportResult.all_failed(len(payloads), failure)
        return ExportResult.success()

    def _open(self) -> TextIO:
        if self._file is None or self._file.closed:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = open(self.current_path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across batches
        return self._file

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        n = 0
        while (target := self.directory / f"{self.backend}.{stamp}.{n}.jsonl").exists():
            n += 1
        os.replace(self.current_path, target)
        self._file = None

    def shutdown(self, timeout: float = 30.0) -> None:
        """Close the file; idempotent."""
        with self._lock:
            if self._file is not None and not self._file.closed:
                self._file.close()
            self._file = None


def from_config(name: str, options: Mapping[str, Any], env: Mapping[str, str]) -> FileSink:
    """Build a file sink from config ``options`` (win) and ``TRACEEXPORT_FILE_SINK_DIR``."""
    problems = []
    known = {"path", "mapping", "max_file_bytes", "fsync", "max_items", "linger_seconds"}
    problems += [f"sinks.{name}.{key}: unknown option" for key in sorted(set(options) - known)]
    mapping = str(options.get("mapping", "otlp"))
    if mapping not in MAPPINGS:
        problems.append(f"sinks.{name}.mapping: must be one of {', '.join(MAPPINGS)}, got {mapping!r}")
    max_file_bytes = _positive_int(options, "max_file_bytes", 64 * 1024**2, name, problems)
    max_items = _positive_int(options, "max_items", 1000, name, problems)
    linger = options.get("linger_seconds", 0.2)
    if not isinstance(linger, int | float) or isinstance(linger, bool) or not 0 <= linger < math.inf:
        problems.append(f"sinks.{name}.linger_seconds: must be a finite number >= 0, got {linger!r}")
        linger = 0.2
    if problems:
        raise ConfigError(problems)
    directory = Path(str(options.get("path") or env.get("TRACEEXPORT_FILE_SINK_DIR") or DEFAULT_DIR))
    limits = BatchLimits(max_items=max_items, max_bytes=16 * 1024**2, linger_seconds=float(linger))
    return FileSink(name, directory, mapping, max_file_bytes=max_file_bytes,
                    fsync=bool(options.get("fsync", True)), limits=limits)


def _positive_int(options: Mapping[str, Any], key: str, default: int, name: str, problems: list[str]) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        problems.append(f"sinks.{name}.{key}: must be a positive integer, got {value!r}")
        return default
    return value
