"""`hydratune job-status|job-attach|job-cancel hydra.run.dir=DIR`: act on the job a run dir recorded.

These commands do not compose a new config (that would overwrite the run's own): they load the config the run
saved in DIR/config.yaml; credentials come from the environment as usual.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from launchers.cloud import jobs
from launchers.cloud import provider as provider_api
from launchers.cloud.client import user_errors
from launchers.cloud.retrying import Retry
from launchers.cloud.state import FILE_NAME, State
from trainer.config.errors import UserError
from trainer.config.schema import CloudHardwareSchema
from trainer.run.rundir import REDACTED

ACTIONS = ("status", "attach", "cancel")


def job_main(action: str, args: list[str]) -> None:
    """Entry point for the CLI words; ``args`` holds ``hydra.run.dir=DIR`` (or just DIR)."""
    dirs = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")] or [a for a in args if "=" not in a]
    if len(dirs) != 1:
        raise UserError(f"`hydratune job-{action}` needs the run dir: `hydratune job-{action} hydra.run.dir=DIR`.")
    job_command(load_run_config(Path(dirs[0])), action)


def load_run_config(run_dir: Path) -> Any:
    """The config the run saved (resolved, secrets redacted); redacted secrets come from the environment again."""
    saved = run_dir / "config.yaml"
    if not (run_dir / FILE_NAME).is_file() or not saved.is_file():
        raise UserError(f"{run_dir} holds no provider run ({FILE_NAME} or config.yaml is missing).")
    cfg = OmegaConf.load(saved)
    cfg.hardware = OmegaConf.merge(OmegaConf.structured(CloudHardwareSchema), cfg.hardware)  # typed, as composed
    hw = cfg.hardware
    if hw.api_key == REDACTED:
        hw.api_key = None  # the SDK reads OPENAI_API_KEY / AZURE_OPENAI_API_KEY
    if OmegaConf.select(cfg, "hardware.deployment.token") == REDACTED:
        hw.deployment.token = os.environ.get("AZURE_MANAGEMENT_TOKEN")
    cfg.output_dir = str(run_dir)
    return cfg


def job_command(cfg: Any, action: str) -> dict[str, Any] | None:
    """status: print the recorded job's state; attach: follow it to the end (and evaluate); cancel: cancel it."""
    with user_errors(cfg.output_dir, cfg.hardware.max_retries):
        return _job_command(cfg, action)


def _job_command(cfg: Any, action: str) -> dict[str, Any] | None:
    if action not in ACTIONS:
        raise UserError(f"Unknown job action '{action}'. Actions: {', '.join(ACTIONS)}.")
    run_dir = Path(cfg.output_dir)
    state = State(run_dir)
    if not (state.job and state.job.get("id")):
        raise UserError(f"No provider job is recorded in {run_dir}/{FILE_NAME}; start one with `hydratune train`.")
    if action == "attach":
        if state.job.get("reported"):
            action = "status"
        else:
            from launchers.cloud.training import run

            run(cfg, "train")
            return None
    provider, retry = provider_api.get(cfg.hardware), Retry.from_hw(cfg.hardware)
    job_id = state.job["id"]
    if action == "cancel":
        job = jobs.cancel(provider, state, retry, job_id)
        print(f"hydratune: job {job_id}: {job.status}")
        return {"id": job_id, "status": job.status}
    job = provider.job(retry, job_id)
    state.update_job(status=job.status, fine_tuned_model=job.fine_tuned_model)
    events = jobs.EventLog(run_dir, metrics_log=cfg.logger.name != "none")
    events.fetch(provider, retry, job_id)
    info = {
        "id": job.id,
        "status": job.status,
        "model": job.model,
        "fine_tuned_model": job.fine_tuned_model,
        "trained_tokens": job.trained_tokens,
        "error": job.error.model_dump() if job.error else None,
        "last_events": [e["message"] for e in events.events[-5:]],
    }
    print(json.dumps(info, indent=2))
    return info
