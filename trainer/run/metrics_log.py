"""metrics.jsonl upkeep: a resumed run keeps the records up to its checkpoint's step and logs the rest again; a rerun
after the training phase keeps the records that phase logged and logs the evaluations again."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from trainer.run import atomic

log = logging.getLogger(__name__)

#: The training log in the run dir (trainer.run.loggers.JsonlLogger appends to it).
FILE = "metrics.jsonl"


def truncate_after(path: Path, step: int) -> int:
    """Keep the records of ``path`` whose step is at most ``step`` (and drop unparsable lines: a torn last line
    from a kill); returns how many records were dropped."""
    return _keep(path, lambda i, record: isinstance(record.get("step"), int) and record["step"] <= step, f"step {step}")


def records(path: Path) -> int:
    """How many records ``path`` holds (0 when there is no such file)."""
    path = Path(path)
    return len(path.read_text(errors="replace").splitlines()) if path.is_file() else 0


def keep_first(path: Path, count: int) -> int:
    """Keep the first ``count`` records of ``path`` (those the finished training phase logged: a rerun logs the
    evaluations after them again); returns how many records were dropped."""
    if not Path(path).is_file():
        return 0
    return _keep(path, lambda i, record: i < count, f"the first {count}")


def _keep(path: Path, wanted, what: str) -> int:
    kept, dropped = [], 0
    for i, line in enumerate(Path(path).read_text(errors="replace").splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(record, dict) and wanted(i, record):
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic.write_text(path, "".join(f"{line}\n" for line in kept))
        log.info("%s: dropped %d records after %s (this run logs them again)", Path(path).name, dropped, what)
    return dropped
