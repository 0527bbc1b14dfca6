"""Fine-tuning jobs: create once (or find the one a crashed run created), follow it, read events and checkpoints.

A job is found again by its training file: file ids are unique to this run (see uploads.py), so a job at the
provider with this run's training file is this run's job, even when the crash came before the state file
recorded it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from launchers.cloud.client import api_error, transient
from launchers.cloud.provider import TERMINAL, Job, Provider
from launchers.cloud.retrying import Retry
from launchers.cloud.state import State
from trainer.config.errors import UserError

log = logging.getLogger(__name__)
EVENTS_FILE = "cloud_events.jsonl"
METRICS_FILE = "metrics.jsonl"  # the local runs' training log (trainer/run/loggers.py)


def settings(provider: Provider, cfg: Any, model: str, train_sha256: str, validation_sha256: str | None) -> dict:
    """What a job is made of, known before any upload: model, method, seed, suffix and the data's hashes."""
    args = provider.job_args(cfg, model, "", None, "")
    kept = {k: v for k, v in args.items() if k not in ("training_file", "validation_file", "metadata")}
    return json.loads(json.dumps({**kept, "train_sha256": train_sha256, "validation_sha256": validation_sha256}))


def check_settings(state: State, wanted: dict[str, Any]) -> None:
    """A run dir belongs to one job: refuse to attach to it with other data or hyperparameters."""
    recorded = (state.job or {}).get("settings")
    if state.job and state.job.get("id") and recorded is not None and recorded != wanted:
        changed = sorted(k for k in {*recorded, *wanted} if recorded.get(k) != wanted.get(k))
        raise UserError(
            f"{state.path.parent} belongs to fine-tuning job {state.job['id']}, which was created with other "
            f"settings ({', '.join(changed)} changed since). Nothing was uploaded. Start a new run in another "
            "directory (hydra.run.dir=...) to train with the new settings, or restore the old ones to reattach."
        )


def ensure_job(provider: Provider, state: State, retry: Retry, create_args: dict[str, Any], job_settings: dict) -> str:
    """This run's job id: the recorded one, the one found at the provider, or a newly created one."""
    if state.job and state.job.get("id"):
        log.info("attaching to job %s", state.job["id"])
        return state.job["id"]
    attempt = 0
    while True:
        found = provider.find_job(retry, create_args["training_file"])
        if found is not None:
            log.info("found job %s at the provider (created before a crash); attaching", found)
            job_id = found
            break
        try:
            job_id = provider.create_job(create_args)
            break
        except Exception as exc:  # noqa: BLE001 - transient errors retry after checking for the job
            retry_it, retry_after = transient(exc)
            if not retry_it:
                raise api_error(exc, "to create the fine-tuning job") from exc
            if attempt >= retry.retries:
                raise
            retry.wait(attempt, retry_after)
            attempt += 1
    state.update_job(id=job_id, model=create_args["model"], status="created", settings=job_settings)
    log.info("fine-tuning job %s", job_id)
    return job_id


class EventLog:
    """Provider events appended once each to cloud_events.jsonl. Metrics events are mapped to HF Trainer's
    log_history shape ({"step", "loss"} and {"step", "eval_loss"}) and, unless logger=none, appended to
    metrics.jsonl like a local run's training log."""

    def __init__(self, run_dir: Path, metrics_log: bool = True) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.metrics_path = Path(run_dir) / METRICS_FILE if metrics_log else None
        self.events = [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.is_file() else []
        self.seen = {e["id"] for e in self.events}

    def fetch(self, provider: Provider, retry: Retry, job_id: str) -> list[dict[str, Any]]:
        return self.add(provider.events(retry, job_id, self.seen), job_id)

    def add(self, rows: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
        """Append new events (a loop-style provider's own, one per step); the ones not seen before."""
        rows = [r for r in rows if r["id"] not in self.seen]
        if self.metrics_path is not None:
            with open(self.metrics_path, "a") as f:
                for row in rows:
                    for record in _records(row):
                        f.write(json.dumps({**record, "time": row["created_at"], "job_id": job_id}) + "\n")
        with open(self.path, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
                self.seen.add(row["id"])
        self.events += rows
        return rows

    def history(self) -> list[dict[str, Any]]:
        return [record for e in self.events for record in _records(e)]


def _records(event: dict[str, Any]) -> list[dict[str, Any]]:
    """A provider metrics event as log_history entries: train_loss -> loss, valid_loss -> eval_loss."""
    data = event.get("data") or {}
    if event.get("type") != "metrics" or "step" not in data:
        return []
    step, out = int(data["step"]), []
    if data.get("train_loss") is not None:
        out.append(
            {
                "step": step,
                "loss": data["train_loss"],
                **_opt("mean_token_accuracy", data.get("train_mean_token_accuracy")),
                **(data.get("train_metrics") or {}),  # a loop-style provider's objective metrics (GRPO's rewards)
            }
        )
    if data.get("valid_loss") is not None:
        out.append(
            {
                "step": step,
                "eval_loss": data["valid_loss"],
                **_opt("eval_mean_token_accuracy", data.get("valid_mean_token_accuracy")),
            }
        )
    return out


def _opt(key: str, value: Any) -> dict[str, Any]:
    return {} if value is None else {key: value}


def follow(provider: Provider, state: State, retry: Retry, job_id: str, events: EventLog) -> Job:
    """Poll the job (with backoff) until it ends; log its status changes and events. Returns the final job."""
    last = None
    polls = retry.polls()
    while True:
        job = provider.job(retry, job_id)
        for e in events.fetch(provider, retry, job_id):
            log.info("[%s] %s", job_id, e["message"])
        if job.status != last:
            log.info("job %s: %s", job_id, job.status)
            state.update_job(status=job.status, fine_tuned_model=job.fine_tuned_model)
            last, polls = job.status, retry.polls()
        if job.status in TERMINAL:
            return job
        time.sleep(next(polls))


def failure(job: Job) -> UserError:
    err = job.error
    if job.status == "cancelled":
        return UserError(
            f"Fine-tuning job {job.id} was cancelled. Start a new run (another hydra.run.dir) to train "
            "again; this run dir stays attached to the cancelled job."
        )
    parts = [f"code {err.code}" if err and err.code else "", f"param {err.param}" if err and err.param else ""]
    detail = ", ".join(p for p in parts if p)
    message = err.message if err and err.message else "no message given"
    return UserError(
        f"Fine-tuning job {job.id} failed: {message}"
        + (f" ({detail})" if detail else "")
        + ". Fix the cause and start a new run (another hydra.run.dir); this run dir stays attached to "
        "the failed job."
    )


def cancel(provider: Provider, state: State, retry: Retry, job_id: str) -> Job:
    job = provider.cancel(retry, job_id)
    state.update_job(status=job.status)
    return job
