"""Who holds an flock, learned without taking it for long and without creating the lock file."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

Holder = TypeVar("Holder")


def held_by(path: Path, read: Callable[[int], Holder]) -> Holder | None:
    """``read(fd)`` of the lock file at ``path`` while another process holds its exclusive lock, else None
    (no file, or no one holds it: a shared lock taken and let go at once)."""
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


__all__ = ["held_by"]
