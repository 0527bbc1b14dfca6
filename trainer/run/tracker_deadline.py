"""A whole-answer deadline for every networked tracker (wandb online, mlflow over a server), held by hydratune itself.

A socket timeout bounds one read, so a server that sends one byte every few seconds holds a plain HTTP client
forever. Here one monotonic deadline covers the whole exchange instead:

- :func:`probe` sends ``HEAD`` and needs the complete answer head (status line and headers): connect, TLS, the
  first byte and the last header byte all within ``timeout_s`` of the call;
- :func:`within` runs the library's own start (``wandb.init``, mlflow's run creation) in a daemon thread and stops
  waiting for it at the deadline, so a library that ignores its own timeout cannot hold the run.

Both raise :class:`Unanswered`, whose message says what timed out; the caller logs one line and goes on without
the tracker (:func:`fallback_line`).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from trainer.config.secrets import redact_text

T = TypeVar("T")
#: The most bytes of an answer head read (a server that sends more without ending its headers is not a tracker).
MAX_HEAD = 65536


class Unanswered(Exception):
    """A tracker server that did not answer in time, or could not be reached; the message says which part."""


def probe(url: str, timeout_s: float) -> None:
    """Raise :class:`Unanswered` unless the server at ``url`` (http or https) sends a complete HTTP answer head to a
    ``HEAD`` request within ``timeout_s`` seconds of this call, counted over the whole exchange."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Unanswered(f"{redact_text(url)} is not an http(s) URL with a host")
    deadline = time.monotonic() + timeout_s
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    try:
        sock = socket.create_connection((host, port), timeout=_left(deadline, "connecting"))
    except TimeoutError:
        raise Unanswered(f"connecting took longer than {timeout_s:g} s") from None
    except OSError as exc:
        raise Unanswered(f"connecting failed: {exc.strerror or exc}") from None
    try:
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            _step(sock, deadline, timeout_s, "the TLS handshake", lambda: sock.do_handshake())
        netloc = parts.netloc.rsplit("@", 1)[-1]  # never the user:password part
        request = (
            f"HEAD {parts.path or '/'} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: hydratune\r\nConnection: close\r\n\r\n"
        )
        _step(sock, deadline, timeout_s, "sending the request", lambda: sock.sendall(request.encode("ascii")))
        head = b""
        while b"\r\n\r\n" not in head:
            what = "the first byte of the answer" if not head else f"the whole answer ({len(head)} bytes came)"
            chunk = _step(sock, deadline, timeout_s, what, lambda: sock.recv(4096))
            if not chunk:
                raise Unanswered(f"the server closed the connection after {len(head)} bytes, before answering")
            head += chunk
            if len(head) > MAX_HEAD:
                raise Unanswered(f"the answer's head went on past {MAX_HEAD} bytes")
        if not head.startswith(b"HTTP/"):
            raise Unanswered("the server's answer is not HTTP")
    finally:
        sock.close()


def _left(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Unanswered(f"{what} did not come in time")
    return left


def _step(sock: socket.socket, deadline: float, timeout_s: float, what: str, call: Callable[[], T]) -> T:
    """One socket operation, allowed only the time left before ``deadline``."""
    sock.settimeout(_left(deadline, what))
    try:
        return call()
    except TimeoutError:
        raise Unanswered(f"{what} did not come within {timeout_s:g} s") from None
    except (OSError, ssl.SSLError) as exc:
        raise Unanswered(f"{what} failed: {exc.strerror or exc}") from None


def within(timeout_s: float, call: Callable[[], T], what: str) -> T:
    """``call()``'s result, or its exception, if it returns within ``timeout_s`` seconds; else :class:`Unanswered`
    (the call goes on in a daemon thread that nothing waits for)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"hydratune-deadline: {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise Unanswered(f"{what} did not return within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def fallback_line(tracker: str, url: str, timeout_s: float, reason: Unanswered, instead: str, fix: str) -> str:
    """The one log line for a tracker left out: which tracker and server, what timed out, what the run does
    instead and how to fix it (or upload later)."""
    return redact_text(
        f"{tracker}: the server {url} did not answer within logger.timeout_s={timeout_s:g} s ({reason}): {instead}; "
        f"{fix}"
    )
