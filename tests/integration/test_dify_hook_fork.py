"""The Dify hook across ``fork`` (gunicorn workers, Celery prefork children): the child still exports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.dify_standin import activate, trace_info_objects
from tests.dify_standin.support import Sidecar, reset_hook, wait_for

from traceexport import dify
from traceexport.dify import runtime

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def clean_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TRACEEXPORT_SPOOL", str(tmp_path / "spool"))
    yield from reset_hook()


def _child(instance: object, write_fd: int) -> int:
    """Runs in the forked child: trace every sample, wait for delivery, report the slot used."""
    objects = trace_info_objects()
    for trace_info in objects:
        instance.trace(trace_info)  # type: ignore[attr-defined]
    if not dify.flush(20.0):
        return 3
    exporter = runtime.exporter_for(instance.settings)  # type: ignore[attr-defined]
    if exporter.pipeline is None or not exporter.pipeline.wait_idle(30.0):
        return 4
    os.write(write_fd, str(exporter.slot).encode())
    return 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available on this platform")
def test_forked_child_exports_through_its_own_spool_slot() -> None:
    """A child forked after the exporter started delivers its records from a slot of its own; the parent goes on."""
    with Sidecar() as sidecar, activate("legacy"):
        dify.install()
        import core.ops.ops_trace_manager as manager

        entry = manager.provider_config_map["traceexport"]
        instance = entry["trace_instance"](entry["config_class"](mode="forward", endpoint=sidecar.url))
        objects = trace_info_objects()
        instance.trace(objects[0])
        assert wait_for(lambda: len(sidecar.records) == 1)
        parent_slot = runtime.exporter_for(instance.settings).slot

        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child process
            code = 5
            try:
                os.close(read_fd)
                code = _child(instance, write_fd)
            finally:
                os._exit(code)
        os.close(write_fd)
        _, status = os.waitpid(pid, 0)
        child_slot = os.read(read_fd, 4096).decode()
        os.close(read_fd)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_slot and child_slot != str(parent_slot)

        instance.trace(objects[1])  # the parent's exporter is unharmed by the fork
        assert wait_for(lambda: len(sidecar.records) == 9)
    assert {r.type for r in sidecar.records[1:8]} == {
        "workflow", "message", "tool", "dataset_retrieval", "moderation", "suggested_question", "generate_name"}
