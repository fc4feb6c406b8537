"""Arize Phoenix as a real, offline OTLP backend for integration tests (../shared/contracts/README.md §5).

:func:`phoenix_server` starts ``phoenix serve`` as a subprocess bound to 127.0.0.1 on free ports, with a
throw-away SQLite working directory, telemetry off and no external resources; it waits (bounded) for
``GET /healthz`` and stops the process by its pid (terminate, then kill). :meth:`PhoenixServer.wait_for_spans`
polls ``GET /v1/projects/{project}/spans`` until the expected number of spans has been stored, since
Phoenix inserts spans asynchronously. Tests skip with a visible reason when ``phoenix`` is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.net import free_port
from tests.support.processes import stop_process

START_TIMEOUT = 240.0  # about 10 s on an idle machine, but far slower on a busy shared one
POLL_INTERVAL = 0.25


def require_phoenix() -> None:
    """Skip the calling test when arize-phoenix is not installed."""
    spec = importlib.util.find_spec("phoenix")  # only finds it: importing phoenix here would load all of Phoenix
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not any((Path(location) / "server" / "main.py").is_file() for location in locations):
        pytest.skip("arize-phoenix is not installed (pip install 'traceexport[test]')")


@dataclass
class PhoenixServer:
    """A running Phoenix: its base URL (HTTP and OTLP/HTTP), gRPC port, process and log file."""

    url: str
    grpc_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def traces_endpoint(self) -> str:
        """The OTLP/HTTP traces URL (protobuf only)."""
        return self.url + "/v1/traces"

    def log_tail(self, lines: int = 30) -> str:
        """The end of Phoenix's combined output, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def spans(self, project: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Every span stored in ``project`` (one page of up to ``limit``); [] while the project does not exist."""
        answer = httpx.get(f"{self.url}/v1/projects/{project}/spans", params={"limit": limit}, timeout=10)
        if answer.status_code == 404:
            return []
        answer.raise_for_status()
        data: list[dict[str, Any]] = answer.json()["data"]
        return data

    def wait_for_spans(self, project: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll until ``project`` holds at least ``count`` spans or ``timeout`` passes; returns what is there."""
        deadline = time.monotonic() + timeout
        spans = self.spans(project)
        while len(spans) < count and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
            spans = self.spans(project)
        return spans

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the process by its pid, then kill it if it does not exit within ``timeout``; idempotent."""
        stop_process(self.process, timeout=timeout)


def _wait_healthy(server: PhoenixServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"phoenix exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                return
        time.sleep(POLL_INTERVAL)
    raise RuntimeError(f"phoenix not healthy after {timeout:.0f} s:\n{server.log_tail()}")


@contextlib.contextmanager
def phoenix_server(workdir: Path, timeout: float = START_TIMEOUT) -> Iterator[PhoenixServer]:
    """Run ``phoenix serve`` on 127.0.0.1 with random ports and ``workdir`` as its working directory."""
    require_phoenix()
    port, grpc_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_WORKING_DIR": str(workdir),
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
    }
    log_path = workdir / "phoenix.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "phoenix.server.main", "serve"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = PhoenixServer(f"http://127.0.0.1:{port}", grpc_port, process, log_path)
    try:
        _wait_healthy(server, timeout)
        yield server
    finally:
        server.stop()
