"""OpenAI's fine-tuning API (``hardware=openai``) through the official ``openai`` SDK.

Files are found again by name (the name carries the run id and the content hash), jobs by their training file,
and each job carries ``metadata.hydratune_run``. The fine-tuned model stays at OpenAI: it is evaluated through chat
completions by its id.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any

from launchers.cloud.client import stainless_errors
from launchers.cloud.provider import FileInfo, Job, JobError, pages, require_key
from trainer.config.errors import UserError
from trainer.engine import objectives

MAX_LIST_PAGES = 50
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier", "dpo_beta")


class OpenAI:
    name = "openai"
    #: OpenAI trains function calling from rows with tools and tool_calls (provider_data.py sends them).
    tools = True
    settings = (
        "it supports objective=sft or dpo and the hyperparameters hardware.n_epochs, batch_size, "
        "learning_rate_multiplier (a number or auto), dpo_beta (objective=dpo), seed and suffix."
    )

    def __init__(self, hw: Any) -> None:
        self.hw = hw

    # ------------------------------------------------------------ config

    @cached_property
    def client(self) -> Any:
        return self.make_client()

    def make_client(self) -> Any:
        import openai

        hw = self.hw
        require_key(hw, "OPENAI_API_KEY", "OpenAI")
        kwargs = {"base_url": hw.base_url} if hw.base_url else {}
        return openai.OpenAI(
            api_key=hw.api_key or None, organization=hw.organization, project=hw.project, max_retries=0, **kwargs
        )

    def model_name(self, cfg: Any) -> str:
        return str(cfg.model.name_or_path)

    def check(self, cfg: Any) -> None:
        hw = cfg.hardware
        for key in HYPERPARAMETERS:
            value = hw[key]
            if value != "auto" and not (isinstance(value, int | float) and not isinstance(value, bool) and value > 0):
                raise UserError(f"hardware.{key}={value} must be a positive number or auto.")

    def price_table(self, cfg: Any) -> dict[str, float]:
        return {str(k): float(v) for k, v in cfg.hardware.price_per_million_training_tokens.items()}

    def epochs(self, cfg: Any) -> Any:
        return cfg.hardware.n_epochs

    def wants_validation(self, cfg: Any) -> bool:
        return True  # validation losses in the job's events

    # ------------------------------------------------------------ files

    def find_file(self, retry: Any, filename: str) -> str | None:
        for f in pages(self.client.files.list, retry, "list files", MAX_LIST_PAGES, purpose="fine-tune", limit=100):
            if f.filename == filename and f.status not in ("error", "deleted"):
                return f.id
        return None

    def create_file(self, path: Path, filename: str) -> str:
        data = path.read_bytes()
        return self.client.files.create(file=(filename, data, "application/jsonl"), purpose="fine-tune").id

    def file_status(self, retry: Any, file_id: str) -> FileInfo:
        f = retry(self.client.files.retrieve, file_id, what="file status")
        status = {"processed": "processed", "error": "error", "failed": "error", "deleted": "error"}
        return FileInfo(file_id, status.get(f.status, "pending"), getattr(f, "status_details", None) or f.status)

    # ------------------------------------------------------------ jobs

    def job_args(self, cfg: Any, model: str, training_file: str, validation_file: str | None, run_id: str) -> dict:
        hw, method = cfg.hardware, objectives.provider_method(cfg)  # supervised or dpo, from objective=...
        hyper = {k: _number_or_auto(hw[k]) for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
        if method == "dpo":
            hyper["beta"] = _number_or_auto(hw.dpo_beta)
        out: dict[str, Any] = {
            "model": model,
            "training_file": training_file,
            "method": {"type": method, method: {"hyperparameters": hyper}},
        }
        if validation_file:
            out["validation_file"] = validation_file
        if hw.seed is not None:
            out["seed"] = int(hw.seed)
        if hw.suffix:
            out["suffix"] = str(hw.suffix)
        out.update(self.metadata(run_id))
        return out

    def metadata(self, run_id: str) -> dict[str, Any]:
        return {"metadata": {"hydratune_run": run_id}}

    def find_job(self, retry: Any, training_file: str) -> str | None:
        for job in pages(self.client.fine_tuning.jobs.list, retry, "list jobs", MAX_LIST_PAGES, limit=100):
            if job.training_file == training_file:
                return job.id
        return None

    def create_job(self, args: dict[str, Any]) -> str:
        return self.client.fine_tuning.jobs.create(**args).id

    def job(self, retry: Any, job_id: str) -> Job:
        return _job(retry(self.client.fine_tuning.jobs.retrieve, job_id, what="job status"))

    def cancel(self, retry: Any, job_id: str) -> Job:
        return _job(retry(self.client.fine_tuning.jobs.cancel, job_id, what="cancel job"))

    def events(self, retry: Any, job_id: str, seen: set[str]) -> list[dict[str, Any]]:
        new = []
        listed = pages(self.client.fine_tuning.jobs.list_events, retry, "job events", MAX_LIST_PAGES, limit=100,
                       fine_tuning_job_id=job_id)  # fmt: skip
        for e in listed:
            if e.id in seen:
                break  # pages come newest first: the rest were read before
            new.append(e)
        new.reverse()
        return [
            {
                "id": e.id,
                "created_at": e.created_at,
                "level": e.level,
                "message": e.message,
                "type": getattr(e, "type", None),
                "data": plain(getattr(e, "data", None)),
            }
            for e in new
        ]

    def checkpoints(self, retry: Any, job_id: str) -> list[dict[str, Any]]:
        page = retry(self.client.fine_tuning.jobs.checkpoints.list, job_id, what="job checkpoints", limit=100)
        return [
            {
                "id": c.id,
                "step": c.step_number,
                "model": c.fine_tuned_model_checkpoint,
                "metrics": plain(getattr(c, "metrics", None)),
            }
            for c in page.data
        ]

    # ------------------------------------------------------------ result

    def fetch_result(self, cfg: Any, state: Any, retry: Any, job: Job, run_dir: Path) -> dict[str, Any]:
        return {}  # the fine-tuned model stays at the provider, queried by its id

    def base_model(self, cfg: Any) -> str | None:
        return self.model_name(cfg)

    def serving(self, cfg: Any, state: Any, tuned: str | None) -> AbstractContextManager[str | None]:
        return nullcontext(tuned)


def sdk_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    return stainless_errors("openai")


def make(hw: Any) -> OpenAI:
    return OpenAI(hw)


def _job(job: Any) -> Job:
    err = job.error
    error = JobError(err.code, err.message, err.param) if err and (err.code or err.message) else None
    return Job(job.id, job.status, job.model, job.fine_tuned_model, job.trained_tokens, error, job.status)


def _number_or_auto(value: Any) -> Any:
    if value in (None, "auto"):
        return "auto"
    return float(value) if isinstance(value, float) or "." in str(value) else int(value)


def plain(data: Any) -> Any:
    if data is None or isinstance(data, dict | list | str | int | float):
        return data
    return data.model_dump(exclude_none=True) if hasattr(data, "model_dump") else dict(data)
