"""``logger=mlflow``: one MLflow run per hydratune run, through MLflow's own client.

Where: ``logger.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a local SQLite store (one file, no server)
beside the run: ``<run dir>/mlflow.db``, or ``<sweep dir>/mlflow.db`` for every run of a multirun. MLflow 3 keeps
its plain-folder store (``./mlruns``) in maintenance mode and refuses it by default, so the local default is its
SQLite store. Which experiment: ``logger.experiment``, else the run name, or the sweep dir for a multirun, so a
sweep's runs share one experiment.

What: the resolved config (as written to ``<run dir>/config.yaml``, secrets redacted) flattened into params, every
Trainer log (loss, learning rate, ...) as step metrics while training, then report.md, loss_curve.png and
metrics.json as artifacts and the final numbers of metrics.json as metrics. Rank 0 only.

    hydratune logger=mlflow                       # then: mlflow ui --backend-store-uri sqlite:///<run dir>/mlflow.db
    MLFLOW_TRACKING_URI=http://mlflow:5000 hydratune logger=mlflow logger.experiment=sql-tuning
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import TrainerCallback

from trainer.config.errors import UserError
from trainer.run import rundir, tracker_deadline

log = logging.getLogger(__name__)

ARTIFACTS = ("report.md", "loss_curve.png", "metrics.json")
#: MLflow's own limits: characters of a param value, entries of one log_batch call.
MAX_PARAM_CHARS = 6000
BATCH = 100


def resolve(cfg: DictConfig) -> None:
    """Fill ``logger.experiment`` and (when neither the config nor MLFLOW_TRACKING_URI names one) the local store,
    in the parent process where Hydra knows whether this is a sweep; workers read the written config."""
    from hydra.core.hydra_config import HydraConfig

    sweep_dir = None
    if rundir.in_multirun():
        sweep_dir = Path(str(HydraConfig.get().sweep.dir)).resolve()
    with open_dict(cfg):
        if cfg.logger.tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
            store = sweep_dir or Path(cfg.output_dir).resolve()
            cfg.logger.tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
        if cfg.logger.experiment is None:
            cfg.logger.experiment = str(sweep_dir) if sweep_dir else cfg.run_name


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise UserError(
            "logger=mlflow needs the mlflow client, which is not installed. Install it with "
            "`pip install 'hydratune[loggers]'` (or `pip install mlflow-skinny`), or pick another logger "
            "(logger=jsonl, tensorboard, wandb)."
        ) from None
    return mlflow


def local_store(uri: str) -> Path | None:
    """The folder of a local SQLite store (artifacts go beside it), or None for any other tracking URI."""
    return Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else None


@contextmanager
def _store_lock(folder: Path | None):
    """Runs of a parallel sweep create the SQLite file and the experiment one at a time."""
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".mlflow.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start_run(logger_cfg: DictConfig, run_dir: Path, run_name: str):
    """Create (or find) the experiment and start this run's MLflow run; returns (client, run_id)."""
    mlflow = _mlflow()
    uri = logger_cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    folder = local_store(uri) if uri else None
    try:
        with _store_lock(folder):
            client = mlflow.MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(logger_cfg.experiment)
            if experiment is None:
                location = (folder / "mlartifacts").as_uri() if folder else None
                experiment_id = client.create_experiment(logger_cfg.experiment, artifact_location=location)
            else:
                experiment_id = experiment.experiment_id
            run = client.create_run(experiment_id, run_name=run_name, tags={"hydratune.run_dir": str(run_dir)})
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(
            f"logger=mlflow: the tracking store {_safe(uri)} refused the run ({exc.message.splitlines()[0]}). "
            "Check logger.tracking_uri (or MLFLOW_TRACKING_URI), or leave both unset for a local store in the run dir."
        ) from None
    log.info("mlflow: run %s in experiment '%s' at %s", run.info.run_id, logger_cfg.experiment, _safe(uri))
    return client, run.info.run_id


def networked(uri: str | None) -> bool:
    """Whether the tracking store is reached over the network (not a local SQLite file or folder)."""
    if not uri:
        return False
    return local_store(uri) is None and "://" in uri and not uri.startswith("file:")


def bound_http_retries(timeout_s: float) -> None:
    """MLflow's HTTP client retries 7 times with backoff and waits 120 s a request by default (256 s on a closed
    port): one retry, no backoff, ``logger.timeout_s`` a request, unless the environment already sets them."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(timeout_s))))


def start_in_time(logger_cfg: DictConfig, run_dir: Path, run_name: str):
    """:func:`start_run`, for a networked store under hydratune's deadline: an http(s) server must send a whole
    answer, then MLflow must create the run, each within ``logger.timeout_s``. None, after one warning, when
    either did not come in time (the run goes on with metrics.jsonl)."""
    uri = logger_cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not networked(uri):
        return start_run(logger_cfg, run_dir, run_name)
    assert uri  # networked
    bound_http_retries(logger_cfg.timeout_s)
    timeout_s = logger_cfg.timeout_s
    try:
        if uri.startswith(("http://", "https://")):
            tracker_deadline.probe(uri, timeout_s)
        return tracker_deadline.within(
            timeout_s, lambda: start_run(logger_cfg, run_dir, run_name), "creating the MLflow run"
        )
    except tracker_deadline.Unanswered as reason:
        instead = "the run goes on with metrics.jsonl only (no MLflow run)"
        fix = "check logger.tracking_uri (or MLFLOW_TRACKING_URI) and the server, or raise logger.timeout_s"
        log.warning(tracker_deadline.fallback_line("mlflow", uri, timeout_s, reason, instead, fix))
        return None


def _safe(uri: str | None) -> str:
    """A tracking URI for a log line or a message, without its credentials (user-info, secret query values)."""
    from trainer.config.secrets import redact_text

    return redact_text(str(uri))


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"learning_rate": 2e-4}}`` -> ``{"train.learning_rate": "0.0002"}``; secrets redacted first."""
    out: dict[str, str] = {}
    for key, value in rundir.redacted(config).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_CHARS]
    return out


def numbers(record: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a (nested) dict, keys dotted: what MLflow takes as metrics."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(numbers(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def tracker_name(key: str) -> str:
    """A Trainer log key as MLflow files it, the way TensorBoard does: ``eval_base_exact_match`` -> ``eval/base_exact_match``
    (TensorBoard's own rule for the eval_ prefix), ``eval.finetuned.token_f1`` (metrics.json) ->
    ``eval/finetuned_token_f1``; anything else unchanged."""
    if key.startswith("eval_"):
        return "eval/" + key.removeprefix("eval_")
    if key.startswith("eval."):
        return "eval/" + key.removeprefix("eval.").replace(".", "_")
    return key


def final_metrics(metrics: dict) -> dict[str, float]:
    """metrics.json's numbers as MLflow metrics: each evaluation section's under ``eval/`` (``eval/finetuned_exact_match``,
    the names its Trainer log record had), the rest dotted (``break_even.queries``)."""
    sections = [key for key in ("control", "base", "few_shot", "finetuned") if isinstance(metrics.get(key), dict)]
    out = numbers({k: v for k, v in metrics.items() if k not in sections})
    for key in sections:
        out |= {tracker_name(f"eval_{key}_{name}"): value for name, value in numbers(metrics[key]).items()}
    return out


class MlflowLogger(TrainerCallback):
    """Params when training starts, each Trainer log as step metrics, artifacts at :meth:`finish`."""

    def __init__(self, logger_cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = logger_cfg, run_dir
        self.client: Any = None
        self.run_id: str | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.run_id is not None:
            return
        started = start_in_time(self.cfg, self.run_dir, args.run_name or self.run_dir.name)
        if started is None:
            return
        self.client, self.run_id = started
        config = OmegaConf.to_container(OmegaConf.load(self.run_dir / "config.yaml"), resolve=False)
        assert isinstance(config, dict)
        self._batch(params=flat_params(config))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.run_id is None or not logs:
            return
        self._batch(metrics=numbers({tracker_name(k): v for k, v in logs.items()}), step=state.global_step)

    def finish(self) -> None:
        """After the report is written: its files as artifacts, its numbers as final metrics, the run ended."""
        if self.run_id is None:
            return
        metrics_file = self.run_dir / "metrics.json"
        if metrics_file.is_file():
            import json

            self._batch(metrics=final_metrics(json.loads(metrics_file.read_text())))
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.set_terminated(self.run_id, "FINISHED")
        self.run_id = None

    def _batch(self, params: dict[str, str] | None = None, metrics: dict[str, float] | None = None, step=0):
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        params_list = [Param(k, v) for k, v in (params or {}).items()]
        metric_list = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
        for i in range(0, max(len(params_list), len(metric_list)), BATCH):
            self.client.log_batch(self.run_id, metrics=metric_list[i : i + BATCH], params=params_list[i : i + BATCH])
