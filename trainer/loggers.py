"""Training-log destinations (``logger`` group): metrics.jsonl always (unless logger=none), plus
TensorBoard or Weights & Biases through the HF Trainer's own integrations, or MLflow (trainer/mlflow_tracking.py)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig
from transformers import TrainerCallback

log = logging.getLogger(__name__)


class JsonlLogger(TrainerCallback):
    """Appends every Trainer log dict (with its step) to <run dir>/metrics.jsonl, on the main process only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        """A resumed run logs again from the checkpoint's step on: drop the records after it (and a torn last
        line), so that no step is logged twice."""
        if state.is_world_process_zero and self.path.is_file():
            from trainer.metrics_log import truncate_after

            truncate_after(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.info(
            "step %d: %s", state.global_step, {k: round(v, 5) if isinstance(v, float) else v for k, v in logs.items()}
        )


def report_to(logger_cfg: DictConfig, run_dir: Path) -> list[str]:
    """The Trainer ``report_to`` list for this logger, after setting the integration's environment."""
    if logger_cfg.name == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
        return ["tensorboard"]
    if logger_cfg.name == "wandb":
        os.environ.setdefault("WANDB_PROJECT", logger_cfg.project)
        os.environ["WANDB_DIR"] = str(run_dir)
        os.environ["WANDB_MODE"] = wandb_mode(logger_cfg)
        return ["wandb"]
    return []


def callbacks(logger_cfg: DictConfig, run_dir: Path) -> list[TrainerCallback]:
    if logger_cfg.name == "none":
        return []
    found: list[TrainerCallback] = [JsonlLogger(run_dir / "metrics.jsonl")]
    if logger_cfg.name == "mlflow":
        from trainer.mlflow_tracking import MlflowLogger

        found.append(MlflowLogger(logger_cfg, run_dir))
    return found


def finish(trainer) -> None:
    """After the report is written (rank 0): loggers that upload it do so now."""
    for callback in trainer.callback_handler.callbacks:
        if hasattr(callback, "finish"):
            callback.finish()


def wandb_mode(logger_cfg: DictConfig) -> str:
    """offline unless online was asked for and the wandb server answers within the timeout (never hang)."""
    if logger_cfg.mode != "online":
        return logger_cfg.mode
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    url = urlparse(base)
    try:  # a server must answer an HTTP request in time: accepting the connection is not enough (a tarpit)
        answers(base, logger_cfg.timeout_s)
        os.environ.setdefault("WANDB_INIT_TIMEOUT", str(max(30.0, 6 * logger_cfg.timeout_s)))
        return "online"
    except OSError as exc:
        log.warning(
            "wandb server %s did not answer within %.0f s (%s): logging offline instead; upload later with "
            "`wandb sync %s`",
            url.hostname,
            logger_cfg.timeout_s,
            exc,
            "<run dir>/wandb/offline-run-*",
        )
        return "offline"


def answers(base_url: str, timeout_s: float) -> None:
    """Raise OSError unless the server at ``base_url`` sends any HTTP response within ``timeout_s`` seconds."""
    import http.client

    url = urlparse(base_url)
    if not url.hostname:
        raise OSError(f"{base_url} names no host")
    kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = kind(url.hostname or "", url.port, timeout=timeout_s)
    try:
        conn.request("HEAD", "/")
        conn.getresponse()
    except (http.client.HTTPException, ValueError) as exc:
        raise OSError(f"no HTTP answer: {exc.__class__.__name__}") from None
    finally:
        conn.close()


def explain_wandb_error(exc: BaseException):
    """One paragraph (a UserError) for wandb's own errors (a bad key, a server that refuses or times out), or None."""
    from trainer.errors import UserError

    if not type(exc).__module__.startswith("wandb"):
        return None
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return UserError(
        f"Weights & Biases refused the run ({type(exc).__name__}: {first}). Check WANDB_API_KEY (`wandb login`) and "
        "WANDB_BASE_URL, or log without the server: logger.mode=offline (upload later with `wandb sync`) or "
        "logger=jsonl. Run the same command again to resume from the last complete checkpoint."
    )
