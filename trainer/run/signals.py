"""SIGTERM stops a command as Ctrl-C does: it raises KeyboardInterrupt in the main thread, so one path handles both
(a training run's status.json says "interrupted" and a rerun resumes; a server stops its engine cleanly)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (as SIGINT does); the old handler comes back after it.
    Only the main thread may set a handler: elsewhere (a sweep launcher's worker thread) the block runs as it is."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
