"""Start and stop subprocesses in tests with bounded waits; every process is ended by its own id.

Usage::

    proc = start_process([sys.executable, "-m", "tests.fakes.opik_server", "--port", "0"])
    url = read_line(proc, timeout=10)          # first stdout line, or TimeoutError
    wait_until(lambda: fake_has_requests(), timeout=10, what="first request")
    kill_hard(proc)                            # SIGKILL by pid, then reap
    stop_process(proc, timeout=5)              # SIGTERM, then SIGKILL after timeout; idempotent
    code, peak, errors = run_measuring_peak_rss([sys.executable, "-m", "traceexport", "map", path])
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment with the repository root on PYTHONPATH (so ``tests.*`` imports work)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def start_process(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                  stderr_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout piped; stderr goes to ``stderr_path`` (or is piped)."""
    stderr = open(stderr_path, "wb") if stderr_path is not None else subprocess.PIPE  # noqa: SIM115
    try:
        return subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else python_env(), cwd=cwd or REPO_ROOT)
    finally:
        if stderr_path is not None:
            stderr.close()  # type: ignore[union-attr]


def python_process(args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start ``python args...`` with the test environment (see :func:`start_process`)."""
    return start_process([sys.executable, *args], **kwargs)  # type: ignore[arg-type]


def read_line(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> str:
    """The next line of ``proc``'s stdout; TimeoutError if none arrives within ``timeout`` seconds."""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            raise TimeoutError(f"no output from pid {proc.pid} within {timeout}s")
        line = proc.stdout.readline()
    finally:
        selector.close()
    if not line:
        err = ""
        if proc.stderr is not None and proc.wait(5) is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"pid {proc.pid} closed its stdout (exit code {proc.poll()}): {err}")
    return line.decode().strip()


def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> None:
    """Poll ``predicate`` until true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def kill_hard(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGKILL ``proc`` by its pid and reap it; returns its exit status."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """SIGTERM ``proc``, SIGKILL it if it is still alive after ``timeout``; idempotent; returns the status."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_hard(proc)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.wait(timeout)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, str, str]:
    """Wait for ``proc`` to exit (killing it after ``timeout``); its status, stdout and stderr text."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_hard(proc)
        out, err = proc.communicate(timeout=5)
        raise AssertionError(f"pid {proc.pid} did not exit within {timeout}s; stderr: {err!r}") from None
    return proc.returncode, (out or b"").decode(), (err or b"").decode()


# Forks the command from a small process and reports its exit code and peak RSS (ru_maxrss, KiB) on a pipe.
_PEAK_RSS_LAUNCHER = """
import os, subprocess, sys
report = int(sys.argv[1])
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
os.write(report, f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}".encode())
"""


def run_measuring_peak_rss(argv: Sequence[str], *, stdout: int | Path = subprocess.DEVNULL,
                           env: Mapping[str, str] | None = None) -> tuple[int, int, str]:
    """Run ``argv`` to its end: ``(exit code, peak RSS in bytes of it and its workers, stderr)``.

    Linux carries a parent's peak RSS into a child across fork+exec (``ru_maxrss`` starts at the parent's
    footprint), so a child forked from a grown pytest process reports pytest's peak. A small launcher
    process forks the command instead and reports the command's own ``ru_maxrss`` from ``wait4``.
    """
    report_read, report_write = os.pipe()
    with open(os.devnull, "rb") as stdin:
        out = stdout if isinstance(stdout, int) else stdout.open("wb")
        try:
            launcher = subprocess.Popen(
                [sys.executable, "-c", _PEAK_RSS_LAUNCHER, str(report_write), *argv], stdin=stdin, stdout=out,
                stderr=subprocess.PIPE, pass_fds=(report_write,), env=dict(env) if env is not None else python_env())
            os.close(report_write)
            _, errors = launcher.communicate()
            report = os.read(report_read, 100).decode()
        finally:
            os.close(report_read)
            if not isinstance(out, int):
                out.close()
    if launcher.returncode != 0 or not report:
        raise RuntimeError(f"peak-RSS launcher failed ({launcher.returncode}): {errors.decode(errors='replace')}")
    code, peak_kib = (int(field) for field in report.split())
    return code, peak_kib * 1024, errors.decode("utf-8", "replace")


def delivery_children(parent: int) -> list[int]:
    """Pids of ``parent``'s multiprocessing children that run the delivery (not the resource tracker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmd:
                cmdline = cmd.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(entry))
    return found
