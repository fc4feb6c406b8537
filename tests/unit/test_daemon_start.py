"""The daemon's start-up failures: a clear ConfigError, at once, and nothing left running."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from traceexport.config import Config
from traceexport.daemon import Daemon
from traceexport.errors import ConfigError


def test_a_taken_console_port_fails_the_start_at_once_and_frees_the_ingest_port(tmp_path: Path) -> None:
    """With the console's port held by another socket, start raises 'cannot listen on' within seconds (it used
    to wait forever stopping an ingest server that never served), and the ingest port is released."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    config = Config.model_validate({
        "spool": {"dir": str(tmp_path / "spool"), "delivery_process": False},
        "sinks": {"file": {"type": "file", "path": str(tmp_path / "out")}},
        "sources": {"http": {"listen": "127.0.0.1:0", "shutdown_grace": "1s"}},
        "console": {"listen": f"127.0.0.1:{taken}"}})
    daemon = Daemon(config, env={})
    raised: list[BaseException] = []

    def start() -> None:
        try:
            daemon.start()
        except BaseException as exc:  # the test inspects whatever start raised
            raised.append(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(10)
    holder.close()
    assert not thread.is_alive(), "start did not return"
    assert len(raised) == 1 and isinstance(raised[0], ConfigError)
    assert f"cannot listen on 127.0.0.1:{taken}" in str(raised[0])
    assert daemon.http is None and daemon.pipeline is None and daemon.lock is None
