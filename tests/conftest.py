"""Shared fixtures: the sample records, the shared reference folder, and record parsing helpers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from traceexport.records import Record, parse_records

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SAMPLES = TESTS / "data" / "samples"
# Rows of Dify's workflow_node_executions table: not trace records, so not beside the samples.
NODE_ROWS = TESTS / "data" / "node_rows"
SHARED = REPO.parent / "shared"
SAMPLE_FILES = sorted(SAMPLES.glob("*.json"))


def load_records(path: Path) -> list[Record]:
    """Every record in a file; fails the test if any record is rejected."""
    records = []
    for item in parse_records(path.read_bytes(), str(path)):
        assert isinstance(item, Record), f"unexpected rejection: {item}"
        records.append(item)
    return records


@pytest.fixture
def sample_records() -> list[Record]:
    """The seven community-edition sample records, one per type."""
    return [record for path in SAMPLE_FILES for record in load_records(path)]


@pytest.fixture
def shared_dir() -> Path:
    """The ../shared reference folder beside the checkout; skips visibly when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: the shared reference documents are only beside the CI checkout")
    return SHARED


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """The root logger's handlers and levels as before the test: a command run in-process (``main([...])``)
    points them at that test's captured stderr, which is closed once the test ends, and a later test's log line
    would print "--- Logging error ---" into whatever that test captures."""
    root, ours = logging.getLogger(), logging.getLogger("traceexport")
    handlers, levels = list(root.handlers), (root.level, ours.level)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(levels[0])
    ours.setLevel(levels[1])
