"""Delivery in a child process on the same spool: a second core, same guarantees."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pipeline_helpers import make_records, wait_for

from traceexport.logs import add_secrets, current_settings
from traceexport.mapping import load_mapping
from traceexport.pipeline import Pipeline, PipelineSettings, Route
from traceexport.pipeline.premapped import is_premapped
from traceexport.pipeline.process import ORPHAN_GRACE, STOP, Doorbell
from traceexport.pipeline.spool import Spool
from traceexport.records.compact import record_from_compact
from traceexport.sinks import create_sink


def file_routes(out: str, linger: float | None = None) -> list[Route]:
    """One file-sink route (module level, so the child process can rebuild it)."""
    options: dict[str, object] = {"path": out, "fsync": False}
    if linger is not None:
        options["linger_seconds"] = linger
    sink = create_sink("file", "file", options, env={})
    return [Route(sink, load_mapping("otlp"))]


def hung_otlp_routes(url: str) -> list[Route]:
    """One OTLP route to ``url`` with a 60 s timeout (module level, so the child process can rebuild it)."""
    sink = create_sink("otlp", "hung", {"traces_endpoint": url, "timeout": 60}, env={})
    return [Route(sink, load_mapping("otlp"))]


def _lines(out: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for path in out.glob("*.jsonl") for line in path.read_text("utf-8").splitlines()]


def _child_pipe(tmp_path: Path, name: str, linger: float | None = None,
                **settings: Any) -> tuple[Pipeline, Path]:
    """A pipeline delivering from a child process into the file sink at ``tmp_path/name``."""
    out = tmp_path / name
    factory = functools.partial(file_routes, str(out), linger)
    options = PipelineSettings(delivery_process=True, **settings)
    return Pipeline(tmp_path / f"spool-{name}", factory(), options, route_factory=factory), out


def test_child_process_delivers_what_the_parent_accepts(tmp_path: Path) -> None:
    """With delivery_process on, records accepted here are delivered by the child and counted in the spool."""
    pipe, out = _child_pipe(tmp_path, "out", poll_interval=0.05)
    with pipe:
        assert pipe.delivery is not None and pipe.workers == []
        pipe.start()
        pipe.accept(make_records(20))
        assert pipe.wait_idle(60)
        assert pipe.metrics()["sinks"]["file"]["exported"] == 20
        assert pipe.delivery.alive()
        pipe.stop()
        assert not pipe.delivery.alive()
    assert len(_lines(out)) == 40  # a root span and an LLM span per message record


def test_the_child_looks_as_soon_as_the_parent_commits(tmp_path: Path) -> None:
    """Each accept wakes the child: with a 10-minute poll interval, records are still delivered at once."""
    pipe, out = _child_pipe(tmp_path, "out", 0.0, poll_interval=600)
    with pipe:
        pipe.start()
        for start in range(0, 6, 2):
            pipe.accept(make_records(2, start=start))
            assert pipe.wait_idle(60)
    assert len(_lines(out)) == 12


def test_flush_sends_the_child_s_partial_batch_without_lingering(tmp_path: Path) -> None:
    """flush() makes the delivery process send a partial batch now, not after the sink's 10-minute linger."""
    pipe, out = _child_pipe(tmp_path, "out", 600.0, poll_interval=0.05)
    with pipe:
        pipe.start()
        pipe.accept(make_records(3))
        assert pipe.flush(60)
    assert len(_lines(out)) == 6


def test_the_child_delivers_records_from_their_stored_forms(tmp_path: Path) -> None:
    """Records stored with a form for the child (it lags) are delivered from it, spans unchanged: the compact
    form while the backlog did not grow since the last batch, the payloads mapped ahead once it did."""
    outputs = []
    for name, min_lag in (("parsed", 10**9), ("stored", 0)):
        pipe, out = _child_pipe(tmp_path, name, 0.0, poll_interval=0.05, compact_min_lag=min_lag)
        with pipe:
            pipe.accept(make_records(5))
            pipe.accept(make_records(5, start=5))
            stored = [row[0] for row in pipe.spool.conn().execute("SELECT compact FROM records ORDER BY seq")]
            if name == "stored":
                assert [is_premapped(blob) for blob in stored] == [False] * 5 + [True] * 5
                assert all(record_from_compact(blob, "{}") is not None for blob in stored[:5])
            else:
                assert stored == [None] * 10
            pipe.start()
            assert pipe.flush(60)
        outputs.append(sorted(json.dumps(line, sort_keys=True) for line in _lines(out)))
    assert outputs[0] == outputs[1] and len(outputs[0]) == 20


DRIVER = r"""
import functools, sys, time
sys.path.insert(0, sys.argv[3])
from test_delivery_process import file_routes
from traceexport.pipeline import Pipeline, PipelineSettings
factory = functools.partial(file_routes, sys.argv[2])
pipe = Pipeline(sys.argv[1], factory(), PipelineSettings(delivery_process=True), route_factory=factory)
pipe.start()
print(pipe.delivery.pid, flush=True)
time.sleep(600)
"""


HUNG_DRIVER = r"""
import functools, sys, time
sys.path.insert(0, sys.argv[3])
from pipeline_helpers import make_records
from test_delivery_process import hung_otlp_routes
from traceexport.pipeline import Pipeline, PipelineSettings
factory = functools.partial(hung_otlp_routes, sys.argv[2])
pipe = Pipeline(sys.argv[1], factory(), PipelineSettings(delivery_process=True), route_factory=factory)
pipe.start()
pipe.accept(make_records(3))
print(pipe.delivery.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_an_orphaned_child_exits_even_with_a_batch_hung_at_the_backend(tmp_path: Path) -> None:
    """The parent killed while the child's batch waits on a backend that never answers (60 s timeout): the
    child still exits within its orphan grace plus a generous margin, leaving the batch in the spool."""
    backend = socket.socket()  # accepts connections (kernel backlog) and never answers
    backend.bind(("127.0.0.1", 0))
    backend.listen(8)
    backend.settimeout(60)
    url = f"http://127.0.0.1:{backend.getsockname()[1]}/v1/traces"
    here = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", HUNG_DRIVER, str(tmp_path / "spool"), url, here],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        connection, _ = backend.accept()  # the child's export is now waiting for an answer
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        killed_at = time.monotonic()
        assert wait_for(lambda: _gone(child), timeout=ORPHAN_GRACE + 5)
        took = time.monotonic() - killed_at
        connection.close()
    finally:
        parent.kill()
        parent.stdout.close()  # type: ignore[union-attr]
        backend.close()
        if not _gone(child):
            os.kill(child, signal.SIGKILL)
    assert took < ORPHAN_GRACE + 5
    spool = Spool(tmp_path / "spool", create=False)
    try:
        assert spool.backlog("hung")[0] == 3  # nothing was lost with the abandoned batch
    finally:
        spool.close()


LEAVING_DRIVER = r"""
import functools, sys
sys.path.insert(0, sys.argv[3])
from pipeline_helpers import make_records
from test_delivery_process import file_routes
from traceexport.pipeline import Pipeline, PipelineSettings
factory = functools.partial(file_routes, sys.argv[2])
pipe = Pipeline(sys.argv[1], factory(), PipelineSettings(delivery_process=True), route_factory=factory)
pipe.start()
pipe.accept(make_records(2))
assert pipe.wait_idle(60)  # the child is in its loop
print(pipe.delivery.pid, flush=True)
"""


def test_a_parent_leaving_without_stop_neither_hangs_nor_leaves_its_child(tmp_path: Path) -> None:
    """A program that starts a delivery process and ends without stop() exits promptly, and so does the child
    (multiprocessing's exit hook would otherwise wait forever for a child that ignores SIGTERM)."""
    here = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", LEAVING_DRIVER, str(tmp_path / "spool"), str(tmp_path / "out"),
                               here], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert parent.wait(30) == 0
        assert wait_for(lambda: _gone(child), timeout=15)
    finally:
        parent.kill()
        parent.wait(10)
        parent.stdout.close()  # type: ignore[union-attr]


def test_child_exits_when_the_parent_is_killed(tmp_path: Path) -> None:
    """A parent killed with SIGKILL does not leave its delivery process running."""
    here = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "spool"), str(tmp_path / "out"), here],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)

        def gone() -> bool:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return True
            try:
                with open(f"/proc/{child}/stat", encoding="ascii") as stat:  # a zombie awaiting init counts
                    return stat.read().split()[2] == "Z"
            except FileNotFoundError:
                return True

        assert wait_for(gone, timeout=15)
    finally:
        parent.kill()


def test_waking_the_child_never_waits_for_it(tmp_path: Path) -> None:
    """With the child frozen (SIGSTOP), 10,000 wake-ups and a flush toggle return at once: the parent never
    waits on anything the child holds or must answer (a kill -9 of either side cannot block the other)."""
    pipe, _ = _child_pipe(tmp_path, "out", poll_interval=0.05)
    with pipe:
        pipe.start()
        pipe.accept(make_records(2))
        assert pipe.wait_idle(60) and pipe.delivery is not None and pipe.delivery.pid is not None
        child = pipe.delivery.pid
        done = threading.Event()

        def ring() -> None:
            assert pipe.delivery is not None
            for _ in range(10_000):
                pipe.delivery.notify()
            pipe.delivery.set_flushing(True)
            pipe.delivery.set_flushing(False)
            done.set()

        os.kill(child, signal.SIGSTOP)
        try:
            threading.Thread(target=ring, daemon=True).start()
            returned = done.wait(10)
        finally:
            os.kill(child, signal.SIGCONT)
        assert returned, "notify() blocked while the child was frozen"
        pipe.accept(make_records(2, start=2))  # the child, thawed, still answers its doorbell
        assert pipe.wait_idle(60)


def test_a_doorbell_never_blocks_or_raises(tmp_path: Path) -> None:
    """Ringing a pipe nobody reads fills it and then reports False; ringing after the reader closed or after
    close() reports False too; nothing raises or waits."""
    reader, writer = multiprocessing.get_context("spawn").Pipe(duplex=False)
    bell = Doorbell(writer)
    rung = [bell.ring() for _ in range(200_000)]  # a Linux pipe holds 64 KiB
    assert rung[0] and not rung[-1]
    reader.close()
    assert bell.ring(STOP) is False
    bell.close()
    bell.close()
    assert bell.ring() is False


def test_log_settings_carry_level_format_and_secrets_but_never_show_them(tmp_path: Path) -> None:
    """The settings handed to a spawned process hold the registered secrets without printing them."""
    add_secrets(["unit-secret-value-42"])
    settings = current_settings()
    assert "unit-secret-value-42" in settings.secrets
    assert "unit-secret-value-42" not in repr(settings) and "unit-secret-value-42" not in str(settings)


def test_waiting_ends_when_the_delivery_process_dies(tmp_path: Path) -> None:
    """A child killed mid-run ends the wait at once (False) instead of after the whole timeout; the spool keeps
    what it owed."""
    import os
    import signal
    import time

    pipe, _ = _child_pipe(tmp_path, "out", poll_interval=600)
    with pipe:
        pipe.start()
        assert pipe.delivery is not None and pipe.delivery.pid is not None
        os.kill(pipe.delivery.pid, signal.SIGKILL)
        wait_until_dead = time.monotonic() + 10
        while pipe.delivery.alive() and time.monotonic() < wait_until_dead:
            time.sleep(0.05)
        pipe.accept(make_records(3))
        began = time.monotonic()
        assert pipe.wait_idle(60) is False
        assert time.monotonic() - began < 5
        assert pipe.pending()["file"] == 3
