"""What every fake API under tests/ shares (tests/fake_provider.py for OpenAI and Azure, tests/fake_together.py for
Together): a real HTTP server on 127.0.0.1 that the real SDKs talk to, requests routed by (method, path pattern) to
one method per route, 429/5xx bursts injected per route, a clock that ticks once per reading, and one request handler
that answers JSON (or raw bytes, or a redirect: :class:`Raw`) and records every request.

A fake subclasses :class:`FakeServer`, lists its ``ROUTES`` and implements :meth:`FakeServer.handle` (usually:
check the credentials, then :meth:`FakeServer.dispatch`).
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter, defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.param, self.headers = status, code, param, headers or {}


class Raw:
    """A non-JSON answer: bytes with a content type, or a redirect (status and headers only)."""

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


class FakeServer:
    #: (HTTP method, path pattern, route name); a route ``files.create`` is served by the method ``_files_create``.
    ROUTES: list[tuple[str, str, str]] = []
    #: The route names :meth:`inject` accepts (ROUTES' own, and any a fake dispatches itself).
    ALL_ROUTES: list[str] = []
    #: The clock's first reading (seconds since the epoch); each :meth:`now` adds one.
    CLOCK_START = 1_700_000_000

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        #: (method, path, status) of every request, in order.
        self.requests: list[tuple[str, str, int]] = []
        self._inject: dict[str, deque] = defaultdict(deque)
        self._lock = threading.RLock()
        self._clock = self.CLOCK_START
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ control

    def start(self) -> Any:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll: stop() waits for the serving loop to notice (0.5 s a fake with the default).
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def inject(self, route: str, *statuses: int, retry_after: str | None = "0.01") -> None:
        """The next requests to ``route`` are answered with these statuses (429s carry Retry-After)."""
        if route not in self.ALL_ROUTES:
            raise ValueError(f"unknown route {route}; routes: {self.ALL_ROUTES}")
        with self._lock:
            self._inject[route].extend((s, retry_after) for s in statuses)

    def pending_injections(self) -> dict[str, int]:
        with self._lock:
            return {r: len(q) for r, q in self._inject.items() if q}

    def now(self) -> int:
        with self._lock:
            self._clock += 1
            return self._clock

    # ------------------------------------------------------------ dispatch

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON payload or :class:`Raw`, extra headers) for one request; raise :class:`HttpError`."""
        raise NotImplementedError

    def dispatch(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the method of the route that matches (after any injected failure); 404 for an unknown path."""
        for verb, pattern, route in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                self.maybe_inject(route)
                return getattr(self, "_" + route.replace(".", "_").replace("-", "_"))(**kwargs, **match.groupdict())
        raise HttpError(404, f"Unknown path {method} {path}", "not_found")

    def maybe_inject(self, route: str) -> None:
        with self._lock:
            queue = self._inject[route]
            if not queue:
                return
            status, retry_after = queue.popleft()
            self.counters[f"injected.{route}"] += 1
        extra = {"Retry-After": retry_after} if retry_after is not None and status == 429 else {}
        raise HttpError(status, "Injected failure" if status != 429 else "Rate limit reached", "injected", None, extra)

    def error_body(self, exc: HttpError) -> tuple[dict, dict[str, str]]:
        """The JSON body and headers of an error answer (OpenAI's error shape)."""
        body = {"error": {"message": str(exc), "type": "fake_error", "param": exc.param, "code": exc.code}}
        return body, dict(exc.headers)


def public(obj: dict) -> dict:
    """A stored object without its private ``_`` fields."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one small answer must not wait for a delayed ACK (40 ms a request)
    wbufsize = -1  # headers and body leave in one write; flushed after each request

    def _serve(self) -> None:
        fake = self.server_fake
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            status, payload, extra = fake.handle(self.command, self.path, self.headers, body)
        except HttpError as exc:
            status = exc.status
            payload, extra = fake.error_body(exc)
        with fake._lock:
            fake.requests.append((self.command, urlsplit(self.path).path, status))
        if isinstance(payload, Raw):
            status, data, extra = payload.status, payload.body, {**extra, **payload.headers}
        else:
            data = json.dumps(payload).encode()
            extra = {"Content-Type": "application/json", **extra}
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

    def log_message(self, *args: Any) -> None:  # quiet
        return
