"""``traceexport serve`` next to real Dify: a sidecar delivering to the fakes, with Dify's sources."""

from __future__ import annotations

from pathlib import Path

from tests.support.daemon import TOKEN, Served

ALL_SINKS = "opik,langfuse,otlp,amplitude"


def sidecar(root: Path, env: dict[str, str], sources: str = "", sinks: str = ALL_SINKS, port: int = 0) -> Served:
    """A started ``serve``: HTTP ingest with the test token (on ``port``, else any free one), sinks from the fakes'
    environment, ``sources`` YAML."""
    config = (f"spool:\n  dir: {root / 'spool'}\nretry:\n  initial_backoff: 0.2\n  max_backoff: 1\n"
              f"sources:\n  http:\n    token: ${{TEST_TOKEN}}\n{sources}")
    return Served(root, config, "sidecar", args=["--to", sinks, "--listen", f"127.0.0.1:{port}"], env=env)


__all__ = ["TOKEN", "sidecar"]
