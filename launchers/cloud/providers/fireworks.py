"""Fireworks AI's managed fine-tuning (``hardware=fireworks``) through the official ``fireworks-ai`` SDK.

Open base models (conf/model/fireworks_*.yaml), supervised or DPO, LoRA, with Fireworks' own hyperparameter names
(hardware.epochs, learning_rate, lora_rank ...). Every id is chosen here, so a rerun finds what a crashed run made:
a file is the dataset named like its file (run id + content hash), the job and its output model are named like the
training dataset. After the job the adapter's files are downloaded from the model's signed URLs (with no
credentials) into ``<run dir>/model`` in save_pretrained layout, so they load with peft, are evaluated here like a
local run's and can be served without Fireworks. Fireworks' SFT format is OpenAI's, function calling included: rows
with ``tools`` and ``tool_calls`` are sent as they are (``tools = True``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from launchers.cloud.client import stainless_errors
from launchers.cloud.provider import FileInfo, Job, JobError, require_key
from trainer.config.errors import UserError
from trainer.engine import objectives

log = logging.getLogger(__name__)
WEIGHTS_DIR = "model"
#: Fireworks' single-request upload takes files up to 150 MB; larger ones go through the SDK's signed-URL helper.
UPLOAD_LIMIT_BYTES = 150 * 1024 * 1024
#: Fireworks' job states -> the normalized ones (launchers/cloud/provider.py).
STATUS = {
    "JOB_STATE_UNSPECIFIED": "queued",
    "JOB_STATE_CREATING": "queued",
    "JOB_STATE_PENDING": "queued",
    "JOB_STATE_VALIDATING": "queued",
    "JOB_STATE_CREATING_INPUT_DATASET": "queued",
    "JOB_STATE_RE_QUEUEING": "queued",
    "JOB_STATE_IDLE": "queued",
    "JOB_STATE_PAUSED": "queued",
    "JOB_STATE_RUNNING": "running",
    "JOB_STATE_WRITING_RESULTS": "running",
    "JOB_STATE_CANCELLING": "cancelling",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_EXPIRED": "failed",
    "JOB_STATE_DELETING": "failed",
    "JOB_STATE_DELETING_CLEANING_UP": "failed",
    "JOB_STATE_COMPLETED": "succeeded",
    "JOB_STATE_EARLY_STOPPED": "succeeded",
}
#: A job's collection at Fireworks, by the provider's name for the objective (hardware.objectives).
COLLECTIONS = {"sft": "supervisedFineTuningJobs", "dpo": "dpoJobs"}
#: The SFT create call's own hyperparameters, read from hardware.* when set (null: Fireworks' default).
TRAINING_KEYS = ("learning_rate", "lora_rank", "max_context_length", "batch_size", "gradient_accumulation_steps",
                 "learning_rate_warmup_steps", "optimizer_weight_decay")  # fmt: skip


class Fireworks:
    name = "fireworks"
    tools = True
    settings = (
        "it supports objective=sft or dpo with LoRA (hardware.lora_rank) and the hyperparameters hardware.epochs, "
        "learning_rate, max_context_length, batch_size, gradient_accumulation_steps, learning_rate_warmup_steps, "
        "optimizer_weight_decay, early_stop, upload_validation and dpo_beta."
    )

    def __init__(self, hw: Any) -> None:
        self.hw = hw
        self._last: dict[str, Any] = {}  # job name -> the last answer about it (its events are read from it)

    # ------------------------------------------------------------ config

    @cached_property
    def client(self) -> Any:
        import fireworks

        require_key(self.hw, "FIREWORKS_API_KEY", "Fireworks AI")
        account = self.hw.account_id or os.environ.get("FIREWORKS_ACCOUNT_ID")
        if not account:
            raise UserError(
                "No Fireworks account: set the environment variable FIREWORKS_ACCOUNT_ID (the account id on your "
                "Fireworks dashboard) or hardware.account_id=..."
            )
        logging.getLogger("httpx").setLevel(logging.WARNING)  # the SDK's transport logs every poll otherwise
        return fireworks.Fireworks(
            api_key=self.hw.api_key or None,
            account_id=account,
            base_url=self.hw.base_url or None,
            timeout=float(self.hw.timeout_s),
            max_retries=0,
        )

    def model_name(self, cfg: Any) -> str:
        return str(cfg.model.name_or_path)

    def check(self, cfg: Any) -> None:
        hw, dpo = cfg.hardware, objectives.provider_method(cfg) == "dpo"
        if cfg.method.name == "full":
            raise UserError(
                "method=full asks for full fine-tuning; hardware=fireworks trains LoRA adapters (hardware.lora_rank). "
                "Leave method at its default (lora), or train locally for full fine-tuning."
            )
        if dpo and hw.dpo_beta is not None and not hw.dpo_beta < 0.5:
            raise UserError(f"hardware.dpo_beta={hw.dpo_beta} must be below 0.5 (Fireworks' DPO range is (0, 0.5)).")
        if dpo and (hw.upload_validation or hw.early_stop):
            raise UserError(
                "hardware.upload_validation and early_stop are for supervised jobs: Fireworks' DPO jobs take no "
                "evaluation dataset. Leave them false with objective=dpo."
            )
        if hw.early_stop and not hw.upload_validation:
            raise UserError(
                "hardware.early_stop=true stops on the validation loss, which needs hardware.upload_validation=true."
            )
        if cfg.eval.enabled and cfg.model.weights is None:
            raise UserError(
                f"model.weights is not set for {cfg.model.name_or_path}: hydratune evaluates the downloaded adapter "
                "here and needs the base model's own weights (model.weights.source=hf "
                "model.weights.name_or_path=ORG/NAME), or eval.enabled=false."
            )

    def price_table(self, cfg: Any) -> dict[str, float]:
        hw = cfg.hardware
        factor = float(hw.dpo_price_multiplier) if objectives.provider_method(cfg) == "dpo" else 1.0
        return {str(k): float(v) * factor for k, v in hw.price_per_million_training_tokens.items()}

    def epochs(self, cfg: Any) -> Any:
        return int(cfg.hardware.epochs)

    def wants_validation(self, cfg: Any) -> bool:
        return bool(cfg.hardware.upload_validation) and objectives.provider_method(cfg) != "dpo"

    # ------------------------------------------------------------ files: datasets named like the file

    def _name(self, collection: str, resource_id: str) -> str:
        return f"accounts/{self.client.account_id}/{collection}/{resource_id}"

    def find_file(self, retry: Any, filename: str) -> str | None:
        """The dataset of this name, once its upload is complete (one still uploading is uploaded into again)."""
        found = self._get(retry, self.client.datasets.get, _resource_id(filename), "find dataset")
        return self._name("datasets", _resource_id(filename)) if found and found.state == "READY" else None

    def create_file(self, path: Path, filename: str) -> str:
        from fireworks import ConflictError

        dataset_id = _resource_id(filename)
        with open(path, "rb") as f:
            count = sum(1 for _ in f)
        try:
            self.client.datasets.create(
                dataset_id=dataset_id, dataset={"user_uploaded": {}, "example_count": str(count)}
            )
        except ConflictError:
            log.info("dataset %s exists (created before a crash): uploading into it", dataset_id)
        if path.stat().st_size <= UPLOAD_LIMIT_BYTES:
            self.client.datasets.upload(dataset_id, file=(filename, path.read_bytes(), "application/jsonl"))
        else:  # the SDK's signed-URL upload (untested against the fake: it takes https URLs only)
            from fireworks.lib.dataset_upload import upload_dataset_shards

            upload_dataset_shards(self.client, dataset_id, str(path))
        return self._name("datasets", dataset_id)

    def file_status(self, retry: Any, file_id: str) -> FileInfo:
        found = retry(self.client.datasets.get, _resource_id(file_id), what="dataset status")
        code = getattr(found.status, "code", None)
        if code not in (None, "OK"):
            return FileInfo(file_id, "error", f"{code}: {getattr(found.status, 'message', None) or 'no message'}")
        return FileInfo(file_id, "processed" if found.state == "READY" else "pending", str(found.state))

    # ------------------------------------------------------------ jobs: named like the training dataset

    def job_args(self, cfg: Any, model: str, training_file: str, validation_file: str | None, run_id: str) -> dict:
        hw, method = cfg.hardware, objectives.provider_method(cfg)
        args: dict[str, Any] = {"method": "dpo" if method == "dpo" else "sft", "model": model,
                                "training_file": training_file, "epochs": int(hw.epochs)}  # fmt: skip
        args.update({k: hw[k] for k in TRAINING_KEYS if hw[k] is not None})
        if args["method"] == "sft":
            args["early_stop"] = bool(hw.early_stop)
        elif hw.dpo_beta is not None:
            args["dpo_beta"] = float(hw.dpo_beta)
        if validation_file:
            args["validation_file"] = validation_file
        return args

    def find_job(self, retry: Any, training_file: str) -> str | None:
        job_id = _resource_id(training_file)
        for method, collection in COLLECTIONS.items():
            if self._get(retry, self._jobs(method).get, job_id, "find job") is not None:
                return self._name(collection, job_id)
        return None

    def create_job(self, args: dict[str, Any]) -> str:
        """Create the job named like its training dataset (its output model too: both are found again by name)."""
        args = dict(args)
        method, job_id = args.pop("method"), _resource_id(args["training_file"])
        training = {"base_model": args.pop("model"), "output_model": job_id, "epochs": args.pop("epochs")}
        training.update({k: args.pop(k) for k in TRAINING_KEYS if k in args})
        dataset = args.pop("training_file")
        if method == "dpo":
            loss = {"method": "DPO", **({"dpo": {"beta": args.pop("dpo_beta")}} if "dpo_beta" in args else {})}
            self.client.dpo_jobs.create(dataset=dataset, dpo_job_id=job_id, training_config=training, loss_config=loss)
        else:
            validation = args.pop("validation_file", None)
            self.client.supervised_fine_tuning_jobs.create(
                dataset=dataset, supervised_fine_tuning_job_id=job_id, early_stop=args.pop("early_stop"),
                **training, **({"evaluation_dataset": validation} if validation else {}),
            )  # fmt: skip
        return self._name(COLLECTIONS[method], job_id)

    def job(self, retry: Any, job_id: str) -> Job:
        method, short = _job_parts(job_id)
        found = retry(self._jobs(method).get, short, what="job status")
        self._last[job_id] = found
        word = str(found.state or "JOB_STATE_UNSPECIFIED")
        status = STATUS.get(word, "running")
        error = None
        if status == "failed":
            error = JobError(getattr(found.status, "code", None) or word, getattr(found.status, "message", None), None)
        training = found.training_config if method == "dpo" else found
        base, output = getattr(training, "base_model", None), getattr(training, "output_model", None)
        output = output if output is None or output.startswith("accounts/") else self._name("models", output)
        return Job(job_id, status, base, output, None, error, word)

    def cancel(self, retry: Any, job_id: str) -> Job:
        method, short = _job_parts(job_id)
        retry(self._jobs(method).cancel, short, body={}, what="cancel job")
        return self.job(retry, job_id)

    def events(self, retry: Any, job_id: str, seen: set[str]) -> list[dict[str, Any]]:
        """The job's state changes and progress, read from the last answer about it (Fireworks' API lists no
        events, and documents no per-step metrics: the report has no training curve)."""
        found = self._last.get(job_id)
        if found is None:
            return []
        at = str(getattr(found, "update_time", None) or found.create_time or "")  # a DPO job has no update_time
        word = str(found.state or "JOB_STATE_UNSPECIFIED")
        message = f"{word}: {found.status.message}" if getattr(found.status, "message", None) else word
        level = "error" if STATUS.get(word) == "failed" else "info"
        rows: list[dict[str, Any]] = [
            {
                "id": f"state-{word}",
                "created_at": at,
                "level": level,
                "message": message,
                "type": "status",
                "data": None,
            }
        ]
        progress = getattr(found, "job_progress", None)
        if progress is not None and progress.percent is not None:
            rows.append({"id": f"progress-{progress.epoch}-{progress.percent}", "created_at": at, "level": "info",
                         "message": f"{progress.percent}% done (epoch {progress.epoch})", "type": "progress",
                         "data": {"percent": progress.percent, "epoch": progress.epoch}})  # fmt: skip
        return [r for r in rows if r["id"] not in seen]

    def checkpoints(self, retry: Any, job_id: str) -> list[dict[str, Any]]:
        return []  # the job writes one output model (Job.fine_tuned_model); no intermediate checkpoints are listed

    def _jobs(self, method: str) -> Any:
        return self.client.dpo_jobs if method == "dpo" else self.client.supervised_fine_tuning_jobs

    def _get(self, retry: Any, fn: Any, resource_id: str, what: str) -> Any:
        """``fn(resource_id)``, or None when Fireworks has no such resource."""
        from fireworks import NotFoundError

        try:
            return retry(fn, resource_id, what=what)
        except NotFoundError:
            return None

    # ------------------------------------------------------------ result: the adapter, downloaded

    def fetch_result(self, cfg: Any, state: Any, retry: Any, job: Job, run_dir: Path) -> dict[str, Any]:
        """Download the output model's files into <run dir>/model once; an eval of the finished run (in its
        eval-<time> sub-dir) reuses the recorded download."""
        recorded = state.data.get("weights") or {}
        known = Path(recorded.get("path", "/nonexistent"))
        if recorded.get("job") == job.id and (known / recorded.get("marker", "-")).is_file():
            log.info("weights of %s already downloaded into %s", job.id, known)
            return {"weights": os.path.relpath(known, run_dir), "weights_kind": "adapter"}
        if job.fine_tuned_model is None:
            raise UserError(f"Fireworks job {job.id} succeeded without naming its output model; nothing to download.")
        model_id = _resource_id(job.fine_tuned_model)
        for interval in retry.polls():  # the model is written after the job
            if retry(self.client.models.get, model_id, what="output model").state == "READY":
                break
            time.sleep(interval)
        urls = retry(self.client.models.get_download_endpoint, model_id, what="download endpoint")
        dest = run_dir / WEIGHTS_DIR
        with tempfile.TemporaryDirectory(prefix="hydratune-weights-", dir=run_dir) as tmp:
            for name, url in sorted((urls.filename_to_signed_urls or {}).items()):
                _download(retry, url, Path(tmp) / "files" / _safe_relative(name))
            marker = _move_weights(Path(tmp) / "files", dest)
        state.record("weights", {"job": job.id, "kind": "adapter", "path": str(dest.resolve()), "marker": marker})
        log.info("downloaded the adapter of %s into %s", job.id, dest)
        return {"weights": os.path.relpath(dest, run_dir), "weights_kind": "adapter"}

    def base_model(self, cfg: Any) -> str | None:
        return None  # evaluated here, on model.weights

    def serving(self, cfg: Any, state: Any, tuned: str | None) -> AbstractContextManager[str | None]:
        return nullcontext(tuned)


def sdk_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    return stainless_errors("fireworks")


def make(hw: Any) -> Fireworks:
    return Fireworks(hw)


def _resource_id(name: str) -> str:
    """``accounts/A/datasets/ID`` or ``ID.jsonl`` -> ``ID`` (hydratune's file names are valid Fireworks ids)."""
    return name.rsplit("/", 1)[-1].removesuffix(".jsonl")


def _job_parts(job_name: str) -> tuple[str, str]:
    """``accounts/A/dpoJobs/ID`` -> ("dpo", "ID")."""
    collection, short = job_name.split("/")[-2:]
    return {v: k for k, v in COLLECTIONS.items()}[collection], short


def _safe_relative(name: str) -> Path:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise UserError(f"Fireworks named a weights file {name!r}, which is not a path inside the run dir.")
    return Path(*path.parts)


def _download(retry: Any, url: str, path: Path) -> None:
    """GET a signed URL with a plain client (no Fireworks credentials), retrying 429, 5xx and dropped connections."""
    import httpx

    path.parent.mkdir(parents=True, exist_ok=True)
    again = "Run the same command again: the finished job is recorded, only the download is repeated."
    for attempt in range(retry.retries + 1):
        last = attempt == retry.retries
        try:
            with httpx.stream("GET", url, timeout=httpx.Timeout(600.0, connect=30.0)) as response:
                if (response.status_code == 429 or response.status_code >= 500) and not last:
                    retry.wait(attempt, response.headers.get("retry-after"))
                    continue
                if response.status_code != 200:
                    raise UserError(f"The download of {path.name} failed (HTTP {response.status_code}). {again}")
                with open(path, "wb") as f:
                    for chunk in response.iter_bytes(1 << 20):
                        f.write(chunk)
                return
        except httpx.TransportError as exc:
            if last:
                raise UserError(f"The download of {path.name} kept failing ({type(exc).__name__}). {again}") from None
            retry.wait(attempt)


def _move_weights(tmp: Path, dest: Path) -> str:
    """The folder holding adapter_config.json (or config.json) becomes ``dest``; returns that file's name."""
    for marker in ("adapter_config.json", "config.json"):
        found = sorted(tmp.rglob(marker), key=lambda p: len(p.parts))
        if found:
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(str(found[0].parent), str(dest))
            return marker
    raise UserError(
        f"The files Fireworks returned hold neither adapter_config.json nor config.json: {os.listdir(tmp)}."
    )
