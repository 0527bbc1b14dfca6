"""The interface every fine-tuning provider implements, and the registry that picks one by ``hardware.provider``.

A provider is one module in launchers/cloud/providers/ (named like its ``hardware.provider`` value: the registry
finds it there, nothing lists it) plus its ``hardware/`` option (which names the model options it trains and the
objectives it offers) and a fake server its real SDK talks to under tests/. The module defines ``make(hw)``, returning
the Provider, and ``sdk_errors()``: (connection errors, HTTP status errors, any API error) of its SDK, for the
retries (launchers/cloud/client.py). The generic code around it (uploads.py, jobs.py, training.py) does what must hold for every
provider: the run dir remembers uploads and jobs so nothing is paid twice, transient errors are retried, secrets come
from the environment only and the cost is estimated before anything is uploaded. The provider only speaks its API:

- files: find one by name, upload one, report whether it is processed;
- jobs: the create arguments from the config, find one by training file, create one, read one, cancel one;
- events (with metrics) and checkpoints of a job;
- or, for a provider with training primitives instead of jobs (Tinker), ``train_loop(cfg, state, events) -> Job``:
  hydratune's own loop, run step by step at the provider, resuming from the state the run dir records;
- ``tools = True`` for a provider whose format takes function calling (rows' ``tools`` and ``tool_calls``, sent in
  OpenAI's shape by provider_data.py);
- the result: where the fine-tuned model is (a model id to query, or weights downloaded into the run dir) and how
  the evaluation reaches the base and fine-tuned models.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from trainer.config.errors import UserError


def names() -> tuple[str, ...]:
    """Every provider: hardware.provider -> module launchers.cloud.providers.<name> (found, not listed)."""
    from launchers.cloud import providers

    return tuple(sorted(m.name for m in pkgutil.iter_modules(providers.__path__) if not m.name.startswith("_")))


#: hardware.provider -> the extra that installs its SDK, where it is not named like the provider.
EXTRAS = {"openai": "cloud", "azure_openai": "cloud"}
#: Normalized job states: every provider maps its own onto these.
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class JobError:
    code: str | None
    message: str | None
    param: str | None

    def model_dump(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}


@dataclass
class Job:
    """A provider's job in the shape the generic code reads (status normalized: ... succeeded, failed, cancelled)."""

    id: str
    status: str
    model: str | None
    fine_tuned_model: str | None
    trained_tokens: int | None
    error: JobError | None = None
    #: The provider's own status word (Together's "completed", "user_error" ...), for the logs.
    provider_status: str | None = None


@dataclass
class FileInfo:
    id: str
    #: processed, pending or error.
    status: str
    details: str | None = None


class Provider(Protocol):
    name: str
    #: What the provider trains and with which of its own keys, for messages (one sentence).
    settings: str

    def model_name(self, cfg: Any) -> str:
        """The model name the provider knows for ``cfg.model``."""

    def check(self, cfg: Any) -> None:
        """Provider-specific compose-time checks (hyperparameters, resources); raise a UserError."""

    def price_table(self, cfg: Any) -> dict[str, float]:
        """USD per 1M billed training tokens, by model name, for this config's kind of job."""

    def epochs(self, cfg: Any) -> Any:
        """The configured epochs (a number, or "auto" for the provider's default rule)."""

    def wants_validation(self, cfg: Any) -> bool:
        """Whether the validation split is uploaded with the training file."""

    # files
    def find_file(self, retry: Any, filename: str) -> str | None: ...
    def create_file(self, path: Path, filename: str) -> str: ...
    def file_status(self, retry: Any, file_id: str) -> FileInfo: ...

    # jobs
    def job_args(self, cfg: Any, model: str, training_file: str, validation_file: str | None, run_id: str) -> dict:
        """The create arguments (run_id may be written into the job's metadata)."""

    def find_job(self, retry: Any, training_file: str) -> str | None: ...
    def create_job(self, args: dict[str, Any]) -> str: ...
    def job(self, retry: Any, job_id: str) -> Job: ...
    def cancel(self, retry: Any, job_id: str) -> Job: ...
    def events(self, retry: Any, job_id: str, seen: set[str]) -> list[dict[str, Any]]:
        """New events, oldest first: {id, created_at, level, message, type, data}; metrics events have type
        "metrics" and data {step, train_loss, valid_loss, ...}."""

    def checkpoints(self, retry: Any, job_id: str) -> list[dict[str, Any]]: ...

    # the result
    def fetch_result(self, cfg: Any, state: Any, retry: Any, job: Job, run_dir: Path) -> dict[str, Any]:
        """Whatever the run keeps of the result (e.g. weights downloaded into the run dir): entries for
        metrics.json's job section; {"weights": DIR} when the fine-tuned model is evaluated locally."""

    def base_model(self, cfg: Any) -> str | None:
        """The name the evaluation asks for the base model (None: no base column)."""

    def serving(self, cfg: Any, state: Any, tuned: str | None) -> AbstractContextManager[str | None]:
        """The name to query the fine-tuned model by, while it is served (Azure deploys it first)."""

    @property
    def client(self) -> Any:
        """The SDK client (made on first use, from the environment: a UserError names a missing variable)."""


def get(hw: Any) -> Provider:
    """The provider of ``hardware.provider`` (nothing is contacted, no credential is read yet)."""
    if hw.provider not in names():
        from trainer.config.errors import choice_error

        raise choice_error("hardware.provider", hw.provider, names())
    try:
        module = importlib.import_module(f"launchers.cloud.providers.{hw.provider}")
    except ImportError as exc:
        raise UserError(
            f"hardware.provider={hw.provider} needs a package that is not installed ({exc.name}): "
            f"pip install 'hydratune[{EXTRAS.get(hw.provider, hw.provider)}]'."
        ) from None
    return module.make(hw)


def require_key(hw: Any, variable: str, provider: str) -> None:
    """A UserError naming ``variable`` when neither it nor ``hardware.api_key`` holds a key (checked before the SDK
    client is made: the key is handed to the SDK, never logged or written)."""
    if not (hw.api_key or os.environ.get(variable)):
        raise UserError(
            f"No {provider} API key: set the environment variable {variable} (hydratune never stores keys; "
            "hardware.api_key=${oc.env:MY_VAR} also works)."
        )


def pages(list_page: Any, retry: Any, what: str, max_pages: int, **kwargs: Any) -> Iterator[Any]:
    """Every item of an OpenAI-style cursor-paginated list (``after`` = the last id seen), newest first."""
    after = None
    for _ in range(max_pages):
        page = retry(list_page, what=what, **kwargs, **({"after": after} if after else {}))
        yield from page.data
        if not page.has_more or not page.data:
            return
        after = page.data[-1].id
