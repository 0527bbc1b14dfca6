"""The run's journal (journal.json): the phases of a run that have finished, each with what the later phases need
from it, so that a rerun after a kill goes straight to the phases still missing instead of doing one again.

One phase is recorded now: ``trained``, the training phase's figures (the Trainer's summary metrics: train_runtime,
train_loss ...; its log history; the final step and epoch) as soon as training returns, then again with
``saved: true`` once the model (and the merged model) is written into the run dir. trainer.engine.training reads
it. Written atomically (trainer.run.atomic) by the main process only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from trainer.run import atomic

log = logging.getLogger(__name__)

JOURNAL = "journal.json"


def read(run_dir: Path) -> dict[str, Any]:
    """Every recorded phase by name ({} when there is no journal; an unreadable one is reported and ignored: the
    phases it named are done again)."""
    path = Path(run_dir) / JOURNAL
    if not path.is_file():
        return {}
    try:
        phases = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s): the phases it recorded are done again", path, exc)
        return {}
    if not isinstance(phases, dict):
        log.warning("%s does not hold a record of phases: the phases it recorded are done again", path)
        return {}
    return phases


def record(run_dir: Path, phase: str, value: Any) -> None:
    """Record ``phase`` (replacing an earlier record of it) durably: a kill leaves the old journal or the new one."""
    phases = {**read(run_dir), phase: value}
    atomic.write_json(Path(run_dir) / JOURNAL, phases, indent=None, default=str)
    log.info("journal: %s recorded", phase)
