"""Training-log destinations (``logger`` group): metrics.jsonl always (unless logger=none), plus
TensorBoard or Weights & Biases through the HF Trainer's own integrations, or MLflow (trainer/run/mlflow_tracking.py)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig
from transformers import TrainerCallback

from trainer.run import metrics_log, tracker_deadline

log = logging.getLogger(__name__)


class JsonlLogger(TrainerCallback):
    """Appends every Trainer log dict (with its step) to <run dir>/metrics.jsonl, on the main process only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        """A resumed run logs again from the checkpoint's step on: drop the records after it (and a torn last
        line), so that no step is logged twice."""
        if state.is_world_process_zero and self.path.is_file():
            metrics_log.truncate_after(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.info(
            "step %d: %s", state.global_step, {k: round(v, 5) if isinstance(v, float) else v for k, v in logs.items()}
        )


def report_to(logger_cfg: DictConfig, run_dir: Path, run_name: str | None = None) -> list[str]:
    """The Trainer ``report_to`` list for this logger, after setting the integration's environment (and starting an
    online wandb run under hydratune's deadline)."""
    if logger_cfg.name == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
        return ["tensorboard"]
    if logger_cfg.name == "wandb":
        os.environ.setdefault("WANDB_PROJECT", logger_cfg.project)
        os.environ["WANDB_DIR"] = str(run_dir)
        os.environ["WANDB_MODE"] = wandb_mode(logger_cfg)
        os.environ.update(WANDB_PRIVATE)  # before any wandb.init: hydratune's online start or the Trainer's
        if os.environ["WANDB_MODE"] == "online" and not start_wandb(logger_cfg, run_name):
            return []
        return ["wandb"]
    return []


#: wandb's settings (as WANDB_* variables, which the Trainer's wandb.init reads) that keep its own records of this
#: process out of the run: no metadata record (it holds the raw command line, ``args``, and the program path), no
#: code or git capture, no machine info. The run gets the Trainer's arguments (hub_token taken out) and nothing of
#: the command line; metrics.jsonl, config.yaml and the report carry the rest, redacted.
WANDB_PRIVATE = {
    "WANDB_X_DISABLE_META": "true",
    "WANDB_X_DISABLE_MACHINE_INFO": "true",
    "WANDB_DISABLE_CODE": "true",
    "WANDB_SAVE_CODE": "false",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_PROGRAM": "hydratune",
}


def callbacks(logger_cfg: DictConfig, run_dir: Path) -> list[TrainerCallback]:
    if logger_cfg.name == "none":
        return []
    found: list[TrainerCallback] = [JsonlLogger(run_dir / metrics_log.FILE)]
    if logger_cfg.name == "mlflow":
        from trainer.run.mlflow_tracking import MlflowLogger

        found.append(MlflowLogger(logger_cfg, run_dir))
    return found


def log_eval(trainer, label: str, section: dict) -> None:
    """An evaluation section's numbers (loss aside: the Trainer logged it) as one Trainer log record,
    ``eval_<label>_<metric>``: JSONL, W&B, and TensorBoard and MLflow under ``eval/`` (trainer.run.mlflow_tracking.tracker_name)."""
    logs = {
        f"eval_{label}_{name}": float(value)
        for name, value in section.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and name != "eval_loss"
    }
    if logs:
        trainer.log(logs)


def finish(trainer) -> None:
    """After the report is written (rank 0): loggers that upload it do so now."""
    for callback in trainer.callback_handler.callbacks:
        if hasattr(callback, "finish"):
            callback.finish()


def wandb_mode(logger_cfg: DictConfig) -> str:
    """offline unless online was asked for and the wandb server sends a whole answer within logger.timeout_s."""
    if logger_cfg.mode != "online":
        return logger_cfg.mode
    base = wandb_url()
    try:
        tracker_deadline.probe(base, logger_cfg.timeout_s)
    except tracker_deadline.Unanswered as reason:
        instead, fix = "logging offline instead", "upload later with `wandb sync <run dir>/wandb/offline-run-*`"
        log.warning(tracker_deadline.fallback_line("wandb", base, logger_cfg.timeout_s, reason, instead, fix))
        return "offline"
    # wandb's own timeout stays longer than hydratune's deadline (start_wandb), which decides first.
    os.environ.setdefault("WANDB_INIT_TIMEOUT", str(max(30.0, 6 * logger_cfg.timeout_s)))
    return "online"


def wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def start_wandb(logger_cfg: DictConfig, run_name: str | None) -> bool:
    """wandb.init for an online run, on rank 0, under hydratune's deadline (the Trainer's WandbCallback then
    finds the run started); False, after one warning, when wandb.init did not return within logger.timeout_s."""
    if os.environ.get("RANK", "0") != "0":
        return True
    import wandb

    def init():
        return wandb.init(project=os.environ["WANDB_PROJECT"], name=run_name)

    try:
        tracker_deadline.within(logger_cfg.timeout_s, init, "wandb.init")
    except tracker_deadline.Unanswered as reason:
        instead = "the run goes on with metrics.jsonl only (no wandb run)"
        fix = "check the server, raise logger.timeout_s, or log with logger.mode=offline and `wandb sync` later"
        log.warning(tracker_deadline.fallback_line("wandb", wandb_url(), logger_cfg.timeout_s, reason, instead, fix))
        return False
    return True


def explain_wandb_error(exc: BaseException):
    """One paragraph (a UserError) for wandb's own errors (a bad key, a server that refuses or times out), or None."""
    from trainer.config.errors import UserError

    if not type(exc).__module__.startswith("wandb"):
        return None
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return UserError(
        f"Weights & Biases refused the run ({type(exc).__name__}: {first}). Check WANDB_API_KEY (`wandb login`) and "
        "WANDB_BASE_URL, or log without the server: logger.mode=offline (upload later with `wandb sync`) or "
        "logger=jsonl. Run the same command again to resume from the last complete checkpoint."
    )
