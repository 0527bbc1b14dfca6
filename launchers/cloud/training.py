"""A provider fine-tuning run, top to bottom: prepare -> upload -> job -> follow -> evaluate -> report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from launchers.cloud import jobs, uploads
from launchers.cloud import provider as provider_api
from launchers.cloud.client import user_errors
from launchers.cloud.prepare import Prepared, prepare
from launchers.cloud.provider import Job, Provider
from launchers.cloud.retrying import Retry
from launchers.cloud.state import FILE_NAME as STATE_FILE
from launchers.cloud.state import State
from trainer.config.errors import UserError

log = logging.getLogger(__name__)


def run(cfg: Any, command: str) -> None:
    with user_errors(cfg.output_dir, cfg.hardware.max_retries):
        _run(cfg, command)


def _run(cfg: Any, command: str) -> None:
    from trainer.run import rundir

    run_dir = Path(cfg.output_dir)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per poll otherwise
    run_dir = rundir.start(cfg, run_dir, command, carry=(STATE_FILE,))  # eval of a finished run: a sub-dir
    prepared = prepare(cfg, run_dir)
    if command == "prepare":
        return
    provider, retry, state = provider_api.get(cfg.hardware), Retry.from_hw(cfg.hardware), State(run_dir)
    events = jobs.EventLog(run_dir, metrics_log=cfg.logger.name != "none")
    if cfg.logger.name in ("tensorboard", "wandb"):
        log.warning("logger=%s: provider runs log their metrics to metrics.jsonl and the report only", cfg.logger.name)
    if command == "eval":
        if not (state.job and state.job.get("status") == "succeeded"):
            raise UserError(f"{run_dir} has no succeeded provider job to evaluate; run `hydratune train` first.")
        job = provider.job(retry, state.job["id"])
    else:
        state.save()  # the run id exists before anything is uploaded
        job = train(cfg, provider, state, retry, prepared, events)
    finish(cfg, provider, state, retry, prepared, job, events, run_dir)


def train(cfg: Any, provider: Provider, state: State, retry: Retry, prepared: Prepared, events: jobs.EventLog) -> Job:
    """Upload (once), create or find the job, follow it to the end; the succeeded job, else a UserError. A provider
    with training primitives instead of jobs (Tinker) runs hydratune's own loop there: its ``train_loop``."""
    loop = getattr(provider, "train_loop", None)
    if loop is not None:
        try:
            return loop(cfg, state, events)
        except KeyboardInterrupt:
            raise UserError(
                f"Interrupted. Run the same command again to resume from the last saved state: {cfg.output_dir} "
                "records it, so no step before it is trained (or paid for) again."
            ) from None
    model = provider.model_name(cfg)
    wanted = jobs.settings(provider, cfg, model, prepared.train_sha256, prepared.validation_sha256)
    jobs.check_settings(state, wanted)
    try:
        job_id = start_job(cfg, provider, state, retry, prepared, model, wanted)
    except KeyboardInterrupt:
        raise UserError(
            f"Interrupted before the job was recorded. Run the same command again to resume: {cfg.output_dir} "
            "remembers what was uploaded and finds a job that was already created, so nothing is paid twice."
        ) from None
    try:
        job = jobs.follow(provider, state, retry, job_id, events)
    except KeyboardInterrupt:
        raise interrupted(cfg, provider, state, retry, job_id) from None
    if job.status != "succeeded":
        raise jobs.failure(job)
    state.update_job(checkpoints=provider.checkpoints(retry, job_id), trained_tokens=job.trained_tokens)
    return job


def start_job(
    cfg: Any, provider: Provider, state: State, retry: Retry, prepared: Prepared, model: str, wanted: dict
) -> str:
    train_id = uploads.upload(provider, state, retry, prepared.train_path, "train", prepared.train_sha256)
    val_id = None
    if (
        prepared.validation_path is not None
        and prepared.validation_sha256 is not None
        and provider.wants_validation(cfg)
    ):
        val_id = uploads.upload(
            provider, state, retry, prepared.validation_path, "validation", prepared.validation_sha256
        )
    args = provider.job_args(cfg, model, train_id, val_id, state.run_id)
    return jobs.ensure_job(provider, state, retry, args, wanted)


def interrupted(cfg: Any, provider: Provider, state: State, retry: Retry, job_id: str) -> UserError:
    where = f"hydra.run.dir={cfg.output_dir}"
    if cfg.hardware.on_interrupt == "cancel":
        job = jobs.cancel(provider, state, retry, job_id)
        return UserError(f"Interrupted: fine-tuning job {job_id} was cancelled (status {job.status}).")
    return UserError(
        f"Interrupted: detached from fine-tuning job {job_id}, which keeps running at the provider. "
        f"Reattach with `hydratune job-attach {where}` (or run the same command again), see it with "
        f"`hydratune job-status {where}`, cancel it with `hydratune job-cancel {where}`."
    )


def finish(
    cfg: Any,
    provider: Provider,
    state: State,
    retry: Retry,
    prepared: Prepared,
    job: Job,
    events: jobs.EventLog,
    run_dir: Path,
) -> None:
    """Evaluate, write metrics.json and the report (the CLI reads the configured objective from metrics.json)."""
    history = events.history()
    result = provider.fetch_result(cfg, state, retry, job, run_dir)
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
            **result,
        },
    }
    if prepared.lifecycle is not None and prepared.lifecycle.closing_soon:
        metrics["lifecycle"] = prepared.lifecycle.as_dict()
    if cfg.eval.enabled and result.get("weights"):  # downloaded: evaluated here, as a local run is
        from trainer.engine import downloaded

        metrics.update(downloaded.evaluate(cfg, run_dir, run_dir / result["weights"]))
    elif cfg.eval.enabled:
        tuned = job.fine_tuned_model
        assert tuned is not None, f"job {job.id} succeeded without a fine-tuned model name"
        metrics.update(evaluate_all(cfg, provider, state, retry, prepared, tuned, run_dir))
    if cfg.eval.enabled:
        metrics.setdefault("objective", {"name": cfg.objective.name, "headline": list(cfg.objective.headline)})
        add_break_even(cfg, metrics, prepared, job)
    write_report(run_dir, metrics, history, f"{cfg.run_name}: {job.model} fine-tuned at {cfg.hardware.provider}")
    state.update_job(reported=True)


def add_break_even(cfg: Any, metrics: dict[str, Any], prepared: Prepared, job: Job) -> None:
    """The report's cost and break-even: the job's billed training tokens x the training price, against the
    K-shot prompts' longer queries (trainer.evaluation.cost)."""
    from trainer.evaluation import cost
    from trainer.evaluation import local as evaluation

    queries = evaluation.queries(prepared.examples.validation, cfg.eval.max_examples)
    section = cost.provider(cfg, metrics, metrics["cost"], job.trained_tokens, queries, prepared.examples.train)
    if section is None and metrics["cost"]["usd_per_million"] is None:
        log.warning(
            "no training price for %s (hardware.price_per_million_training_tokens): no break-even in the report",
            metrics["cost"]["model"],
        )
    if section is not None:
        metrics["break_even"] = section


def _final(history: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for h in history:
        out.update({k: v for k, v in h.items() if k != "step"})
    return out


def evaluate_all(
    cfg: Any, provider: Provider, state: State, retry: Retry, prepared: Prepared, tuned: str | None, run_dir: Path
) -> dict[str, Any]:
    """Base, few-shot base and fine-tuned columns (and eval.compare_models) on the same held-out queries as a
    local run, with the same metrics: trainer.evaluation.endpoint with this provider's client and retries."""
    from trainer.evaluation import endpoint as endpoint_eval
    from trainer.evaluation import local as evaluation

    ev, hw = cfg.eval, cfg.hardware
    queries = evaluation.queries(prepared.examples.validation, ev.max_examples)
    if not queries:
        log.warning("no held-out examples: evaluation skipped")
        return {}
    client, base = provider.client, provider.base_model(cfg)

    def section(model: str, label: str, qs: list) -> dict[str, Any]:
        return endpoint_eval.evaluate(
            client, model, qs, ev, hw.eval_concurrency, retry, label, run_dir / f"predictions_{label}.jsonl"
        )

    out: dict[str, Any] = {}
    if base and ev.compare_base:
        out["base"] = section(base, "base", queries)
    if base and ev.few_shot:
        demos = evaluation.queries(prepared.examples.train, int(ev.few_shot))
        out["few_shot"] = section(base, "few_shot", [evaluation.with_demonstrations(q, demos) for q in queries])
    with provider.serving(cfg, state, tuned) as model:
        if model:
            out["finetuned"] = section(model, "finetuned", queries)
    compared = endpoint_eval.compare_models(ev, queries, run_dir=run_dir)
    if compared:
        out["compare"] = compared
    return out


def write_report(run_dir: Path, metrics: dict, history: list[dict], title: str) -> None:
    from trainer.report.files import write_report as write

    write(run_dir, metrics, history, title)
