"""The Dify hook in a gevent-patched process (Dify's API runs gunicorn with gevent workers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.processes import python_env

pytestmark = pytest.mark.integration

SCRIPT = r"""
from gevent import monkey
monkey.patch_all()

import sys, time
import gevent
from tests.dify_standin import activate, trace_info_objects
from traceexport import dify
from traceexport.dify import runtime

ticks = []
ticker = gevent.spawn(lambda: [ticks.append(1) or gevent.sleep(0.005) for _ in range(2000)])
with activate("legacy"):
    dify.install()
    import core.ops.ops_trace_manager as manager
    entry = manager.provider_config_map["traceexport"]
    instance = entry["trace_instance"](entry["config_class"](mode="in_process", sinks="file"))
    before = len(ticks)
    for trace_info in trace_info_objects():
        instance.trace(trace_info)
    gevent.sleep(0.05)
    if not dify.flush(30.0):
        sys.exit(3)
    exporter = runtime.exporter_for(instance.settings)
    if exporter.pipeline is None or not exporter.pipeline.wait_idle(30.0):
        sys.exit(4)
    if len(ticks) <= before:
        sys.exit(5)  # the hub never ran while we traced and exported: something blocked it
    print(dify.stats())
ticker.kill()
runtime.shutdown_all(5.0)
"""


def test_hook_exports_under_gevent_without_blocking_the_hub(tmp_path: Path) -> None:
    """Under gevent monkey-patching, trace() of all seven types exports via the file sink; the hub keeps running."""
    pytest.importorskip("gevent", reason="gevent is not installed: pip install -e '.[test]'")
    out = tmp_path / "out"
    env = python_env({"TRACEEXPORT_SPOOL": str(tmp_path / "spool"), "TRACEEXPORT_FILE_SINK_DIR": str(out),
                      "TRACEEXPORT_TO": "file"})
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for path in out.glob("*.jsonl") for line in path.read_text("utf-8").splitlines()]
    assert len(lines) == 8  # seven records; the message record is a root span plus an LLM span
