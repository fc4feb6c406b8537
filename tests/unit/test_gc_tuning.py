"""The collector settings of traceexport's own processes, and that the library never applies them to a host."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator

import pytest

from traceexport._gc import FIRST_GENERATION_THRESHOLD, tune_for_throughput


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """Whatever a test does to the collector is undone after it."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tuning_raises_the_first_threshold_and_freezes_startup(restored_gc: None) -> None:
    """The youngest generation is collected every 10,000 allocations and start-up objects are frozen."""
    older = gc.get_threshold()[1:]
    tune_for_throughput()
    assert gc.get_threshold() == (FIRST_GENERATION_THRESHOLD, *older)
    assert gc.get_freeze_count() > 0


def test_importing_the_library_leaves_the_hosts_collector_alone() -> None:
    """A host importing traceexport (as Dify does with the hook) keeps its own collector settings."""
    code = ("import gc; before = gc.get_threshold(); import traceexport.dify, traceexport.pipeline; "
            "print(gc.get_threshold() == before and gc.get_freeze_count() == 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
