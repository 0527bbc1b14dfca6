"""Retry settings taken from the hardware config, shared by every provider call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from launchers.cloud import client as _client


@dataclass
class Retry:
    retries: int
    backoff_s: float
    poll_s: float
    max_poll_s: float

    @classmethod
    def from_hw(cls, hw: Any) -> Retry:
        return cls(hw.max_retries, hw.retry_backoff_s, hw.poll_interval_s, hw.max_poll_interval_s)

    def __call__(self, fn: Any, *args: Any, what: str = "", **kwargs: Any) -> Any:
        return _client.call(fn, *args, retries=self.retries, backoff_s=self.backoff_s, what=what, **kwargs)

    def wait(self, attempt: int, retry_after: str | None = None) -> None:
        time.sleep(_client.retry_delay(attempt, self.backoff_s, retry_after))

    def polls(self) -> Iterator[float]:
        """Poll intervals: start at poll_s, grow by half each time, never above max_poll_s."""
        interval = self.poll_s
        while True:
            yield interval
            interval = min(interval * 1.5, self.max_poll_s)
