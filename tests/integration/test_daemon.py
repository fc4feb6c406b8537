"""``python -m traceexport serve`` as a real process: ingest, refusals, back-pressure, SIGTERM and resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import SAMPLE_FILES
from tests.fakes.otlp_server import OtlpFake
from tests.support.daemon import BANNER, TOKEN, Served
from tests.support.processes import python_env, wait_until

from traceexport.pipeline.spool import Spool

pytestmark = pytest.mark.integration

def config(spool: Path, sink: str, *, spool_extra: str = "") -> str:
    return (f"spool:\n  dir: {spool}\n{spool_extra}retry:\n  initial_backoff: 0.2\n  max_backoff: 0.5\n"
            f"sources:\n  http:\n    token: ${{TEST_TOKEN}}\n    max_body_bytes: 20000\n"
            f"sinks:\n{sink}")


@pytest.fixture
def otlp() -> Iterator[OtlpFake]:
    fake = OtlpFake().start()
    yield fake
    fake.stop()


def otlp_sink(fake: OtlpFake) -> str:
    return f"  out:\n    type: otlp\n    traces_endpoint: {fake.traces_url}\n"


def sample(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_posted_samples_reach_the_backend_and_bad_requests_are_refused(tmp_path: Path, otlp: OtlpFake) -> None:
    """Every sample posted is delivered; 401, 413, 400 (bad JSON, unknown type) and 415 answer as documented."""
    served = Served(tmp_path, config(tmp_path / "spool", otlp_sink(otlp)))
    try:
        for path in SAMPLE_FILES:
            response = served.post(sample(path))
            assert response.status_code == 202, (path.name, response.text)
        wait_until(lambda: served.metric("traceexport_records_exported_total", "out") == len(SAMPLE_FILES),
                   timeout=60, what="all samples exported")
        assert len(otlp.spans) >= len(SAMPLE_FILES)

        unauthorised = served.post(sample(SAMPLE_FILES[0]), token=None)
        assert unauthorised.status_code == 401 and "WWW-Authenticate" in unauthorised.headers
        assert served.post(b"[" + b" " * 30000 + b"]").status_code == 413
        bad_json = served.post(b'{"app_id": ')
        assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["rejected"][0]["reason"]
        assert served.post(b"x", content_type="text/plain").status_code == 415
        mixed = served.post([{"app_id": "a", "trace_info_type": "MadeUpTraceInfo", "trace_info": {}},
                             sample(SAMPLE_FILES[0])])
        assert mixed.status_code == 400 and mixed.json()["accepted"] == 1
        assert "MadeUpTraceInfo" in mixed.json()["rejected"][0]["reason"]
        assert httpx.get(f"{served.base}/readyz").status_code == 200
    finally:
        assert served.stop() == 0
    assert TOKEN not in served.log() and "Traceback" not in served.log()


def test_full_spool_answers_503_with_retry_after(tmp_path: Path, otlp: OtlpFake) -> None:
    """With the smallest spool (1 MiB) and the backend down, the daemon pushes back with 503 and Retry-After."""
    otlp.fail_next(10**6, 503)
    served = Served(tmp_path, config(tmp_path / "spool", otlp_sink(otlp), spool_extra="  max_bytes: 1MiB\n"))
    lines = "\n".join(json.dumps(sample(SAMPLE_FILES[0])) for _ in range(2)).encode()  # under max_body_bytes
    try:
        statuses = []
        for _ in range(400):  # 2 records of a few KB per post: full long before 400 posts
            response = served.post(lines, content_type="application/x-ndjson")
            statuses.append(response.status_code)
            if response.status_code != 202:
                break
        assert statuses[0] == 202 and statuses[-1] == 503, statuses
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        assert served.stop() == 0


def test_sigterm_keeps_undelivered_records_and_restart_delivers_them(tmp_path: Path, otlp: OtlpFake) -> None:
    """Records the backend did not take before SIGTERM stay in the spool and go out after a restart."""
    otlp.fail_next(10_000, 503)
    text = config(tmp_path / "spool", otlp_sink(otlp))
    first = Served(tmp_path, text, "first")
    try:
        for path in SAMPLE_FILES[:3]:
            assert first.post(sample(path)).status_code == 202
        wait_until(lambda: len(otlp.requests) > 0, timeout=30, what="a delivery attempt")
    finally:
        assert first.stop() == 0
    assert "event=serve.stopped pending_in_spool=3" in first.log()
    assert not otlp.spans

    otlp.reset()
    second = Served(tmp_path, text, "second")
    try:
        wait_until(lambda: second.metric("traceexport_records_exported_total", "out") == 3, timeout=60,
                   what="the spooled records delivered after restart")
        assert otlp.spans and second.metric("traceexport_queue_depth", "out") == 0
    finally:
        assert second.stop() == 0


def test_public_listen_without_token_refuses_to_start(tmp_path: Path) -> None:
    """Listening beyond loopback without a token exits 2 with a message naming the fix."""
    result = subprocess.run([sys.executable, "-m", "traceexport", "serve", "--listen", "0.0.0.0:0"],
                            cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "TRACEEXPORT_TOKEN" in result.stderr and "Traceback" not in result.stderr


def test_delivery_in_a_second_process_delivers_and_stops_cleanly(tmp_path: Path, otlp: OtlpFake) -> None:
    """With spool.delivery_process on, a child process delivers what the daemon accepts; SIGTERM ends both."""
    served = Served(tmp_path, config(tmp_path / "spool", otlp_sink(otlp),
                                     spool_extra="  delivery_process: true\n"))
    try:
        for path in SAMPLE_FILES:
            assert served.post(sample(path)).status_code == 202
        wait_until(lambda: served.metric("traceexport_records_exported_total", "out") == len(SAMPLE_FILES),
                   timeout=60, what="all samples exported by the delivery process")
        assert len(otlp.spans) == len(SAMPLE_FILES) + 1
        assert httpx.get(f"{served.base}/readyz").status_code == 200
    finally:
        assert served.stop() == 0
    assert "Traceback" not in served.log()


def test_start_warns_about_records_owed_to_a_sink_no_longer_configured(tmp_path: Path, otlp: OtlpFake) -> None:
    """A spool still holding records for a sink the config dropped is named in a start-up warning."""
    from traceexport.pipeline.spool import SpoolRow
    from traceexport.records import record_from_obj

    spool = Spool(tmp_path / "spool")
    bit = spool.register_sinks(["retired-sink"])["retired-sink"]
    record = record_from_obj(sample(SAMPLE_FILES[0]))
    spool.accept([SpoolRow(1 << bit, record.key, record.type, record.app_id, record.trace_key,
                           record.envelope_text())])
    spool.close()
    served = Served(tmp_path, config(tmp_path / "spool", otlp_sink(otlp)))
    try:
        wait_until(lambda: "serve.started" in served.log(), timeout=30, what="the daemon started")
    finally:
        assert served.stop() == 0
    line = next(line for line in served.log().splitlines() if "serve.sink_not_configured" in line)
    assert "sink=retired-sink undelivered=1" in line
    assert f"traceexport dlq retire --spool {tmp_path / 'spool'} retired-sink" in line  # pasteable as is


def _message(i: int) -> dict[str, Any]:
    """The sample chat message with its own message id (so its spool key is its own)."""
    envelope = sample(SAMPLE_FILES_BY_NAME["05-message-chat.json"])
    envelope["trace_info"]["message_id"] = f"00000000-0000-4000-8000-{i:012d}"
    return envelope


SAMPLE_FILES_BY_NAME = {p.name: p for p in SAMPLE_FILES}


@pytest.mark.parametrize("delivery_process", ["true", "false"])
def test_sigterm_under_load_exits_within_grace_and_loses_nothing(tmp_path: Path, delivery_process: str) -> None:
    """SIGTERM while posts flow, a client stalls mid-request and the backend never answers: the daemon (delivering
    from a second process or its own threads) exits within shutdown_grace + 3 s and every record it answered
    202 for is in the spool."""
    backend = socket.socket()  # accepts connections (kernel backlog) and never answers: a hung backend
    backend.bind(("127.0.0.1", 0))
    backend.listen(64)
    hung = f"http://127.0.0.1:{backend.getsockname()[1]}/v1/traces"
    grace = 2.0
    text = (f"spool:\n  dir: {tmp_path / 'spool'}\n  delivery_process: {delivery_process}\n"
            f"sources:\n  http:\n    token: ${{TEST_TOKEN}}\n    shutdown_grace: {grace}s\n"
            f"sinks:\n  out:\n    type: otlp\n    traces_endpoint: {hung}\n    timeout: 60\n")
    served = Served(tmp_path, text)
    accepted: list[str] = []
    stop = threading.Event()
    counter = iter(range(10**9))
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                with lock:
                    i = next(counter)
                try:
                    response = client.post(f"{served.base}/v1/dify/traces", json=_message(i),
                                           headers={"Authorization": f"Bearer {TOKEN}"})
                except httpx.HTTPError:
                    continue  # the daemon has gone: nothing was accepted for this post
                if response.status_code == 202:
                    with lock:
                        accepted.append(f"00000000-0000-4000-8000-{i:012d}")

    stalled = socket.create_connection(("127.0.0.1", int(served.base.rsplit(":", 1)[1])))
    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(accepted) >= 50, timeout=60, what="posts accepted under load")
        stalled.sendall(f"POST /v1/dify/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                        "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{".encode())
        started = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(grace + 3)  # raises TimeoutExpired past the bound
        took = time.monotonic() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(35)
        stalled.close()
        served.stop()
        backend.close()
    assert served.proc.returncode == 0, served.log()
    assert took <= grace + 3
    assert "Traceback" not in served.log()
    spool = Spool(tmp_path / "spool", create=False)
    try:
        stored = {row[0] for row in spool.conn().execute("SELECT key FROM records")}
    finally:
        spool.close()
    missing = [key for key in accepted if not any(key in s for s in stored)]
    assert not missing, f"{len(missing)} of {len(accepted)} accepted records are not in the spool"


def test_one_daemon_per_spool_and_dlq_replay_leaves_records_to_it(tmp_path: Path, otlp: OtlpFake) -> None:
    """A running daemon holds its spool: a second serve on it refuses to start, and `dlq replay` hands the
    dead letters to the running one, which delivers them."""
    otlp.fail_next(1, 400)  # the first record is refused for good: one dead letter
    text = config(tmp_path / "spool", otlp_sink(otlp))
    served = Served(tmp_path, text)
    try:
        assert served.post(sample(SAMPLE_FILES[0])).status_code == 202
        wait_until(lambda: served.metric("traceexport_records_dead_lettered_total", "out") == 1, timeout=60,
                   what="the record dead-lettered")
        second = subprocess.run([sys.executable, "-m", "traceexport", "serve", "--config", str(served.config_path),
                                 "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60,
                                cwd=tmp_path, env=python_env({"TEST_TOKEN": TOKEN}))
        assert second.returncode != 0
        assert f"the daemon (pid {served.proc.pid}) is already delivering from spool" in second.stderr
        replay = subprocess.run([sys.executable, "-m", "traceexport", "dlq", "replay", "--spool",
                                 str(tmp_path / "spool")], capture_output=True, text=True, timeout=60,
                                cwd=tmp_path, env=python_env())
        assert replay.returncode == 0, replay.stderr
        assert f"the daemon (pid {served.proc.pid}) is delivering from spool" in replay.stdout
        wait_until(lambda: served.metric("traceexport_records_exported_total", "out") == 1, timeout=60,
                   what="the replayed record delivered by the daemon")
        backfill = subprocess.run([sys.executable, "-m", "traceexport", "replay", str(SAMPLE_FILES[1]), "--config",
                                   str(served.config_path), "--timeout", "60", "--no-progress"],
                                  capture_output=True, text=True, timeout=120, cwd=tmp_path,
                                  env=python_env({"TEST_TOKEN": TOKEN}))
        assert backfill.returncode == 0, backfill.stderr
        assert f"the daemon (pid {served.proc.pid}) is delivering from spool" in backfill.stderr
        assert served.metric("traceexport_records_exported_total", "out") == 2
    finally:
        assert served.stop() == 0
    status = subprocess.run([sys.executable, "-m", "traceexport", "status", "--spool", str(tmp_path / "spool")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=python_env())
    assert status.returncode == 0 and "out" in status.stdout


def _serve_in_its_own_group(tmp_path: Path, *, console: str,
                            prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], Path]:
    """``serve`` as the leader of a new process group (as a terminal or systemd starts it), file sink, its log
    in ``serve.log``; returned once its start-up line is there."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "traceexport", "serve", "--listen", "127.0.0.1:0",
                                 "--console", console, "--spool", str(tmp_path / "spool")],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                stderr=log_file, env=python_env({"TRACEEXPORT_FILE_SINK_DIR": str(tmp_path / "out")}),
                                start_new_session=True)
    try:
        wait_until(lambda: BANNER.search(log_path.read_text(errors="replace")) is not None, timeout=60,
                   what="the daemon's start-up line")
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc, log_path


def _stopped_cleanly(proc: subprocess.Popen[bytes], log_path: Path) -> str:
    """The log of a daemon that exited 0 within its grace period, stopped rather than forced out."""
    assert proc.wait(timeout=13) == 0
    log = log_path.read_text(errors="replace")
    assert "event=serve.stopped" in log and "forced_exit" not in log, log[-1500:]
    return log


def test_sigterm_to_the_whole_process_group_stops_cleanly(tmp_path: Path) -> None:
    """SIGTERM sent to the process and then its group (GNU timeout, systemd) stops the daemon and its delivery
    process cleanly within the grace period, not with a forced exit or a hang."""
    proc, log_path = _serve_in_its_own_group(tmp_path, console="127.0.0.1:0")
    try:
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.2)  # the stimulus, not a wait: the group's copy arrives as a separate signal
        os.killpg(proc.pid, signal.SIGTERM)
        _stopped_cleanly(proc, log_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_sighup_stops_cleanly_and_says_the_config_is_read_at_start(tmp_path: Path) -> None:
    """SIGHUP to the process group (a closed terminal, or `kill -HUP` meant as a reload) stops the daemon and
    its delivery process as SIGTERM does (it killed the daemon outright, with no line), saying that the
    config is read only at start."""
    proc, log_path = _serve_in_its_own_group(tmp_path, console="off")
    try:
        os.killpg(proc.pid, signal.SIGHUP)
        log = _stopped_cleanly(proc, log_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stopping = next(line for line in log.splitlines() if "event=serve.stopping" in line)
    assert "signal=SIGHUP" in stopping and "read only at start" in stopping, stopping


def test_a_daemon_started_with_sighup_ignored_keeps_running_through_one(tmp_path: Path) -> None:
    """Under nohup (SIGHUP ignored when serve starts) a hang-up leaves the daemon running, as it always did;
    SIGTERM then stops it."""
    proc, log_path = _serve_in_its_own_group(tmp_path, console="off", prefix=("nohup",))
    try:
        match = BANNER.search(log_path.read_text(errors="replace"))
        assert match is not None
        os.killpg(proc.pid, signal.SIGHUP)
        time.sleep(1.5)  # the stimulus's time to act, were it not ignored
        assert proc.poll() is None and httpx.get(f"{match.group(1)}/healthz", timeout=10).status_code == 200
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=13) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "event=serve.stopped" in log_path.read_text(errors="replace")
