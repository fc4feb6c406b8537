"""A loopback server that answers with whatever bytes a test scripts: the backends no fake imitates.

The contract fakes (``_server.py``) answer as well-formed HTTP; this one answers as a broken proxy or a
hostile host might: a body that never ends, a redirect elsewhere, a connection closed mid-answer.
Each request on a connection is answered by the next :data:`Answer` queued with :meth:`RawServer.answer`
(the last one repeats); an answer returns whether the connection may serve another request.

    with RawServer() as server:
        server.answer(endless_body(502))
        ...                       # server.url, server.requests (request lines), server.bytes_sent
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Self

Answer = Callable[[socket.socket], bool]  # writes an answer; True: the connection may serve another request


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    """A complete answer with ``Content-Length``; the connection stays open."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    data = f"HTTP/1.1 {status} Scripted\r\n{lines}Content-Length: {len(body)}\r\n\r\n".encode() + body

    def send(conn: socket.socket) -> bool:
        conn.sendall(data)
        return True

    return send


class RawServer:
    """Threaded raw-socket server on 127.0.0.1 (a free port); stop it with :meth:`stop` or a ``with`` block."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: list[str] = []  # request lines, in arrival order
        self.bytes_sent = 0  # by endless answers, which count what they wrote
        self._answers: deque[Answer] = deque()
        self._last: Answer = reply(204)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="raw-server", daemon=True)
        self._thread.start()

    def answer(self, *answers: Answer) -> None:
        """Queue answers for the next requests; the last one queued answers every request after them."""
        with self._lock:
            self._answers.extend(answers)

    def endless_body(self, status: int, chunk: bytes = b"<html>" + b"x" * 65530) -> Answer:
        """A chunked answer whose body never ends: written as fast as the client reads, until it hangs up."""
        frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"

        def send(conn: socket.socket) -> bool:
            conn.sendall(f"HTTP/1.1 {status} Scripted\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            while not self._stopped.is_set():
                try:
                    conn.sendall(frame)
                except OSError:
                    break
                with self._lock:
                    self.bytes_sent += len(frame)
            return False

        return send

    def _next(self) -> Answer:
        with self._lock:
            if self._answers:
                self._last = self._answers.popleft()
            return self._last

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            try:
                while self._read_request(conn) and self._next()(conn):
                    pass
            except OSError:
                pass

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                return False
            data += more
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith("content-length:")), 0)
        while len(body) < length:
            more = conn.recv(65536)
            if not more:
                return False
            body += more
        with self._lock:
            self.requests.append(lines[0])
        return True

    def stop(self) -> None:
        """Stop accepting and end the endless answers; idempotent."""
        self._stopped.set()
        with contextlib.suppress(OSError):  # wakes the accept() in progress (close alone does not)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
