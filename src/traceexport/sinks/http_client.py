"""The one way sinks build an ``httpx.Client``: the sink's ``timeout`` bounds each request as a whole.

httpx's timeouts bound each socket operation, so a receiver that trickles a byte every few seconds
keeps a request (and its sink) waiting for ever. Here every request gets a deadline, ``timeout``
seconds after it starts, kept in a context variable for the thread sending it; the connection pool's
network streams give each connect, read and write at most the time left until then. Past the deadline
the request fails with :class:`RequestDeadlineExceeded`, which httpx raises as an
``httpx.TimeoutException`` (a retryable transport failure, see ``sinks/http.py``).

The deadline lives in httpcore's network layer, the documented ``network_backend`` of its connection
pools; httpx does not expose that option, so :func:`_install` sets it on the pool of each transport the
client creates (proxies from the environment included) and fails loudly if httpx changes that shape.

An answer is read up to :data:`MAX_ANSWER_BYTES` (decoded) and its connection closed there: a receiver that
streams an endless body (or a gzip bomb) as fast as loopback goes would otherwise fill the memory of the
delivery process, a gigabyte a second, until the deadline. The status stands and the body keeps its first
``MAX_ANSWER_BYTES``, far more than any backend's answer or error.

A URL's ``user:password@`` is sent as the Basic ``Authorization`` header httpx makes of it, but never as part
of the request's URL, which httpx logs at INFO (a host process such as Dify logs at INFO by default).

:func:`make_client` returns a :class:`RateLimitedClient`: inside a rate-limited sink's export each request
first waits for that sink's :class:`~traceexport.sinks.ratelimit.RateLimiter` (before its deadline starts).
"""

from __future__ import annotations

import base64
import contextvars
import ssl
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpcore
import httpx

from traceexport.sinks import ratelimit, request_meter

MAX_ANSWER_BYTES = 1024 * 1024  # of an answer's (decoded) body kept; the rest is never read

# (monotonic deadline, the whole allowance in seconds) of the request the current thread is sending
_DEADLINE: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar(
    "traceexport_request_deadline", default=None)


class RequestDeadlineExceeded(httpcore.TimeoutException):  # httpcore's type, so httpx maps it to a timeout
    """A request did not complete within its overall deadline (``seconds``)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no complete answer within the {seconds:g} s request deadline")
        self.seconds = seconds


def deadline_exceeded(exc: BaseException) -> RequestDeadlineExceeded | None:
    """The :class:`RequestDeadlineExceeded` behind an httpx exception, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RequestDeadlineExceeded):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _time_left(timeout: float | None) -> tuple[float | None, bool]:
    """The timeout for one socket operation and whether the request's deadline (not ``timeout``) set it."""
    current = _DEADLINE.get()
    if current is None:
        return timeout, False
    deadline, seconds = current
    left = deadline - time.monotonic()
    if left <= 0:
        raise RequestDeadlineExceeded(seconds)
    if timeout is None or left < timeout:
        return left, True
    return timeout, False


def _expired() -> RequestDeadlineExceeded:
    current = _DEADLINE.get()
    return RequestDeadlineExceeded(current[1] if current else 0.0)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose reads and writes end by the request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        limit, by_deadline = _time_left(timeout)
        try:
            return self._inner.read(max_bytes, limit)
        except httpcore.ReadTimeout:
            if by_deadline:
                raise _expired() from None
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        limit, by_deadline = _time_left(timeout)
        try:
            self._inner.write(buffer, limit)
        except httpcore.WriteTimeout:
            if by_deadline:
                raise _expired() from None
            raise

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        limit, _ = _time_left(timeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, limit))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """Opens connections within the request's deadline and wraps their streams in :class:`_DeadlineStream`."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        limit, _ = _time_left(timeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, limit, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        limit, _ = _time_left(timeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, limit, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _install(transport: httpx.BaseTransport) -> httpx.BaseTransport:
    """Put the deadline backend into an ``httpx.HTTPTransport``'s pool; other transports (tests) as they are."""
    if not isinstance(transport, httpx.HTTPTransport):
        return transport
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.NetworkBackend):
        raise RuntimeError("httpx/httpcore changed how transports hold their connection pool; "
                           "traceexport cannot bound request times with this version")
    if not isinstance(backend, _DeadlineBackend):
        setattr(pool, "_network_backend", _DeadlineBackend(backend))  # noqa: B010 - no public setter
    return transport


class DeadlineClient(httpx.Client):
    """An ``httpx.Client`` whose every request (redirects and body included) ends within ``deadline`` seconds."""

    def __init__(self, *, deadline: float, **kwargs: Any) -> None:
        self.deadline = deadline
        super().__init__(**kwargs)

    def _init_transport(self, *args: Any, **kwargs: Any) -> httpx.BaseTransport:
        return _install(super()._init_transport(*args, **kwargs))

    def _init_proxy_transport(self, *args: Any, **kwargs: Any) -> httpx.BaseTransport:
        return _install(super()._init_proxy_transport(*args, **kwargs))

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        _credentials_out_of_url(request)
        stream = bool(kwargs.pop("stream", False))
        started = time.monotonic()
        token = _DEADLINE.set((started + self.deadline, self.deadline))
        try:
            response = super().send(request, stream=True, **kwargs)
            if not stream:
                _read_bounded(response)
        except Exception:  # a transport failure (or a bug): retryable, as the sinks classify it
            request_meter.observe(time.monotonic() - started, "retryable")
            raise
        finally:
            _DEADLINE.reset(token)
        request_meter.observe(time.monotonic() - started, request_meter.status_outcome(response.status_code))
        return response


def _credentials_out_of_url(request: httpx.Request) -> None:
    """Move a URL's ``user:password@`` into the ``Authorization: Basic`` header httpx would make of it (replacing
    any other, as httpx does), so the request's URL carries no credential: httpx logs every request's URL at
    INFO, which a host process logging at INFO (Dify's api and worker, by default) would write out."""
    url = request.url
    if url.userinfo:
        pair = f"{url.username}:{url.password}".encode()
        request.headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        request.url = url.copy_with(userinfo=b"")


def _read_bounded(response: httpx.Response, limit: int = MAX_ANSWER_BYTES) -> None:
    """Read an answer's body, decoded, up to ``limit`` bytes, then close it (and, cut short, its connection).

    The response then holds what was read, over a plain stream: httpx's response and its ``BoundSyncStream``
    refer to each other, a cycle only the garbage collector frees, so every request body (up to
    ``max_bytes``) lived until the next full collection and a delivery process grew by tens of MB between
    them; without it reference counting frees a response, its request and the request's body right away.
    """
    parts: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    finally:
        response.close()
    content = b"".join(parts)[:limit]
    response._content = content  # what httpx's read() leaves; it has no bounded read of its own
    response.stream = httpx.ByteStream(content)


class RateLimitedClient(DeadlineClient):
    """A :class:`DeadlineClient` whose requests first wait for the sending sink's rate limiter, if it has one.

    The wait comes before the request's deadline starts; the number of items a request carries comes from
    its ``traceexport.items`` extension (0 when a sink does not say). A throttling answer (429, or 503 with
    ``Retry-After``) lowers the limiter's rate. Outside a rate-limited export this is a DeadlineClient.
    """

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        limiter = ratelimit.current()
        if limiter is None:
            return super().send(request, **kwargs)
        try:
            limiter.acquire(int(request.extensions.get(ratelimit.ITEMS_EXTENSION, 0)))
        except ratelimit.SendCancelled as exc:
            raise ratelimit.SendCancelled(str(exc), request=request) from None
        response = super().send(request, **kwargs)
        if ratelimit.is_throttle(response.status_code, "retry-after" in response.headers):
            limiter.throttled()
        return response


def make_client(*, timeout: float, headers: Mapping[str, str] | None = None, base_url: str = "",
                transport: httpx.BaseTransport | None = None,
                verify: ssl.SSLContext | bool = True) -> httpx.Client:
    """The client a sink sends with: ``timeout`` seconds per socket operation and per request overall,
    paced by the sink's rate limiter when it has one; ``verify`` as httpx takes it (a context holding a
    sink's own trusted certificates and client certificate)."""
    return RateLimitedClient(deadline=timeout, timeout=timeout, headers=dict(headers or {}), base_url=base_url,
                             transport=transport, verify=verify)
