"""A fake of the OpenAI / Azure OpenAI fine-tuning APIs: a real HTTP server on 127.0.0.1 the real SDK talks to.

It serves files (with a slow 'processing' state), fine-tuning jobs (validating_files -> queued -> running ->
succeeded, or failed with an error code, message and param), job events with metrics, checkpoints, cancel,
chat completions (the fine-tuned model answers known prompts with their reference, the base model does not),
Azure's data-plane paths (``/openai/...?api-version=``) and the Azure management deployment PUT/GET/DELETE.
Everything advances per request, not per second, so tests are deterministic and fast. 429 / 500 bursts can be
injected per route; counters record uploads, jobs created, cancels, deployments.

    with FakeProvider(api_key="sk-test") as fake:
        fake.inject("jobs.create", 429, 500)
        ... OPENAI_BASE_URL=fake.openai_url ...
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fake_http import FakeServer, HttpError, public

__all__ = ["ALL_ROUTES", "BASE_ANSWER", "FakeProvider", "HttpError", "files_containing", "write_chat_dataset"]

ROUTES: list[tuple[str, str, str]] = [
    ("POST", r"/files", "files.create"),
    ("GET", r"/files", "files.list"),
    ("GET", r"/files/(?P<id>[^/]+)", "files.retrieve"),
    ("POST", r"/fine_tuning/jobs", "jobs.create"),
    ("GET", r"/fine_tuning/jobs", "jobs.list"),
    ("GET", r"/fine_tuning/jobs/(?P<id>[^/]+)", "jobs.retrieve"),
    ("POST", r"/fine_tuning/jobs/(?P<id>[^/]+)/cancel", "jobs.cancel"),
    ("GET", r"/fine_tuning/jobs/(?P<id>[^/]+)/events", "jobs.events"),
    ("GET", r"/fine_tuning/jobs/(?P<id>[^/]+)/checkpoints", "jobs.checkpoints"),
    ("POST", r"/chat/completions", "chat"),
    ("POST", r"/deployments/(?P<deployment>[^/]+)/chat/completions", "chat"),
]
_MGMT = r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft.CognitiveServices/accounts/[^/]+/deployments/"
MGMT_ROUTES = [("PUT", "deploy.put"), ("GET", "deploy.get"), ("DELETE", "deploy.delete")]
ALL_ROUTES = sorted({r for _, _, r in ROUTES} | {r for _, r in MGMT_ROUTES})
BASE_ANSWER = "I am not sure."


class FakeProvider(FakeServer):
    ROUTES = ROUTES
    ALL_ROUTES = ALL_ROUTES

    def __init__(
        self,
        api_key: str = "sk-fake-key",
        management_token: str = "mgmt-fake-token",
        *,
        file_polls: int = 2,
        polls_per_state: int = 1,
        steps: int = 4,
        fail: dict | None = None,
        deployment_polls: int = 2,
        create_delay_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.api_key, self.management_token = api_key, management_token
        self.file_polls, self.polls_per_state, self.steps = file_polls, polls_per_state, steps
        #: {"code", "message", "param"} makes every job fail after validating its files.
        self.fail = fail
        self.deployment_polls = deployment_polls
        #: Seconds to hold the answer to a job creation after the job exists (a crash window for tests).
        self.create_delay_s = create_delay_s
        #: Answer 500 this many times to a job creation *after* creating the job (a lost response).
        self.create_500_after_commit = 0
        #: Answer 500 this many times to an upload *after* storing the file (a lost response).
        self.upload_500_after_commit = 0
        #: Known prompts (last user message) -> the reference answer the fine-tuned model gives.
        self.answers: dict[str, str] = {}
        #: Fine-tuned models that exist from the start (an earlier ``ft:gpt-4o-mini-...``): they answer like a tuned one.
        self.finetunes: set[str] = set()
        #: Seconds each chat completion takes (a window for a test to kill its client mid-request).
        self.chat_delay_s = 0.0
        #: Chat completions answered per prompt (the last user message), judges left out.
        self.prompts: Counter[str] = Counter()
        #: Judge models (LLM-as-judge): model name -> function from the request's messages to the reply.
        self.judges: dict[str, Any] = {}
        #: Azure base-model deployments that exist from the start: deployment name -> model.
        self.base_deployments: dict[str, str] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.job_requests: list[dict[str, Any]] = []

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    # ------------------------------------------------------------ dispatch

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict, dict[str, str]]:
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        if path.startswith("/subscriptions/"):
            return self._management(method, path, query, headers, body)
        azure = path.startswith("/openai/")
        if azure:
            path = path[len("/openai") :]
            if "api-version" not in query:
                raise HttpError(404, "Resource not found (api-version missing)", "404")
            if headers.get("api-key") != self.api_key:
                raise HttpError(401, "Access denied due to invalid subscription key.", "401")
        else:
            path = path[3:] if path.startswith("/v1/") else path
            if headers.get("Authorization") != f"Bearer {self.api_key}":
                raise HttpError(401, "Incorrect API key provided.", "invalid_api_key")
        return 200, self.dispatch(method, path, azure=azure, query=query, body=body, headers=headers), {}

    # ------------------------------------------------------------ files

    def _files_create(self, headers: Any, body: bytes, **_: Any) -> dict:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body
        )
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True))
        filename, content = fields["file"]
        purpose = fields["purpose"][1].decode()
        with self._lock:
            file_id = f"file-{uuid.uuid4().hex[:20]}"
            self.files[file_id] = {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "created_at": self.now(),
                "filename": filename,
                "purpose": purpose,
                "status": "uploaded",
                "_polls": 0,
                "_content": content,
            }
            self.counters["uploads"] += 1
            if self.upload_500_after_commit > 0:
                self.upload_500_after_commit -= 1
                raise HttpError(500, "The server had an error while processing your request.", "server_error")
            return public(self.files[file_id])

    def _files_list(self, query: dict, **_: Any) -> dict:
        with self._lock:
            items = [
                f for f in reversed(self.files.values()) if "purpose" not in query or f["purpose"] == query["purpose"]
            ]
            return _page(items, query)

    def _files_retrieve(self, id: str, **_: Any) -> dict:  # noqa: A002 - route parameter
        with self._lock:
            f = self.files.get(id)
            if f is None:
                raise HttpError(404, f"No such File object: {id}", "not_found", "id")
            f["_polls"] += 1
            f["status"] = "processed" if f["_polls"] > self.file_polls else "pending"
            return public(f)

    # ------------------------------------------------------------ jobs

    def _jobs_create(self, body: bytes, azure: bool, **_: Any) -> dict:
        args = json.loads(body)
        with self._lock:
            self.job_requests.append(args)
            for key in ("training_file", "validation_file"):
                f = self.files.get(args.get(key)) if args.get(key) else None
                if args.get(key) and (f is None or f["status"] != "processed"):
                    raise HttpError(400, f"File {args.get(key)} is not ready.", "invalid_file_status", key)
            job_id = f"ftjob-{uuid.uuid4().hex[:20]}"
            method = args.get("method") or {}
            hyper = (method.get(method.get("type", "")) or {}).get("hyperparameters") or args.get("hyperparameters")
            self.jobs[job_id] = {
                "id": job_id,
                "object": "fine_tuning.job",
                "created_at": self.now(),
                "model": args["model"],
                "fine_tuned_model": None,
                "finished_at": None,
                "organization_id": "org-fake",
                "status": "validating_files",
                "training_file": args["training_file"],
                "validation_file": args.get("validation_file"),
                "hyperparameters": hyper or {},
                "result_files": [],
                "trained_tokens": None,
                "error": None,
                "seed": args.get("seed") or 42,
                "method": args.get("method"),
                "metadata": args.get("metadata"),
                "suffix": args.get("suffix"),
                "_azure": azure,
                "_polls": 0,
                "_step": 0,
                "_events": [],
                "_checkpoints": [],
            }
            self.counters["jobs_created"] += 1
            self._event(self.jobs[job_id], "info", f"Created fine-tuning job: {job_id}")
            result = public(self.jobs[job_id])
            fail_now = self.create_500_after_commit > 0
            self.create_500_after_commit -= 1 if fail_now else 0
        if self.create_delay_s:
            time.sleep(self.create_delay_s)
        if fail_now:
            raise HttpError(500, "The server had an error while processing your request.", "server_error")
        return result

    def _job(self, id: str) -> dict:  # noqa: A002
        job = self.jobs.get(id)
        if job is None:
            raise HttpError(404, f"Could not find fine tune job: {id}", "fine_tune_not_found", "id")
        return job

    def _jobs_list(self, query: dict, **_: Any) -> dict:
        with self._lock:
            return _page([public(j) for j in reversed(self.jobs.values())], query)

    def _jobs_retrieve(self, id: str, **_: Any) -> dict:  # noqa: A002
        with self._lock:
            job = self._job(id)
            self._advance(job)
            return public(job)

    def _jobs_cancel(self, id: str, **_: Any) -> dict:  # noqa: A002
        with self._lock:
            job = self._job(id)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                raise HttpError(400, f"Job {id} has already completed.", "invalid_request_error")
            job["status"] = "cancelled"
            job["finished_at"] = self.now()
            self.counters["cancels"] += 1
            self._event(job, "info", "Fine-tuning job cancelled")
            return public(job)

    def _jobs_events(self, id: str, query: dict, **_: Any) -> dict:  # noqa: A002
        with self._lock:
            return _page(list(reversed(self._job(id)["_events"])), query)

    def _jobs_checkpoints(self, id: str, query: dict, **_: Any) -> dict:  # noqa: A002
        with self._lock:
            return _page(list(reversed(self._job(id)["_checkpoints"])), query)

    def _event(self, job: dict, level: str, message: str, data: dict | None = None) -> None:
        job["_events"].append(
            {
                "id": f"ftevent-{uuid.uuid4().hex[:16]}",
                "object": "fine_tuning.job.event",
                "created_at": self.now(),
                "level": level,
                "message": message,
                "type": "metrics" if data else "message",
                "data": data or {},
            }
        )

    def _advance(self, job: dict) -> None:
        """One step of the job's life per status request."""
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return
        job["_polls"] += 1
        if job["status"] == "validating_files" and job["_polls"] > self.polls_per_state:
            if self.fail:
                job.update(status="failed", finished_at=self.now(), error=dict(self.fail))
                self._event(job, "error", f"Training file validation failed: {self.fail['message']}")
                return
            job.update(status="queued", _polls=0)
            self._event(job, "info", "Job enqueued. Waiting for jobs ahead to complete.")
        elif job["status"] == "queued" and job["_polls"] > self.polls_per_state:
            job.update(status="running", _polls=0)
            self._event(job, "info", "Fine-tuning job started")
        elif job["status"] == "running":
            if job["_step"] < self.steps:
                job["_step"] += 1
                step = job["_step"]
                data = {
                    "step": step,
                    "total_steps": self.steps,
                    "train_loss": round(2.0 / step, 4),
                    "valid_loss": round(2.2 / step, 4),
                    "train_mean_token_accuracy": round(0.5 + step / 20, 4),
                }
                self._event(job, "info", f"Step {step}/{self.steps}: training loss={data['train_loss']}", data)
                if step == self.steps // 2 or step == self.steps:
                    self._checkpoint(job, step)
                return
            model = job["model"]
            tuned = f"{model}.ft-{job['id'][-12:]}" if job["_azure"] else f"ft:{model}:fake-org::{job['id'][-8:]}"
            job.update(
                status="succeeded",
                fine_tuned_model=tuned,
                finished_at=self.now(),
                trained_tokens=1234,
                result_files=["file-result"],
            )
            self._event(job, "info", f"New fine-tuned model created: {tuned}")
            self._event(job, "info", "The job has successfully completed")

    def _checkpoint(self, job: dict, step: int) -> None:
        job["_checkpoints"].append(
            {
                "id": f"ftckpt-{uuid.uuid4().hex[:16]}",
                "object": "fine_tuning.job.checkpoint",
                "created_at": self.now(),
                "fine_tuning_job_id": job["id"],
                "step_number": step,
                "fine_tuned_model_checkpoint": f"ft:{job['model']}:fake-org::{job['id'][-8:]}:ckpt-step-{step}",
                "metrics": {"step": step, "train_loss": round(2.0 / step, 4)},
            }
        )

    def tuned_models(self) -> set[str]:
        return {j["fine_tuned_model"] for j in self.jobs.values() if j["fine_tuned_model"]} | self.finetunes

    # ------------------------------------------------------------ chat

    def _chat(self, body: bytes, azure: bool, deployment: str | None = None, **_: Any) -> dict:
        args = json.loads(body)
        if args.get("model") in self.judges:
            with self._lock:
                self.counters["chat.judge"] += 1
            return _completion(args["model"], self.judges[args["model"]](args["messages"]), self.now())
        with self._lock:
            model = args.get("model")
            if azure:
                if deployment in self.base_deployments:
                    model = self.base_deployments[deployment]
                elif deployment in self.deployments and self.deployments[deployment]["state"] == "Succeeded":
                    model = self.deployments[deployment]["model"]
                else:
                    raise HttpError(404, f"The API deployment {deployment} does not exist.", "DeploymentNotFound")
            tuned = model in self.tuned_models()
            if not tuned and model not in {j["model"] for j in self.jobs.values()} | set(
                self.base_deployments.values()
            ):
                raise HttpError(404, f"The model `{model}` does not exist.", "model_not_found", "model")
            messages = args["messages"]
            question = [m["content"] for m in messages if m["role"] == "user"][-1]
            self.prompts[question] += 1  # counted as it arrives: a client killed before the answer still paid
        if self.chat_delay_s:
            time.sleep(self.chat_delay_s)
        with self._lock:
            self.counters["chat"] += 1
            self.counters["chat.finetuned" if tuned else "chat.base"] += 1
        answer = self.answers.get(question, BASE_ANSWER) if tuned else BASE_ANSWER
        prompt_tokens = 3 + sum(3 + len(str(m.get("content", "")).split()) for m in messages)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": self.now(),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": answer},
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(answer.split()),
                "total_tokens": prompt_tokens + len(answer.split()),
            },
        }

    # ------------------------------------------------------------ Azure management

    def _management(self, method: str, path: str, query: dict, headers: Any, body: bytes) -> tuple[int, dict, dict]:
        match = re.fullmatch(_MGMT + r"(?P<name>[^/]+)", path)
        if match is None:
            raise HttpError(404, f"Unknown management path {path}", "NotFound")
        if headers.get("Authorization") != f"Bearer {self.management_token}":
            raise HttpError(401, "The access token is invalid.", "InvalidAuthenticationToken")
        if "api-version" not in query:
            raise HttpError(400, "The api-version query parameter is required.", "MissingApiVersionParameter")
        route = dict((m, r) for m, r in MGMT_ROUTES).get(method)
        if route is None:
            raise HttpError(405, "Method not allowed", "MethodNotAllowed")
        self.maybe_inject(route)
        name = match["name"]
        with self._lock:
            if method == "PUT":
                spec = json.loads(body)
                model = spec["properties"]["model"]["name"]
                if model not in self.tuned_models():
                    raise HttpError(
                        400,
                        f"The model {model} is not a fine-tuned model of this resource.",
                        "InvalidResourceProperties",
                    )
                if name not in self.deployments:
                    self.counters["deployments_created"] += 1
                    self.deployments[name] = {"model": model, "state": "Creating", "_polls": 0, "sku": spec["sku"]}
                return 201, self._deployment_body(name), {}
            if name not in self.deployments:
                raise HttpError(404, f"Deployment {name} not found", "DeploymentNotFound")
            if method == "GET":
                dep = self.deployments[name]
                dep["_polls"] += 1
                if dep["_polls"] >= self.deployment_polls:
                    dep["state"] = "Succeeded"
                return 200, self._deployment_body(name), {}
            del self.deployments[name]
            self.counters["deployments_deleted"] += 1
            return 200, {}, {}

    def _deployment_body(self, name: str) -> dict:
        dep = self.deployments[name]
        return {
            "id": f"/deployments/{name}",
            "name": name,
            "sku": dep["sku"],
            "properties": {
                "model": {"format": "OpenAI", "name": dep["model"], "version": "1"},
                "provisioningState": dep["state"],
            },
        }


def _page(items: list[dict], query: dict) -> dict:
    """Newest-first cursor pagination like the real API: ``after`` is the id of the last item already seen."""
    items = [public(i) for i in items]
    if query.get("after"):
        ids = [i["id"] for i in items]
        items = items[ids.index(query["after"]) + 1 :] if query["after"] in ids else []
    limit = int(query.get("limit", 20))
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}


# ------------------------------------------------------------ helpers for the tests


def write_chat_dataset(path: Any, n: int = 20, fake: FakeProvider | None = None) -> list[dict]:
    """A chat JSONL file of ``n`` recipe-style rows; the fake's fine-tuned model learns every answer."""
    rows = [
        {
            "messages": [
                {"role": "system", "content": "List the generic ingredients as JSON."},
                {"role": "user", "content": f"Recipe {i}: {i + 1} cups flour, {i} eggs, a pinch of salt"},
                {"role": "assistant", "content": '["flour", "eggs", "salt"]' if i % 2 else '["flour", "salt"]'},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if fake is not None:
        fake.answers.update({r["messages"][1]["content"]: r["messages"][2]["content"] for r in rows})
    return rows


def files_containing(root: Any, *secrets: str) -> list[str]:
    """Every file under ``root`` whose bytes contain one of the secrets."""
    from pathlib import Path

    hits = []
    for path in Path(root).rglob("*"):
        if path.is_file() and any(s.encode() in path.read_bytes() for s in secrets):
            hits.append(str(path))
    return hits


def _completion(model: str, answer: str, created: int) -> dict:
    """A chat.completion object with ``answer`` (usage counted in words)."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "finish_reason": "stop", "logprobs": None, "message": {"role": "assistant", "content": answer}}
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": len(answer.split()),
            "total_tokens": 10 + len(answer.split()),
        },
    }
