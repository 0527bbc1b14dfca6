"""Together AI's fine-tuning API (``hardware=together``) through the official ``together`` SDK.

Open base models (conf/model/together_*.yaml), supervised or DPO, LoRA or full, with Together's own hyperparameter
names (hardware.n_epochs, learning_rate, lora_r ...). Files are found again by name (the name carries the run id and
the content hash), jobs by their training file. After the job the trained weights (the adapter, the merged model or
the full model) are downloaded into ``<run dir>/model`` in save_pretrained layout, so they load with
transformers/peft, are evaluated here like a local run's and can be served without Together.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from contextlib import AbstractContextManager, nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any

from launchers.cloud.client import stainless_errors
from launchers.cloud.provider import FileInfo, Job, JobError, require_key
from trainer.config.errors import UserError, choice_error
from trainer.engine import objectives

log = logging.getLogger(__name__)
WEIGHTS_DIR = "model"
#: Together's job states -> the normalized ones (launchers/cloud/provider.py).
STATUS = {
    "pending": "queued",
    "queued": "queued",
    "running": "running",
    "compressing": "running",
    "uploading": "running",
    "cancel_requested": "cancelling",
    "cancelled": "cancelled",
    "error": "failed",
    "user_error": "failed",
    "completed": "succeeded",
}
FILE_STATUS = {"COMPLETED": "processed", "FAILED": "error", "INVALID_FORMAT": "error"}
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Together:
    name = "together"
    #: Together trains function calling from rows with tools and tool_calls (its conversational format is OpenAI's).
    tools = True
    settings = (
        "it supports objective=sft or dpo, LoRA (hardware.lora=true, with lora_r, lora_alpha, lora_dropout, "
        "lora_trainable_modules) or full fine-tuning (hardware.lora=false), and the hyperparameters "
        "hardware.n_epochs, learning_rate, batch_size, lr_scheduler_type, warmup_ratio, max_grad_norm, weight_decay, "
        "n_evals, train_on_inputs, max_seq_length, random_seed, dpo_beta and suffix."
    )

    def __init__(self, hw: Any) -> None:
        self.hw = hw

    # ------------------------------------------------------------ config

    @cached_property
    def client(self) -> Any:
        import together

        require_key(self.hw, "TOGETHER_API_KEY", "Together AI")
        return together.Together(api_key=self.hw.api_key or None, base_url=self.hw.base_url or None, max_retries=0)

    def model_name(self, cfg: Any) -> str:
        return str(cfg.model.name_or_path)

    def check(self, cfg: Any) -> None:
        hw = cfg.hardware
        if not (isinstance(hw.n_epochs, int) and hw.n_epochs >= 1):
            raise UserError(f"hardware.n_epochs={hw.n_epochs} must be a whole number of epochs, at least 1.")
        if not hw.learning_rate > 0:
            raise UserError(f"hardware.learning_rate={hw.learning_rate} must be positive (Together: 1e-5 by default).")
        if hw.batch_size != "max" and not (isinstance(hw.batch_size, int) and hw.batch_size > 0):
            raise UserError(f"hardware.batch_size={hw.batch_size} must be a positive whole number or max.")
        if hw.lr_scheduler_type not in ("linear", "cosine"):
            raise choice_error("hardware.lr_scheduler_type", hw.lr_scheduler_type, ("linear", "cosine"))
        if hw.download not in ("adapter", "merged"):
            raise choice_error("hardware.download", hw.download, ("adapter", "merged"))
        if hw.train_on_inputs not in (True, False, "auto"):
            raise UserError(f"hardware.train_on_inputs={hw.train_on_inputs} must be true, false or auto.")
        if cfg.method.name == "full" and hw.lora:
            raise UserError(
                "method=full asks for full fine-tuning, which at Together is hardware.lora=false (hardware.lora=true "
                "trains a LoRA adapter). Set hardware.lora=false, or leave method at its default."
            )
        if cfg.eval.enabled and cfg.model.weights is None:
            raise UserError(
                f"model.weights is not set for {cfg.model.name_or_path}: hydratune evaluates the downloaded weights "
                "here and needs the base model's own weights (model.weights.source=hf "
                "model.weights.name_or_path=ORG/NAME), or eval.enabled=false."
            )

    def price_table(self, cfg: Any) -> dict[str, float]:
        hw = cfg.hardware
        table = hw.price_per_million_training_tokens if hw.lora else hw.full_price_per_million_training_tokens
        factor = float(hw.dpo_price_multiplier) if objectives.provider_method(cfg) == "dpo" else 1.0
        return {str(k): float(v) * factor for k, v in table.items()}

    def epochs(self, cfg: Any) -> Any:
        return int(cfg.hardware.n_epochs)

    def wants_validation(self, cfg: Any) -> bool:
        return int(cfg.hardware.n_evals) > 0  # Together reads a validation file only to evaluate during training

    # ------------------------------------------------------------ files

    def find_file(self, retry: Any, filename: str) -> str | None:
        for f in retry(self.client.files.list, what="list files").data:
            if f.filename == filename and FILE_STATUS.get(str(f.processing_status)) != "error":
                return f.id
        return None

    def create_file(self, path: Path, filename: str) -> str:
        """Upload under ``filename`` (the SDK sends the local file's name), after the SDK's own format check."""
        from together.lib.types.error import FileTypeError

        with tempfile.TemporaryDirectory(prefix="hydratune-upload-") as tmp:
            named = Path(tmp) / filename
            shutil.copyfile(path, named)
            try:
                return self.client.files.upload(file=named, purpose="fine-tune", check=True).id
            except FileTypeError as exc:
                raise UserError(f"Together's file check refused {path}: {exc}") from None

    def file_status(self, retry: Any, file_id: str) -> FileInfo:
        f = retry(self.client.files.retrieve, file_id, what="file status")
        status = f.processing_status
        report = getattr(f, "validation_report", None)
        details = getattr(report, "error", None) or str(status)
        return FileInfo(file_id, "processed" if status is None else FILE_STATUS.get(str(status), "pending"), details)

    # ------------------------------------------------------------ jobs

    def job_args(self, cfg: Any, model: str, training_file: str, validation_file: str | None, run_id: str) -> dict:
        hw, dpo = cfg.hardware, objectives.provider_method(cfg) == "dpo"
        args: dict[str, Any] = {
            "model": model,
            "training_file": training_file,
            "training_method": "dpo" if dpo else "sft",
            "n_epochs": int(hw.n_epochs),
            "learning_rate": float(hw.learning_rate),
            "batch_size": hw.batch_size if hw.batch_size == "max" else int(hw.batch_size),
            "lora": bool(hw.lora),
            "lr_scheduler_type": str(hw.lr_scheduler_type),
            "warmup_ratio": float(hw.warmup_ratio),
            "max_grad_norm": float(hw.max_grad_norm),
            "weight_decay": float(hw.weight_decay),
            "n_evals": int(hw.n_evals),
            "n_checkpoints": int(hw.n_checkpoints),
        }
        if not dpo:
            args["train_on_inputs"] = hw.train_on_inputs  # Together takes it for SFT only
        if hw.lora:
            args.update(lora_dropout=float(hw.lora_dropout), lora_trainable_modules=str(hw.lora_trainable_modules))
            args.update({k: hw[k] for k in ("lora_r", "lora_alpha") if hw[k] is not None})
        optional = {"max_seq_length": hw.max_seq_length, "random_seed": hw.random_seed, "suffix": hw.suffix}
        args.update({k: v for k, v in optional.items() if v is not None})
        if dpo and hw.dpo_beta is not None:
            args["dpo_beta"] = float(hw.dpo_beta)
        if validation_file:
            args["validation_file"] = validation_file
        return args

    def find_job(self, retry: Any, training_file: str) -> str | None:
        for job in retry(self.client.fine_tuning.list, what="list jobs").data:
            if job.training_file == training_file:
                return job.id
        return None

    def create_job(self, args: dict[str, Any]) -> str:
        return self.client.fine_tuning.create(**args).id

    def job(self, retry: Any, job_id: str) -> Job:
        found = retry(self.client.fine_tuning.retrieve, job_id, what="job status")
        word = str(getattr(found.status, "value", found.status))
        status = STATUS.get(word, "running")
        error = None
        if status == "failed":
            events = retry(self.client.fine_tuning.list_events, job_id, what="job events").data
            messages = [e.message for e in events if e.level == "error" or e.type == "job_error"]
            error = JobError(word, messages[-1] if messages else None, None)
        return Job(job_id, status, found.model, found.x_model_output_name, found.token_count, error, word)

    def cancel(self, retry: Any, job_id: str) -> Job:
        retry(self.client.fine_tuning.cancel, job_id, what="cancel job")
        return self.job(retry, job_id)

    def events(self, retry: Any, job_id: str, seen: set[str]) -> list[dict[str, Any]]:
        rows = []
        for e in retry(self.client.fine_tuning.list_events, job_id, what="job events").data:
            key = e.hash or hashlib.sha256(f"{e.created_at}|{e.type}|{e.message}".encode()).hexdigest()[:24]
            row = {"id": f"event-{key}", "created_at": e.created_at, "level": e.level, "message": e.message,
                   "type": e.type, "data": {"step": e.step} if e.step is not None else None}  # fmt: skip
            rows.append(row)
        metrics = retry(self.client.fine_tuning.list_metrics, job_id, what="job metrics").metrics or []
        for m in metrics:
            step = int(m["train/global_step"])
            data = {"step": step, "train_loss": m.get("train/loss"), "valid_loss": m.get("eval/loss")}
            rows.append({"id": f"metrics-{step}", "created_at": m.get("timestamp"), "level": "info",
                         "message": f"step {step}: " + ", ".join(f"{k}={v}" for k, v in m.items() if k != "timestamp"),
                         "type": "metrics", "data": data})  # fmt: skip
        return [r for r in rows if r["id"] not in seen]

    def checkpoints(self, retry: Any, job_id: str) -> list[dict[str, Any]]:
        listed = retry(self.client.fine_tuning.list_checkpoints, job_id, what="job checkpoints").data
        return [{"id": c.path, "step": c.step, "model": c.path, "type": c.checkpoint_type} for c in listed]

    # ------------------------------------------------------------ result: the weights, downloaded

    def fetch_result(self, cfg: Any, state: Any, retry: Any, job: Job, run_dir: Path) -> dict[str, Any]:
        """Download the job's weights into <run dir>/model once; an eval of the finished run (in its eval-<time>
        sub-dir) reuses the recorded download."""
        hw = cfg.hardware
        kind = ("adapter" if hw.download == "adapter" else "merged") if hw.lora else "full"
        recorded = state.data.get("weights") or {}
        known = Path(recorded.get("path", "/nonexistent"))
        if recorded.get("job") == job.id and recorded.get("kind") == kind and (known / recorded["marker"]).is_file():
            dest = known
            log.info("weights of %s already downloaded into %s", job.id, dest)
        else:
            dest = run_dir / WEIGHTS_DIR
            checkpoint = {"adapter": "adapter", "merged": "merged", "full": "model_output_path"}[kind]
            with tempfile.TemporaryDirectory(prefix="hydratune-weights-", dir=run_dir) as tmp:
                archive = Path(tmp) / "weights.archive"
                retry(self._download, job.id, checkpoint, archive, what="download weights")
                marker = unpack(archive, dest)
            state.record("weights", {"job": job.id, "kind": kind, "path": str(dest.resolve()), "marker": marker})
            log.info("downloaded the %s weights of %s into %s", kind, job.id, dest)
        return {"weights": os.path.relpath(dest, run_dir), "weights_kind": kind}

    def _download(self, job_id: str, checkpoint: str, path: Path) -> None:
        stream = self.client.fine_tuning.with_streaming_response.content(ft_id=job_id, checkpoint=checkpoint)
        with stream as response, open(path, "wb") as f:
            for chunk in response.iter_bytes(1 << 20):
                f.write(chunk)

    def base_model(self, cfg: Any) -> str | None:
        return None  # evaluated here, on model.weights

    def serving(self, cfg: Any, state: Any, tuned: str | None) -> AbstractContextManager[str | None]:
        return nullcontext(tuned)


def sdk_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    return stainless_errors("together")


def make(hw: Any) -> Together:
    return Together(hw)


def unpack(archive: Path, dest: Path) -> str:
    """Extract a weights archive (tar, tar.gz or Together's tar.zst) into ``dest`` atomically: the folder that
    holds adapter_config.json or config.json becomes ``dest``. Returns that file's name."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with open(archive, "rb") as f:
        zstd = f.read(4) == ZSTD_MAGIC
    if zstd:
        import zstandard

        with open(archive, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                tar.extractall(partial, filter="data")
    else:
        with tarfile.open(archive, mode="r:*") as tar:
            tar.extractall(partial, filter="data")
    for marker in ("adapter_config.json", "config.json"):
        found = sorted(partial.rglob(marker), key=lambda p: len(p.parts))
        if found:
            shutil.rmtree(dest, ignore_errors=True)
            found[0].parent.rename(dest)
            shutil.rmtree(partial, ignore_errors=True)
            return marker
    raise UserError(
        f"The weights Together returned hold neither adapter_config.json nor config.json (looked in {partial})."
    )
