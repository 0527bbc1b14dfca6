"""metrics.jsonl upkeep: a resumed run keeps the records up to its checkpoint's step and logs the rest again."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from trainer import atomic

log = logging.getLogger(__name__)


def truncate_after(path: Path, step: int) -> int:
    """Keep the records of ``path`` whose step is at most ``step`` (and drop unparsable lines: a torn last line
    from a kill); returns how many records were dropped."""
    kept, dropped = [], 0
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic.write_text(path, "".join(f"{line}\n" for line in kept))
        log.info("%s: dropped %d records after step %d (this run logs them again)", path.name, dropped, step)
    return dropped
