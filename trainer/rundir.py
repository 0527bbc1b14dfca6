"""The run directory: one per run. Guards a finished run's results, records the resolved config (secrets
redacted) and the overrides, and marks the run finished or failed (status.json)."""

from __future__ import annotations

import json
import logging
import os
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
RESULTS = (
    "metrics.json",
    "report.md",
    "report.html",
    "examples.jsonl",
    "history.json",
    "loss_curve.png",
    "metrics.jsonl",
    "model",
    "merged",
    "checkpoints",
)


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


def objective(results: dict, metric: str = "finetuned.eval_loss") -> float | None:
    """The number a sweep optimizes: ``metric`` (a dotted path such as ``finetuned.exact_match``) in the
    results, or None when the run has no such number."""
    value = results
    for part in metric.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- status.json: how a run (of a sweep) ended

STATUS = "status.json"


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def finished(cfg: DictConfig, command: str, started: float) -> float | None:
    """Record a run that ended normally (status ok) and return its configured objective from metrics.json."""
    run_dir = Path(cfg.output_dir)
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    value = objective(metrics, cfg.objective.metric)
    if value is None and command == "train":
        log.warning("objective %s is not in %s: this run has no objective value", cfg.objective.metric, metrics_file)
    _write_status(run_dir, "ok", command, started, objective=value, objective_metric=cfg.objective.metric)
    return value


def failed(cfg: DictConfig, command: str, started: float, exc: Exception) -> None:
    """Record a failed run of a sweep in status.json (the error, and the traceback of anything that is not a
    UserError) so that the sweep goes on and its summary reports the failure. Returns None, which Optuna
    records as a failed trial."""
    import traceback

    user_error = isinstance(exc, UserError)
    trace = None if user_error else "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if user_error:
        log.error("run failed: %s", exc)
    else:
        log.error("run failed with %s: %s\n%s", type(exc).__name__, exc, trace)
    error = str(exc) if user_error else f"{type(exc).__name__}: {exc}"
    _write_status(Path(cfg.output_dir), "failed", command, started, error=error, traceback=trace)
    return None


def _write_status(run_dir: Path, status: str, command: str, started: float, **fields) -> None:
    record = {"status": status, "command": command, "overrides": task_overrides(), "pid": os.getpid()}
    record.update(started=started, finished=time.time())
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STATUS}.partial"
    tmp.write_text(json.dumps({**record, **fields}, indent=1, default=str) + "\n")
    tmp.replace(run_dir / STATUS)
