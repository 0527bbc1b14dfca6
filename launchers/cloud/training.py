"""A provider fine-tuning run, top to bottom: prepare -> upload -> job -> follow -> evaluate -> report."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from launchers.cloud import azure_deploy, evaluate, jobs, uploads
from launchers.cloud.checks import check_cloud
from launchers.cloud.client import make_client, user_errors
from launchers.cloud.prepare import Prepared, prepare, provider_model
from launchers.cloud.retrying import Retry
from launchers.cloud.state import State
from trainer import objectives
from trainer.errors import UserError

log = logging.getLogger(__name__)


def run(cfg: Any, command: str) -> float | None:
    with user_errors(cfg.output_dir, cfg.hardware.max_retries):
        return _run(cfg, command)


def _run(cfg: Any, command: str) -> float | None:
    check_cloud(cfg)
    from trainer import rundir

    run_dir = Path(cfg.output_dir)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per poll otherwise
    rundir.start(cfg, run_dir, command)
    prepared = prepare(cfg, run_dir)
    if command == "prepare":
        return None
    client, retry, state = make_client(cfg.hardware), Retry.from_hw(cfg.hardware), State(run_dir)
    events = jobs.EventLog(run_dir, metrics_log=cfg.logger.name != "none")
    if cfg.logger.name in ("tensorboard", "wandb"):
        log.warning("logger=%s: provider runs log their metrics to metrics.jsonl and the report only", cfg.logger.name)
    if command == "eval":
        if not (state.job and state.job.get("status") == "succeeded"):
            raise UserError(f"{run_dir} has no succeeded provider job to evaluate; run `hydratune train` first.")
        job = client.fine_tuning.jobs.retrieve(state.job["id"])
    else:
        state.save()  # the run id exists before anything is uploaded
        job = train(cfg, client, state, retry, prepared, events)
    return finish(cfg, client, state, retry, prepared, job, events, run_dir)


def train(cfg: Any, client: Any, state: State, retry: Retry, prepared: Prepared, events: jobs.EventLog) -> Any:
    """Upload (once), create or find the job, follow it to the end; the succeeded job, else a UserError."""
    hw, model, method = cfg.hardware, provider_model(cfg), objectives.provider_method(cfg)
    wanted = jobs.settings(hw, model, prepared.train_sha256, prepared.validation_sha256, method)
    jobs.check_settings(state, wanted)
    try:
        job_id = start_job(client, state, retry, prepared, hw, model, wanted, method)
    except KeyboardInterrupt:
        raise UserError(
            f"Interrupted before the job was recorded. Run the same command again to resume: {cfg.output_dir} "
            "remembers what was uploaded and finds a job that was already created, so nothing is paid twice."
        ) from None
    try:
        job = jobs.follow(client, state, retry, job_id, events)
    except KeyboardInterrupt:
        raise interrupted(cfg, client, state, retry, job_id) from None
    if job.status != "succeeded":
        raise jobs.failure(job)
    state.update_job(checkpoints=jobs.checkpoints(client, retry, job_id), trained_tokens=job.trained_tokens)
    return job


def start_job(
    client: Any, state: State, retry: Retry, prepared: Prepared, hw: Any, model: str, wanted: dict, method: str
) -> str:
    train_id = uploads.upload(client, state, retry, prepared.train_path, "train", prepared.train_sha256)
    val_id = None
    if prepared.validation_path is not None:
        val_id = uploads.upload(
            client, state, retry, prepared.validation_path, "validation", prepared.validation_sha256
        )
    args = jobs.params(hw, model, train_id, val_id, state.run_id, method)
    return jobs.ensure_job(client, state, retry, args, wanted)


def interrupted(cfg: Any, client: Any, state: State, retry: Retry, job_id: str) -> UserError:
    where = f"hydra.run.dir={cfg.output_dir}"
    if cfg.hardware.on_interrupt == "cancel":
        job = jobs.cancel(client, state, retry, job_id)
        return UserError(f"Interrupted: fine-tuning job {job_id} was cancelled (status {job.status}).")
    return UserError(
        f"Interrupted: detached from fine-tuning job {job_id}, which keeps running at the provider. "
        f"Reattach with `hydratune job-attach {where}` (or run the same command again), see it with "
        f"`hydratune job-status {where}`, cancel it with `hydratune job-cancel {where}`."
    )


def finish(
    cfg: Any,
    client: Any,
    state: State,
    retry: Retry,
    prepared: Prepared,
    job: Any,
    events: jobs.EventLog,
    run_dir: Path,
) -> float | None:
    history = events.history()
    metrics: dict[str, Any] = {
        "cost": prepared.estimate.as_dict(),
        "job": {
            "id": job.id,
            "provider": cfg.hardware.provider,
            "model": job.model,
            "fine_tuned_model": job.fine_tuned_model,
            "trained_tokens": job.trained_tokens,
            "checkpoints": (state.job or {}).get("checkpoints", []),
            "final": _final(history),
        },
    }
    if cfg.eval.enabled:
        metrics.update(evaluate_all(cfg, client, state, retry, prepared, job.fine_tuned_model, run_dir))
    write_report(run_dir, metrics, history, f"{cfg.run_name}: {job.model} fine-tuned at {cfg.hardware.provider}")
    state.update_job(reported=True)
    eval_loss = metrics["job"]["final"].get("eval_loss")
    return float(eval_loss) if eval_loss is not None else None


def _final(history: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for h in history:
        out.update({k: v for k, v in h.items() if k != "step"})
    return out


def evaluate_all(
    cfg: Any, client: Any, state: State, retry: Retry, prepared: Prepared, tuned: str, run_dir: Path
) -> dict[str, Any]:
    """Base, few-shot base and fine-tuned columns on the same held-out examples, with the same metrics."""
    from hydra.utils import instantiate

    ev, hw = cfg.eval, cfg.hardware
    rows = prepared.validation_rows[: ev.max_examples] if ev.max_examples else prepared.validation_rows
    pairs = [p for p in map(evaluate.prompt_and_reference, rows) if p]
    if not pairs:
        log.warning("no held-out examples: evaluation skipped")
        return {}
    metrics = [instantiate(m) for m in ev.metrics]
    azure = hw.provider == "azure_openai"
    base = hw.base_deployment if azure else provider_model(cfg)
    common = {
        "pairs": pairs,
        "metrics": metrics,
        "gen_args": evaluate.generation_args(ev.generation),
        "concurrency": hw.eval_concurrency,
    }
    out: dict[str, Any] = {}
    if base and ev.compare_base:
        out["base"] = evaluate.evaluate(
            client, retry, base, predictions_path=run_dir / "predictions_base.jsonl", **common
        )
    if base and ev.few_shot:
        demos = evaluate.demonstrations(prepared.train_rows, int(ev.few_shot))
        out["few_shot"] = evaluate.evaluate(
            client, retry, base, demos=demos, predictions_path=run_dir / "predictions_few_shot.jsonl", **common
        )
    if azure and not base:
        log.warning("Azure: hardware.base_deployment is not set, so the base model is not evaluated.")
    with azure_deploy.deployed(cfg, state, tuned) if azure else nullcontext(tuned) as model:
        if model:
            out["finetuned"] = evaluate.evaluate(
                client, retry, model, predictions_path=run_dir / "predictions_finetuned.jsonl", **common
            )
    return out


def write_report(run_dir: Path, metrics: dict, history: list[dict], title: str) -> None:
    from trainer.report import write_report as write

    write(run_dir, metrics, history, title)
