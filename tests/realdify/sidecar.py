"""``traceexport serve`` next to real Dify: a sidecar process delivering to the fakes, started from a config."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import TracebackType

import httpx

from tests.support.processes import python_env, start_process, stop_process, wait_until

BANNER = re.compile(r"listening on (http://127\.0\.0\.1:\d+)/v1/dify/traces")
TOKEN = "realdify-sidecar-token-0123456789"


class Sidecar:
    """One ``serve`` process: HTTP ingest on a free port, sinks from the fakes' environment, ``sources`` YAML."""

    def __init__(self, root: Path, env: dict[str, str], sources: str = "", sinks: str = "opik,langfuse,otlp,amplitude"):
        root.mkdir(parents=True, exist_ok=True)
        self.spool = root / "spool"
        self.log_path = root / "serve.log"
        config = root / "serve.yaml"
        config.write_text(f"spool:\n  dir: {self.spool}\nretry:\n  initial_backoff: 0.2\n  max_backoff: 1\n"
                          f"sources:\n  http:\n    token: ${{SIDECAR_TOKEN}}\n{sources}", encoding="utf-8")
        argv = [sys.executable, "-m", "traceexport", "serve", "--config", str(config), "--to", sinks,
                "--listen", "127.0.0.1:0"]
        self.proc = start_process(argv, cwd=root, stderr_path=self.log_path,
                                  env=python_env({**env, "SIDECAR_TOKEN": TOKEN, "TRACEEXPORT_LOG_LEVEL": "info"}))
        wait_until(lambda: BANNER.search(self.log()) is not None or self.proc.poll() is not None, timeout=60,
                   what="the sidecar's start-up line")
        match = BANNER.search(self.log())
        assert match, f"the sidecar did not start: {self.log()[-2000:]}"
        self.base = match.group(1)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def post_file(self, path: Path) -> httpx.Response:
        """POST one TaskData file to ``/v1/dify/traces`` with the bearer token."""
        return httpx.post(f"{self.base}/v1/dify/traces", content=path.read_bytes(), timeout=30,
                          headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})

    def __enter__(self) -> Sidecar:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        stop_process(self.proc, timeout=30)
