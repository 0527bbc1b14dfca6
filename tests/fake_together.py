"""A fake of Together AI's fine-tuning API: a real HTTP server on 127.0.0.1 that the real ``together`` SDK talks to.

It serves what the SDK's calls need, in the SDK's own request and response shapes: file uploads (POST /v1/files
answered with a 302 to an upload URL, the PUT of the bytes, then /preprocess; a second upload of the same content
gets the SDK's 409 "already exists"), file lists, model limits and price estimates (the SDK asks both before
creating a job), fine-tuning jobs (pending -> queued -> running -> compressing -> uploading -> completed, or error),
events, metrics ("train/global_step", "train/loss", "eval/loss"), checkpoints, cancel and the download of the
trained weights as a tar.zst archive. The weights are real: a LoRA adapter (or, for full fine-tuning, a whole
model) of hydratune's tiny random Llama, made in-process with peft and saved with save_pretrained, so loading and
evaluating them is real too. Everything advances per request; 429/5xx bursts can be injected per route; counters
record upload requests, jobs created, cancels and downloads.

    with FakeTogether(api_key="tg-test") as fake:
        fake.inject("fine-tunes.create", 429, 500)
        ... TOGETHER_BASE_URL=fake.url ...
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import time
import uuid
from datetime import datetime, timezone
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fake_http import FakeServer, HttpError, Raw, public

ROUTES: list[tuple[str, str, str]] = [
    ("POST", r"/v1/files", "files.create"),
    ("GET", r"/v1/files", "files.list"),
    ("PUT", r"/upload/(?P<id>[^/]+)", "files.put"),
    ("POST", r"/v1/files/(?P<id>[^/]+)/preprocess", "files.preprocess"),
    ("GET", r"/v1/files/(?P<id>[^/]+)", "files.retrieve"),
    ("GET", r"/v1/fine-tunes/models/limits", "fine-tunes.limits"),
    ("POST", r"/v1/fine-tunes/estimate-price", "fine-tunes.estimate"),
    ("POST", r"/v1/fine-tunes", "fine-tunes.create"),
    ("GET", r"/v1/fine-tunes", "fine-tunes.list"),
    ("GET", r"/v1/fine-tunes/(?P<id>[^/]+)", "fine-tunes.retrieve"),
    ("POST", r"/v1/fine-tunes/(?P<id>[^/]+)/cancel", "fine-tunes.cancel"),
    ("GET", r"/v1/fine-tunes/(?P<id>[^/]+)/events", "fine-tunes.events"),
    ("GET", r"/v1/fine-tunes/(?P<id>[^/]+)/metrics", "fine-tunes.metrics"),
    ("GET", r"/v1/fine-tunes/(?P<id>[^/]+)/checkpoints", "fine-tunes.checkpoints"),
    ("GET", r"/v1/finetune/download", "download"),
]
ALL_ROUTES = sorted({r for _, _, r in ROUTES})
STATES = ("pending", "queued", "running", "compressing", "uploading", "completed")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


class FakeTogether(FakeServer):
    ROUTES = ROUTES
    ALL_ROUTES = ALL_ROUTES

    def __init__(
        self, api_key: str = "tg-fake-key", *, polls_per_state: int = 1, steps: int = 4, fail: str | None = None
    ) -> None:
        super().__init__()
        self.api_key, self.polls_per_state, self.steps = api_key, polls_per_state, steps
        #: A message makes every job end in status "error" with this message in its events.
        self.fail = fail
        #: Seconds to hold the answer to a job creation after the job exists (a crash window for tests).
        self.create_delay_s = 0.0
        #: Answer 500 this many times to a job creation *after* creating the job (a lost response).
        self.create_500_after_commit = 0
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job_requests: list[dict[str, Any]] = []

    # ------------------------------------------------------------ dispatch

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if not parts.path.startswith("/upload/") and headers.get("Authorization") != f"Bearer {self.api_key}":
            raise HttpError(401, "Invalid API key provided.", "invalid_api_key")
        return 200, self.dispatch(method, parts.path, query=query, body=body, headers=headers), {}

    def error_body(self, exc: HttpError) -> tuple[dict, dict[str, str]]:
        """Together's 409 for a file it already holds names that file (the SDK reads ``file_id``)."""
        body, headers = super().error_body(exc)
        if exc.status == 409 and "X-Conflict" in headers:
            body["file_id"] = headers.pop("X-Conflict")
        return body, headers

    # ------------------------------------------------------------ files

    def _files_create(self, headers: Any, body: bytes, **_: Any) -> Raw:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body
        )
        form = {
            part.get_param("name", header="content-disposition"): part.get_payload(decode=True).decode()
            for part in message.iter_parts()
        }
        with self._lock:
            self.counters["upload_requests"] += 1
            for f in self.files.values():
                if f["_checksum"] == form["checksum"] and f["purpose"] == form["purpose"] and f["_content"]:
                    raise HttpError(409, "File already exists", "file_exists", headers={"X-Conflict": f["id"]})
            file_id = f"file-{uuid.uuid4()}"
            self.files[file_id] = {
                "id": file_id,
                "object": "file",
                "bytes": 0,
                "created_at": int(self.now()),
                "filename": form["file_name"],
                "FileType": form["file_type"],
                "purpose": form["purpose"],
                "processing_status": None,
                "_checksum": form["checksum"],
                "_content": b"",
                "_polls": 0,
            }
        return Raw(302, headers={"Location": f"{self.url}/upload/{file_id}", "X-Together-File-Id": file_id})

    def _files_put(self, id: str, body: bytes, **_: Any) -> Raw:  # noqa: A002 - route parameter
        with self._lock:
            self._file(id).update(_content=body, bytes=len(body))
            self.counters["uploads"] += 1
        return Raw(200)

    def _files_preprocess(self, id: str, **_: Any) -> dict:  # noqa: A002
        with self._lock:
            f = self._file(id)
            f["processing_status"] = "PENDING"
            return public(f)

    def _file(self, file_id: str) -> dict:
        f = self.files.get(file_id)
        if f is None:
            raise HttpError(404, f"File {file_id} not found", "not_found")
        return f

    def _files_list(self, **_: Any) -> dict:
        with self._lock:
            return {"data": [public(f) for f in self.files.values() if f["processing_status"] is not None]}

    def _files_retrieve(self, id: str, **_: Any) -> dict:  # noqa: A002
        with self._lock:
            f = self._file(id)
            f["_polls"] += 1
            f["processing_status"] = "COMPLETED" if f["_polls"] > 1 else "RUNNING"
            return public(f)

    # ------------------------------------------------------------ jobs

    def _fine_tunes_limits(self, query: dict, **_: Any) -> dict:
        return {
            "model_name": query.get("model_name"),
            "default_gradient_accumulation_steps": 1,
            "lora_training": {"default_rank": 8, "max_batch_size": 16, "max_batch_size_dpo": 8, "max_rank": 64,
                              "min_batch_size": 1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            "full_training": {"max_batch_size": 16, "max_batch_size_dpo": 8, "min_batch_size": 1},
            "max_learning_rate": 1.0, "min_learning_rate": 1e-8, "max_num_checkpoints": 10, "max_num_epochs": 20,
            "max_num_evals": 10, "max_seq_length_dpo": 512, "max_seq_length_sft": 512, "min_max_seq_length": 64,
            "merge_output_lora": True, "supports_full_training": True, "supports_reasoning": False,
            "supports_tools": False, "supports_vision": False,
        }  # fmt: skip

    def _fine_tunes_estimate(self, body: bytes, **_: Any) -> dict:
        args = json.loads(body)
        with self._lock:
            f = self._file(args["training_file"])
            tokens = len(f["_content"].split()) * int(args.get("n_epochs") or 1)
        return {"estimation_available": True, "allowed_to_proceed": True, "estimated_train_token_count": tokens,
                "estimated_total_price": round(tokens / 1e6 * 0.48, 6), "user_limit": 100.0}  # fmt: skip

    def _fine_tunes_create(self, body: bytes, **_: Any) -> dict:
        args = json.loads(body)
        with self._lock:
            self.job_requests.append(args)
            f = self.files.get(args["training_file"])
            if f is None or f["processing_status"] != "COMPLETED":
                raise HttpError(400, f"File {args['training_file']} is not ready.", "invalid_file")
            job_id = f"ft-{uuid.uuid4()}"
            now = self.now()
            lora = (args.get("training_type") or {}).get("type") == "Lora"
            self.jobs[job_id] = {
                "id": job_id,
                "created_at": _iso(now),
                "updated_at": _iso(now),
                "status": "pending",
                "user_id": "user-fake",
                "model": args["model"],
                "model_output_name": None,
                "training_file": args["training_file"],
                "validation_file": args.get("validation_file") or None,
                "n_epochs": args.get("n_epochs"),
                "learning_rate": args.get("learning_rate"),
                "suffix": args.get("suffix"),
                "training_type": args.get("training_type"),
                "training_method": args.get("training_method"),
                "token_count": None,
                "_lora": lora,
                "_polls": 0,
                "_step": 0,
                "_events": [],
                "_metrics": [],
                "_checkpoints": [],
            }
            self.counters["jobs_created"] += 1
            job = self.jobs[job_id]
            self._event(job, "job_pending", "Fine-tune request created")
            result = public(job)
            fail_now = self.create_500_after_commit > 0
            self.create_500_after_commit -= 1 if fail_now else 0
        if self.create_delay_s:
            time.sleep(self.create_delay_s)
        if fail_now:
            raise HttpError(500, "Internal server error", "server_error")
        return result

    def _job(self, job_id: str) -> dict:
        job = self.jobs.get(job_id)
        if job is None:
            raise HttpError(404, f"Fine-tune job {job_id} not found", "not_found")
        return job

    def _fine_tunes_list(self, **_: Any) -> dict:
        with self._lock:
            return {"data": [public(j) for j in self.jobs.values()]}

    def _fine_tunes_retrieve(self, id: str, **_: Any) -> dict:  # noqa: A002
        with self._lock:
            job = self._job(id)
            self._advance(job)
            return public(job)

    def _fine_tunes_cancel(self, id: str, **_: Any) -> dict:  # noqa: A002
        with self._lock:
            job = self._job(id)
            if job["status"] in ("completed", "error", "cancelled"):
                raise HttpError(400, f"Fine-tune job {id} is already {job['status']}.", "invalid_request")
            job["status"] = "cancelled"
            self.counters["cancels"] += 1
            self._event(job, "cancel_requested", "Job cancelled by the user")
            return public(job)

    def _fine_tunes_events(self, id: str, **_: Any) -> dict:  # noqa: A002
        with self._lock:
            return {"data": list(self._job(id)["_events"])}

    def _fine_tunes_metrics(self, id: str, query: dict, **_: Any) -> dict:  # noqa: A002
        start = int(query.get("global_step_from", 0))
        with self._lock:
            return {"metrics": [m for m in self._job(id)["_metrics"] if m["train/global_step"] >= start]}

    def _fine_tunes_checkpoints(self, id: str, **_: Any) -> dict:  # noqa: A002
        with self._lock:
            return {"data": list(self._job(id)["_checkpoints"])}

    def _event(self, job: dict, kind: str, message: str, level: str = "info", step: int | None = None) -> None:
        job["_events"].append(
            {
                "object": "fine-tune-event",
                "created_at": _iso(self.now()),
                "level": level,
                "message": message,
                "type": kind,
                "step": step,
                "hash": uuid.uuid4().hex,
            }  # fmt: skip
        )

    def _advance(self, job: dict) -> None:
        """One step of the job's life per status request."""
        if job["status"] in ("completed", "error", "cancelled"):
            return
        job["_polls"] += 1
        if job["status"] == "running" and job["_step"] < self.steps:
            job["_step"] += 1
            step = job["_step"]
            row = {"train/global_step": step, "train/loss": round(2.0 / step, 4), "timestamp": self.now()}
            if job["validation_file"]:
                row["eval/loss"] = round(2.2 / step, 4)
            job["_metrics"].append(row)
            if step == self.steps:
                job["_checkpoints"].append({"checkpoint_type": "Intermediate", "created_at": _iso(self.now()),
                                            "path": f"{job['id']}:{step}", "step": step})  # fmt: skip
            return
        if job["_polls"] <= self.polls_per_state:
            return
        job["_polls"] = 0
        if job["status"] == "pending" and self.fail:
            job.update(status="error")
            self._event(job, "job_error", self.fail, level="error")
            return
        job["status"] = STATES[STATES.index(job["status"]) + 1]
        job["updated_at"] = _iso(self.now())
        self._event(job, {"queued": "job_pending", "running": "training_start", "completed": "job_complete"}.get(
            job["status"], "job_start"), f"Job {job['status']}")  # fmt: skip
        if job["status"] == "completed":
            suffix = job["suffix"] or "ft"
            job["model_output_name"] = f"fake-user/{job['model'].rsplit('/', 1)[-1]}-{suffix}-{job['id'][3:11]}"
            job["token_count"] = 1234

    # ------------------------------------------------------------ the trained weights

    def _download(self, query: dict, **_: Any) -> Raw:
        with self._lock:
            job = self._job(query["ft_id"])
            if job["status"] != "completed":
                raise HttpError(400, "Fine-tune job is not completed", "invalid_request")
            self.counters["downloads"] += 1
        checkpoint = query.get("checkpoint", "merged")
        if job["_lora"] and checkpoint not in ("adapter", "merged"):
            raise HttpError(400, f"checkpoint={checkpoint} is not valid for a LoRA job", "invalid_request")
        archive = trained_weights(job["model"], adapter=job["_lora"] and checkpoint == "adapter",
                                  rank=(job["training_type"] or {}).get("lora_r") or 8)  # fmt: skip
        return Raw(200, archive, {"Content-Type": "application/octet-stream",
                                  "Content-Disposition": f'attachment; filename="{job["id"]}.tar.zst"'})  # fmt: skip


def trained_weights(model_name: str, adapter: bool, rank: int = 8) -> bytes:
    """A tar.zst of real save_pretrained files: a LoRA adapter (random, non-zero B) of the tiny random Llama, or the
    tiny model itself with perturbed weights (full fine-tuning), with its tokenizer."""
    import torch
    import zstandard
    from peft import LoraConfig, get_peft_model

    from trainer.models import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    torch.manual_seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "output"
        if adapter:
            config = LoraConfig(
                r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False
            )
            tuned = get_peft_model(model, config)
            tuned.peft_config["default"].base_model_name_or_path = model_name
            tuned.save_pretrained(out)
        else:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.01)
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(out, arcname="output")
    return zstandard.ZstdCompressor().compress(buffer.getvalue())
