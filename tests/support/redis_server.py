"""A throwaway ``redis-server`` for integration tests: 127.0.0.1, a free port, no persistence.

Usage::

    with RedisServer.start(tmp_path) as redis:      # pytest.skip() first if redis_server_binary() is None
        redis.url(db=1)                              # "redis://127.0.0.1:<port>/1"
        redis.client(db=1).llen("ops_trace")
    # leaving the block stops the server by its process id
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.net import free_port

START_TIMEOUT = 10.0


def redis_server_binary() -> str | None:
    """The path of ``redis-server``, or None when it is not installed."""
    return shutil.which("redis-server")


class RedisServer:
    """One running redis-server process; ``stop()`` is idempotent."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, workdir: Path) -> None:
        self.process = process
        self.port = port
        self.workdir = workdir

    @classmethod
    def start(cls, workdir: Path, *, port: int | None = None, attempts: int = 3) -> RedisServer:
        """Start redis-server in ``workdir`` (on ``port``, else a free one); wait (bounded) for PING."""
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        workdir.mkdir(parents=True, exist_ok=True)
        last_error = "not started"
        for _ in range(attempts):  # a free port can be taken between probing and binding
            chosen = port or free_port()
            args = [binary, "--bind", "127.0.0.1", "--port", str(chosen), "--save", "", "--appendonly", "no"]
            args += ["--dir", str(workdir), "--protected-mode", "yes", "--loglevel", "warning"]
            log = (workdir / f"redis-{chosen}.log").open("wb")
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
            log.close()
            server = cls(process, chosen, workdir)
            if server._wait_ready(START_TIMEOUT):
                return server
            server.stop()
            last_error = (workdir / f"redis-{chosen}.log").read_text(errors="replace")[-500:]
        raise RuntimeError(f"redis-server did not start: {last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if self.client().ping():
                    return True
            except Exception:  # not listening yet
                pass
            time.sleep(0.05)  # polling interval while waiting for the server, bounded by the deadline
        return False

    def url(self, db: int = 0) -> str:
        """``redis://127.0.0.1:<port>/<db>``."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> Any:
        """A redis-py client on ``db``."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5)

    def stop(self) -> None:
        """Terminate the server by its pid (kill after 5 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
