"""The daemon's start-up failures: a clear ConfigError, at once, and nothing left running."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

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


def test_a_file_it_may_not_open_is_named_not_blamed_on_the_listener(tmp_path: Path) -> None:
    """`serve` on a spool directory of another user fails opening its lock file: the one line names that file
    (it said 'cannot listen on 127.0.0.1:4319: Permission denied'); a port in use still names the listener."""
    import errno

    from traceexport.daemon import start_problem

    config = Config.model_validate({"spool": {"dir": str(tmp_path)},
                                    "sources": {"http": {"listen": "127.0.0.1:4319"}}})
    lock = tmp_path / "daemon.lock"
    denied = start_problem(PermissionError(errno.EACCES, "Permission denied", str(lock)), config)
    assert denied.render() == f"cannot start: {lock}: Permission denied"
    in_use = start_problem(OSError(errno.EADDRINUSE, "Address already in use"), config)
    assert in_use.render() == ("cannot start: sources.http.listen: cannot listen on 127.0.0.1:4319: "
                               "Address already in use")
    other = start_problem(OSError(errno.EMFILE, "Too many open files"), config)
    assert other.render() == "cannot start: Too many open files"


def test_it_does_not_start_while_a_command_delivers_to_one_of_its_sinks(tmp_path: Path) -> None:
    """A command delivering to a sink by itself (export, replay, backfill with no daemon) holds that sink's turn: a
    daemon started then would send what the command sends, each record twice, so it refuses with one line naming
    the command's pid, and starts once the turn is free (holding it, so a later command waits)."""
    from traceexport.pipeline.turns import DeliveryTurn

    spool = tmp_path / "spool"
    spool.mkdir()
    config = Config.model_validate({
        "spool": {"dir": str(spool), "delivery_process": False},
        "sinks": {"out": {"type": "file", "path": str(tmp_path / "out")}}, "console": "off"})
    command = DeliveryTurn(spool, ["out"], say=lambda line: None)
    daemon = Daemon(config, env={})
    try:
        daemon.start()
    except ConfigError as exc:
        assert exc.render() == (f"cannot start: spool.dir: pid {os.getpid()} (a traceexport command) is delivering "
                                f"to out from spool {spool}: let it finish or stop it, then start again")
    else:
        raise AssertionError("the daemon started beside a command delivering to its sink")
    assert daemon.pipeline is None and daemon.lock is None and daemon.turns is None
    command.release()
    daemon.start()
    try:
        said: list[str] = []
        waiting = threading.Thread(target=lambda: DeliveryTurn(spool, ["out"], say=said.append).release(),
                                   daemon=True)
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and said and said[0].startswith(f"waiting for pid {os.getpid()}")
    finally:
        daemon.stop()
    waiting.join(10)
    assert not waiting.is_alive()


def test_a_spool_full_of_records_for_a_sink_no_longer_configured_says_so_in_readiness(tmp_path: Path) -> None:
    """A spool filled with records still owed to a sink the config dropped is not "waiting for delivery to make
    room": nothing here delivers them. /readyz names that sink, how many it is owed, and what frees them."""
    from traceexport.errors import SpoolFullError
    from traceexport.pipeline import PipelineSettings
    from traceexport.pipeline.spool import Spool, SpoolRow

    spool = Spool(tmp_path / "spool", PipelineSettings(max_bytes=1024**2, fsync=False))
    bit = spool.register_sinks(["gone"])["gone"]
    stored = 0
    try:
        while True:
            spool.accept([SpoolRow(1 << bit, f"k{stored}", "message", None, None, "x" * 20_000)])
            stored += 1
    except SpoolFullError:
        pass
    spool.close()
    config = Config.model_validate({
        "spool": {"dir": str(tmp_path / "spool"), "delivery_process": False, "max_bytes": 1024**2},
        "sinks": {"file": {"type": "file", "path": str(tmp_path / "out")}},
        "sources": {"http": {"listen": "127.0.0.1:0", "shutdown_grace": "1s"}}, "console": None})
    daemon = Daemon(config, env={})
    daemon.start()
    try:
        assert daemon.pipeline is not None
        with pytest.raises(SpoolFullError):  # a post refused: what readiness then reports
            daemon.pipeline.spool.accept([SpoolRow(1, "more", "message", None, None, "y" * 20_000)])
        reason = daemon.not_ready_reason()
    finally:
        daemon.stop()
    assert reason is not None and "is full" in reason
    assert f"gone ({stored})" in reason and "dlq retire" in reason and "\n" not in reason, reason
