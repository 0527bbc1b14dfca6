"""The run directory: one per run. Guards a finished run's results, records the resolved config (secrets
redacted) and the overrides, and marks the run finished or failed."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainer.errors import UserError

log = logging.getLogger(__name__)

# "token$": hub_token, ad_token, token ... but not max_new_tokens (workers load the written config).
SECRET_KEY = re.compile(r"(api_?key|secret|password|token$)", re.IGNORECASE)
REDACTED = "***redacted***"
RESULTS = ("metrics.json", "report.md", "loss_curve.png", "metrics.jsonl", "model", "merged", "checkpoints")


def redacted(node):
    """A plain copy of a config container with the value of every secret-looking key replaced."""
    if isinstance(node, dict):
        return {
            k: (REDACTED if SECRET_KEY.search(str(k)) and v is not None and not isinstance(v, dict) else redacted(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [redacted(v) for v in node]
    return node


def start(cfg: DictConfig, run_dir: Path, command: str) -> None:
    """Prepare ``run_dir`` for ``command``; refuse to silently replace a finished run's results."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if command == "train" and (run_dir / "metrics.json").exists():
        if not cfg.overwrite:
            raise UserError(
                f"{run_dir} already holds a finished run (metrics.json, report.md). Nothing was changed. Choose "
                "another directory (hydra.run.dir=...), or pass overwrite=true to start again there: the old "
                "results are then moved into a 'previous-<time>' folder beside them, not deleted."
            )
        aside = run_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir()
        for name in RESULTS:
            if (run_dir / name).exists():
                shutil.move(str(run_dir / name), aside / name)
        log.warning("overwrite=true: moved the previous results to %s", aside)
    resolved = redacted(OmegaConf.to_container(cfg, resolve=True))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    (run_dir / "overrides.json").write_text(json.dumps(task_overrides(), indent=1) + "\n")


def task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not SECRET_KEY.search(o.split("=", 1)[0])]


def objective(results: dict) -> float | None:
    """The number a sweep optimizes: the fine-tuned eval loss when there is one."""
    value = (results.get("finetuned") or {}).get("eval_loss")
    return float(value) if value is not None else None
