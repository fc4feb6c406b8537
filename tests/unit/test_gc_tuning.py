"""The collector settings of traceexport's own processes, that the library never applies them to a host, and
that a sink's requests need no collector to be freed."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from traceexport._gc import FIRST_GENERATION_THRESHOLD, tune_for_throughput
from traceexport.sinks.http_client import make_client


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


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """The collector keeps what it finds unreachable in ``gc.garbage`` instead of freeing it, while a test runs."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("status", [200, 503])
def test_a_sinks_answered_request_is_freed_without_the_collector(saved_garbage: list[object], status: int) -> None:
    """A sink's request, its body and its read answer leave no reference cycle behind (the delivery process's
    higher collection threshold would otherwise keep every body until a full collection)."""
    answer = httpx.MockTransport(lambda request: httpx.Response(status, content=b"ok"))
    client = make_client(timeout=5, transport=answer)
    with client:
        for _ in range(3):
            response = client.post("http://127.0.0.1:9/v1/traces", content=b"x" * 100_000)
            assert response.content == b"ok"
        del response
        gc.collect()
    assert [type(o).__name__ for o in saved_garbage if type(o).__module__.startswith(("httpx", "httpcore"))] == []
