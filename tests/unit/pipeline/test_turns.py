"""Turns at delivering: two commands on one spool never deliver to one sink at once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipeline_helpers import SAMPLES
from tests.support.processes import python_env

from traceexport.pipeline.turns import DeliveryTurn, turn_file


def test_a_second_turn_waits_for_the_first_and_says_for_whom(tmp_path: Path) -> None:
    """A turn on a sink another holds waits, saying once which pid delivers, and starts when it is released;
    a turn on another sink does not wait."""
    first = DeliveryTurn(tmp_path, ["opik", "file"], lambda text: None)
    said: list[str] = []
    taken = threading.Event()

    def second() -> None:
        DeliveryTurn(tmp_path, ["file"], said.append).release()
        taken.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not taken.wait(0.3)
    assert said == [f"waiting for pid {os.getpid()}, which is delivering to file from spool {tmp_path}: one "
                    "command at a time delivers to a sink"]
    DeliveryTurn(tmp_path, ["amplitude"], said.append).release()  # another sink: no waiting
    first.release()
    assert taken.wait(10)
    thread.join(10)
    assert turn_file(tmp_path, "file").read_text() == str(os.getpid())


def test_export_waits_while_another_command_delivers_to_its_sink(tmp_path: Path) -> None:
    """`export` on a spool from which another command delivers to the same sink waits for its turn (two
    deliverers sent each pending record twice: 20,000 records were delivered 39,500 times), then delivers."""
    spool = tmp_path / "spool"
    spool.mkdir()
    held = DeliveryTurn(spool, ["file"], lambda text: None)
    env = python_env({"TRACEEXPORT_FILE_SINK_DIR": str(tmp_path / "out")})
    proc = subprocess.Popen([sys.executable, "-m", "traceexport", "export", "--to", "file", "--spool", str(spool),
                             str(SAMPLES / "07-tool-call.json")], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith(f"waiting for pid {os.getpid()}, which is delivering to file from spool {spool}")
        time.sleep(0.3)
        assert proc.poll() is None and not (tmp_path / "out").exists()
    finally:
        held.release()
    assert proc.wait(60) == 0
    assert "file: 1 record delivered" in proc.stderr.read()
    assert (tmp_path / "out" / "otlp.jsonl").read_text().strip()
