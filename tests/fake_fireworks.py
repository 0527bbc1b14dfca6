"""A fake of Fireworks AI's managed fine-tuning API: a real HTTP server on 127.0.0.1 that the real ``fireworks-ai``
SDK talks to, in the SDK's own request and response shapes (camelCase JSON, ``accounts/<id>/...`` resource names,
Google-style errors).

It serves datasets (create, the single-request multipart ``:upload``, get: UPLOADING -> READY, or a status error for
a file Fireworks would refuse), supervised and DPO jobs (create with a client-chosen id, get, cancel: CREATING ->
PENDING -> RUNNING -> WRITING_RESULTS -> COMPLETED, or FAILED), the output model (get, ``:getDownloadEndpoint``) and
the signed URLs its files are fetched from, which refuse a request carrying credentials. The training is real: when a
job runs, a LoRA adapter of hydratune's tiny random Llama is trained in a thread on the uploaded rows (the first 16; SFT:
cross-entropy; DPO: the DPO loss against the adapter-free model), a few optimizer steps, and saved with
save_pretrained, so the downloaded weights load, evaluate and differ from the base. Everything advances per request;
429/5xx bursts and stalls (a held answer, for client timeouts) can be injected per route; counters record uploads,
jobs created, cancels and downloads.

    with FakeFireworks(api_key="fw-test", account="acct") as fake:
        fake.inject("sft.create", 429, 500)
        ... FIREWORKS_BASE_URL=fake.url FIREWORKS_ACCOUNT_ID=acct ...
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections import defaultdict, deque
from datetime import datetime, timezone
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.fake_http import FakeServer, HttpError, Raw

ACCOUNT = r"/v1/accounts/(?P<account>[^/]+)"
ID = r"(?P<id>[^/:]+)"
ROUTES: list[tuple[str, str, str]] = [
    ("POST", ACCOUNT + r"/datasets", "datasets.create"),
    ("GET", ACCOUNT + rf"/datasets/{ID}", "datasets.get"),
    ("POST", ACCOUNT + rf"/datasets/{ID}:upload", "datasets.upload"),
    ("POST", ACCOUNT + r"/supervisedFineTuningJobs", "sft.create"),
    ("GET", ACCOUNT + rf"/supervisedFineTuningJobs/{ID}", "sft.get"),
    ("POST", ACCOUNT + rf"/supervisedFineTuningJobs/{ID}:cancel", "sft.cancel"),
    ("POST", ACCOUNT + r"/dpoJobs", "dpo.create"),
    ("GET", ACCOUNT + rf"/dpoJobs/{ID}", "dpo.get"),
    ("POST", ACCOUNT + rf"/dpoJobs/{ID}:cancel", "dpo.cancel"),
    ("GET", ACCOUNT + rf"/models/{ID}", "models.get"),
    ("GET", ACCOUNT + rf"/models/{ID}:getDownloadEndpoint", "models.download-endpoint"),
    ("GET", r"/signed/(?P<token>[^/]+)/(?P<filename>.+)", "signed.get"),
]
ALL_ROUTES = sorted({r for _, _, r in ROUTES})
STATES = ("JOB_STATE_CREATING", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_WRITING_RESULTS",
          "JOB_STATE_COMPLETED")  # fmt: skip
#: The fake trains on the first rows only (one batch): enough to move the adapter, cheap on any dataset.
TRAIN_ROWS = 16
ENDED = ("JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")
GRPC = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
        409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}  # fmt: skip


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


class FakeFireworks(FakeServer):
    ROUTES = ROUTES
    ALL_ROUTES = ALL_ROUTES

    def __init__(
        self, api_key: str = "fw-fake-key", account: str = "fake-account", *, polls_per_state: int = 1, steps: int = 4
    ) -> None:
        super().__init__()
        self.api_key, self.account, self.polls_per_state, self.steps = api_key, account, polls_per_state, steps
        #: A message makes every job end in JOB_STATE_FAILED with this message in its status.
        self.fail: str | None = None
        #: Seconds to hold the answer to a job creation after the job exists (a crash window for tests).
        self.create_delay_s = 0.0
        #: Answer 500 this many times to a job creation *after* creating the job (a lost response).
        self.create_500_after_commit = 0
        self.datasets: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        #: Every job creation's JSON body (as the SDK sent it: camelCase), in order.
        self.job_requests: list[dict[str, Any]] = []
        #: The training loss of each optimizer step, by job id (the fake really trains).
        self.losses: dict[str, list[float]] = {}
        self._stalls: dict[str, deque] = defaultdict(deque)
        self._signed: dict[str, bytes] = {}

    def stall(self, route: str, seconds: float, times: int = 1) -> None:
        """Hold the next ``times`` answers of ``route`` for ``seconds`` (longer than the client's timeout: the
        client gives up and retries; the held request is then answered into a closed connection)."""
        if route not in ALL_ROUTES:
            raise ValueError(f"unknown route {route}; routes: {ALL_ROUTES}")
        with self._lock:
            self._stalls[route].extend([seconds] * times)

    # ------------------------------------------------------------ dispatch

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any, dict[str, str]]:
        path = urlsplit(raw_path).path
        query = dict(p.split("=", 1) for p in urlsplit(raw_path).query.split("&") if "=" in p)
        if path.startswith("/signed/"):
            if headers.get("Authorization") or headers.get("x-api-key"):
                self.counters["signed_with_credentials"] += 1
                raise HttpError(400, "A signed URL takes no credentials.", "bad_request")
        elif headers.get("Authorization") != f"Bearer {self.api_key}":
            raise HttpError(401, "Invalid API key.", "unauthenticated")
        return 200, self.dispatch(method, path, query=query, body=body, headers=headers), {}

    def maybe_inject(self, route: str) -> None:
        super().maybe_inject(route)
        with self._lock:
            seconds = self._stalls[route].popleft() if self._stalls[route] else 0.0
            if seconds:
                self.counters[f"stalled.{route}"] += 1
        if seconds:
            time.sleep(seconds)
            raise HttpError(504, "Held past the client's timeout", "deadline_exceeded")

    def error_body(self, exc: HttpError) -> tuple[dict, dict[str, str]]:
        """Fireworks' (Google's) error shape: {"error": {"code": 404, "message", "status": "NOT_FOUND"}}."""
        body = {"error": {"code": exc.status, "message": str(exc), "status": GRPC.get(exc.status, "UNKNOWN")}}
        return body, dict(exc.headers)

    def _mine(self, account: str) -> None:
        if account != self.account:
            raise HttpError(403, f"The API key has no access to account {account}.", "permission_denied")

    def _name(self, collection: str, resource_id: str) -> str:
        return f"accounts/{self.account}/{collection}/{resource_id}"

    # ------------------------------------------------------------ datasets

    def _datasets_create(self, account: str, body: bytes, **_: Any) -> dict:
        self._mine(account)
        args = json.loads(body)
        dataset_id = args["datasetId"]
        with self._lock:
            if dataset_id in self.datasets:
                raise HttpError(409, f"Dataset {dataset_id} already exists.", "already_exists")
            self.datasets[dataset_id] = {
                "name": self._name("datasets", dataset_id),
                "state": "UPLOADING",
                "status": {"code": "OK", "message": ""},
                "exampleCount": args["dataset"].get("exampleCount"),
                "userUploaded": args["dataset"].get("userUploaded"),
                "createTime": _iso(self.now()),
                "_content": b"",
            }
            self.counters["datasets_created"] += 1
            return _public(self.datasets[dataset_id])

    def _dataset(self, dataset_id: str) -> dict:
        found = self.datasets.get(dataset_id)
        if found is None:
            raise HttpError(404, f"Dataset {dataset_id} not found.", "not_found")
        return found

    def _datasets_upload(self, account: str, id: str, headers: Any, body: bytes, **_: Any) -> dict:  # noqa: A002
        self._mine(account)
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body
        )
        parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
        content = parts["file"].get_payload(decode=True)
        with self._lock:
            found = self._dataset(id)
            found["_content"] = content
            rows = [line for line in content.decode().splitlines() if line.strip()]
            try:
                [json.loads(line) for line in rows]
                problem = None if len(rows) >= 3 else f"A dataset needs at least 3 examples, this one has {len(rows)}."
            except json.JSONDecodeError as exc:
                problem = f"Line is not JSON: {exc.msg}"
            found["status"] = {"code": "INVALID_ARGUMENT", "message": problem} if problem else {"code": "OK"}
            found["_polls"] = 0
            self.counters["uploads"] += 1
            return {"id": id, "object": "file", "bytes": len(content), "created_at": self.now(),
                    "filename": parts["file"].get_filename(), "purpose": "fine-tune"}  # fmt: skip

    def _datasets_get(self, account: str, id: str, **_: Any) -> dict:  # noqa: A002
        self._mine(account)
        with self._lock:
            found = self._dataset(id)
            if found["_content"] and found["status"]["code"] == "OK":
                found["_polls"] += 1
                if found["_polls"] > 1:
                    found["state"] = "READY"
            return _public(found)

    # ------------------------------------------------------------ jobs

    def _sft_create(self, account: str, query: dict, body: bytes, **_: Any) -> dict:
        return self._create("sft", account, query.get("supervisedFineTuningJobId"), json.loads(body))

    def _dpo_create(self, account: str, query: dict, body: bytes, **_: Any) -> dict:
        return self._create("dpo", account, query.get("dpoJobId"), json.loads(body))

    def _create(self, kind: str, account: str, job_id: str | None, args: dict) -> dict:
        self._mine(account)
        job_id = job_id or uuid.uuid4().hex[:20]
        with self._lock:
            self.job_requests.append(args)
            if job_id in self.jobs:
                raise HttpError(409, f"Job {job_id} already exists.", "already_exists")
            dataset = self.datasets.get(args["dataset"].rsplit("/", 1)[-1])
            if dataset is None or dataset["state"] != "READY":
                raise HttpError(400, f"Dataset {args['dataset']} is not ready.", "invalid_argument")
            training = args.get("trainingConfig", args)
            output = training.get("outputModel") or job_id
            now = _iso(self.now())
            job = {
                "name": self._name("supervisedFineTuningJobs" if kind == "sft" else "dpoJobs", job_id),
                "dataset": args["dataset"],
                "state": STATES[0],
                "status": {"code": "OK", "message": ""},
                "createTime": now,
                "_kind": kind,
                "_polls": 0,
                "_output": output,
                "_training": training,
                "_loss": args.get("lossConfig") or {},
                "_trained": threading.Event(),
            }
            fields = {"baseModel": training.get("baseModel"), "outputModel": self._name("models", output),
                      "epochs": training.get("epochs"), "learningRate": training.get("learningRate"),
                      "loraRank": training.get("loraRank")}  # fmt: skip
            if kind == "sft":  # a DPO job has no updateTime, and its hyperparameters are its trainingConfig
                job.update(
                    fields,
                    updateTime=now,
                    evaluationDataset=args.get("evaluationDataset"),
                    earlyStop=args.get("earlyStop"),
                )
            else:
                job.update(trainingConfig=fields, lossConfig=args.get("lossConfig"))
            self.jobs[job_id] = job
            self.counters["jobs_created"] += 1
            result = _public(job)
            fail_now = self.create_500_after_commit > 0
            self.create_500_after_commit -= 1 if fail_now else 0
        if self.create_delay_s:
            time.sleep(self.create_delay_s)
        if fail_now:
            raise HttpError(500, "Internal error", "internal")
        return result

    def _job(self, kind: str, account: str, job_id: str) -> dict:
        self._mine(account)
        job = self.jobs.get(job_id)
        if job is None or job["_kind"] != kind:
            raise HttpError(404, f"Job {job_id} not found.", "not_found")
        return job

    def _sft_get(self, account: str, id: str, **_: Any) -> dict:  # noqa: A002
        return self._get("sft", account, id)

    def _dpo_get(self, account: str, id: str, **_: Any) -> dict:  # noqa: A002
        return self._get("dpo", account, id)

    def _get(self, kind: str, account: str, job_id: str) -> dict:
        with self._lock:
            job = self._job(kind, account, job_id)
            self._advance(job_id, job)
            return _public(job)

    def _sft_cancel(self, account: str, id: str, **_: Any) -> dict:  # noqa: A002
        return self._cancel("sft", account, id)

    def _dpo_cancel(self, account: str, id: str, **_: Any) -> dict:  # noqa: A002
        return self._cancel("dpo", account, id)

    def _cancel(self, kind: str, account: str, job_id: str) -> dict:
        with self._lock:
            job = self._job(kind, account, job_id)
            if job["state"] in ENDED:
                raise HttpError(400, f"Job {job_id} has already ended ({job['state']}).", "failed_precondition")
            job["state"] = "JOB_STATE_CANCELLED"
            self._touch(job)
            self.counters["cancels"] += 1
            return {}

    def _advance(self, job_id: str, job: dict) -> None:
        """One step of the job's life per status request. The adapter is trained in a thread from RUNNING on (no
        answer waits for it); the job stays in WRITING_RESULTS until the output model is written."""
        if job["state"] in ENDED:
            return
        job["_polls"] += 1
        if job["state"] == "JOB_STATE_RUNNING":
            job["jobProgress"] = {"percent": min(100, 50 * job["_polls"]), "epoch": 0}
        if job["_polls"] <= self.polls_per_state:
            return
        if job["state"] == "JOB_STATE_WRITING_RESULTS" and not job["_trained"].wait(0):
            return
        job["_polls"] = 0
        if job["state"] == "JOB_STATE_PENDING" and self.fail:
            job.update(state="JOB_STATE_FAILED", status={"code": "INVALID_ARGUMENT", "message": self.fail})
            return
        job["state"] = STATES[STATES.index(job["state"]) + 1]
        self._touch(job)
        if job["state"] == "JOB_STATE_RUNNING":
            threading.Thread(target=self._train, args=(job_id, job), daemon=True).start()

    def _touch(self, job: dict) -> None:
        if "updateTime" in job:
            job["updateTime"] = _iso(self.now())

    def _train(self, job_id: str, job: dict) -> None:
        content = self.datasets[job["dataset"].rsplit("/", 1)[-1]]["_content"]
        rows = [json.loads(line) for line in content.splitlines() if line.strip()][:TRAIN_ROWS]
        beta = (job["_loss"].get("dpo") or {}).get("beta") or 0.1
        files, losses = train_adapter(rows, job["_kind"], job["_training"].get("loraRank") or 8, self.steps, beta)
        with self._lock:
            self.losses[job_id] = losses
            self.models[job["_output"]] = {"name": self._name("models", job["_output"]), "state": "READY",
                                           "kind": "HF_PEFT_ADDON", "_files": files}  # fmt: skip
        job["_trained"].set()

    # ------------------------------------------------------------ the output model and its files

    def _model(self, account: str, model_id: str) -> dict:
        self._mine(account)
        found = self.models.get(model_id)
        if found is None:
            raise HttpError(404, f"Model {model_id} not found.", "not_found")
        return found

    def _models_get(self, account: str, id: str, **_: Any) -> dict:  # noqa: A002
        with self._lock:
            return _public(self._model(account, id))

    def _models_download_endpoint(self, account: str, id: str, **_: Any) -> dict:  # noqa: A002
        with self._lock:
            files = self._model(account, id)["_files"]
            self.counters["downloads"] += 1
            urls = {}
            for name, data in files.items():
                token = uuid.uuid4().hex
                self._signed[token] = data
                urls[name] = f"{self.url}/signed/{token}/{name}"
            return {"filenameToSignedUrls": urls}

    def _signed_get(self, token: str, filename: str, **_: Any) -> Raw:
        with self._lock:
            data = self._signed.get(token)
            self.counters["signed_gets"] += 1
        if data is None:
            raise HttpError(403, "Signature expired or invalid.", "permission_denied")
        return Raw(200, data, {"Content-Type": "application/octet-stream"})


def _public(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _text(messages: list[dict]) -> str:
    return "".join(
        f"<|im_start|>{m['role']}\n{m.get('content') or json.dumps(m.get('tool_calls'))}<|im_end|>\n" for m in messages
    )


def train_adapter(rows: list[dict], kind: str, rank: int, steps: int, beta: float) -> tuple[dict[str, bytes], list]:
    """A LoRA adapter of the tiny random Llama trained on the rows (all of them, one batch, ``steps`` Adam steps):
    its save_pretrained files by name, and each step's loss."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few tiny steps: one thread is fastest, and leaves the client's polling its core
    try:
        return _train(rows, kind, rank, steps, beta)
    finally:
        torch.set_num_threads(threads)


def _train(rows: list[dict], kind: str, rank: int, steps: int, beta: float) -> tuple[dict[str, bytes], list]:
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    from trainer.models import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_peft_model(
            tiny_model(tokenizer), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"])
        )

    def batch(texts: list[str]) -> tuple[Any, Any]:
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return enc, labels

    def logps(enc: Any, labels: Any) -> Any:
        logits = model(**enc).logits[:, :-1]
        target = labels[:, 1:]
        taken = torch.gather(F.log_softmax(logits, -1), 2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (taken * (target != -100)).sum(-1)

    if kind == "dpo":
        chosen = batch([_text(r["input"]["messages"] + r["preferred_output"]) for r in rows])
        rejected = batch([_text(r["input"]["messages"] + r["non_preferred_output"]) for r in rows])
        with torch.no_grad(), model.disable_adapter():
            reference = logps(*chosen) - logps(*rejected)
    else:
        texts = batch([_text(r["messages"]) for r in rows])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        if kind == "dpo":
            loss = -F.logsigmoid(beta * (logps(*chosen) - logps(*rejected) - reference)).mean()
        else:
            loss = model(**texts[0], labels=texts[1]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 6))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}, losses
