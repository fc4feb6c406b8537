"""One delivery process per sink and spool: a newcomer waits for one a killed daemon left finishing a batch."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from traceexport.pipeline.sender_lock import SenderLock, sender_file


def test_a_second_sender_waits_for_the_first_and_names_its_pid(tmp_path: Path) -> None:
    """A sender lock on a sink another process (here: descriptor) holds waits, saying once which pid holds it,
    and is taken when that one lets go; a lock on another sink does not wait."""
    first = SenderLock(tmp_path, ["opik", "otlp"], lambda sink, pid: None)
    said: list[tuple[str, str]] = []
    taken = threading.Event()

    def second() -> None:
        SenderLock(tmp_path, ["otlp"], lambda sink, pid: said.append((sink, pid))).release()
        taken.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not taken.wait(0.3), "the second sender went ahead while the first held the sink"
    SenderLock(tmp_path, ["amplitude"], lambda sink, pid: said.append((sink, pid))).release()  # not held: no wait
    first.release()
    assert taken.wait(5)
    thread.join(5)
    assert said == [("otlp", str(os.getpid()))]
    assert sender_file(tmp_path, "otlp").read_text() == str(os.getpid())
