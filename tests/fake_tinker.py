"""A fake Tinker API on 127.0.0.1 that the real ``tinker`` SDK talks to, and that actually computes.

The SDK's protocol, as read from its installed source (tinker 0.38): every call POSTs a request under /api/v1/ and
gets back a future (``{"request_id": ...}``) whose result it polls with /api/v1/retrieve_future; forward_backward
requests and results are protobuf (tinker/proto/tinker_public_pb2), everything else is JSON. A session is created
first (/client/config, /create_session) and kept alive with heartbeats.

The model behind it is a real one, in-process: a base model folder (the tiny random Llama in tests) with a peft LoRA
on every linear layer (rank from create_model, alpha ``lora_alpha``, seeded by the request's seed), AdamW steps with the
request's hyperparameters, checkpoints (save_weights / load_weights, optimizer state included) kept in memory, and
"external weights" (the adapter in peft save_pretrained layout) served as files. ``steps`` counts the optimizer steps
each checkpointed state went through, so a test can see that no step was trained twice.

Sampling is real too: ``save_weights_for_sampler`` (unnamed: the SDK's save_weights_and_get_sampling_client) snapshots
the LoRA under a sampling session, and ``asample`` generates with those weights, seeded by the request's seed
(temperature, top_k, top_p, stop token ids), returning each answer's tokens (the stop token included) and their
logprobs under the distribution it drew from. forward_backward offers ``cross_entropy`` and ``importance_sampling``
(``-sum(exp(logp - sampling logprobs) * advantages)``, Tinker's documented definition). What the client sent and got is
kept (``samples``, ``rl_inputs``, ``gradients``: the summed gradient of every optimizer step, before clipping) so a
test can recompute it.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from tests.fake_http import FakeServer, HttpError, Raw

ROUTES = [
    ("POST", r"/api/v1/client/config", "client.config"),
    ("POST", r"/api/v1/client/dynamic_config", "client.dynamic_config"),
    ("GET", r"/api/v1/client/dynamic_config", "client.dynamic_config"),
    ("POST", r"/api/v1/create_session", "create_session"),
    ("POST", r"/api/v1/session_heartbeat", "session_heartbeat"),
    ("POST", r"/api/v1/sessions/(?P<session>[^/]+)/finish", "finish_session"),
    ("POST", r"/api/v1/telemetry", "telemetry"),
    ("POST", r"/api/v1/create_model", "create_model"),
    ("POST", r"/api/v1/get_info", "get_info"),
    ("POST", r"/api/v1/forward_backward", "forward_backward"),
    ("POST", r"/api/v1/forward", "forward"),
    ("POST", r"/api/v1/optim_step", "optim_step"),
    ("POST", r"/api/v1/save_weights", "save_weights"),
    ("POST", r"/api/v1/load_weights", "load_weights"),
    ("POST", r"/api/v1/save_weights_external", "save_weights_external"),
    ("POST", r"/api/v1/save_weights_for_sampler", "save_weights_for_sampler"),
    ("POST", r"/api/v1/asample", "asample"),
    ("POST", r"/api/v1/retrieve_future", "retrieve_future"),
    ("GET", r"/api/v1/training_runs/(?P<run>[^/]+)", "training_run"),
    ("GET", r"/api/v1/training_runs/(?P<run>[^/]+)/checkpoints/(?P<name>.+)/external_weights_urls", "weights_urls"),
    ("GET", r"/files/(?P<key>[^/]+)/(?P<file>.+)", "file"),
]
ALL_ROUTES = [r for _, _, r in ROUTES]


class Trained:
    """One training run: the LoRA model, its optimizer, and how many optimizer steps it has had."""

    def __init__(self, base: str, rank: int, alpha: float, seed: int | None) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        if seed is not None:
            torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", bias="none")
        self.model = get_peft_model(model, config)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)
        self.steps = 0

    def state(self) -> dict[str, Any]:
        import copy

        return {
            "rank": self.model.peft_config["default"].r,
            "weights": {k: v.detach().clone() for k, v in self.model.state_dict().items() if "lora_" in k},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "steps": self.steps,
        }

    def load(self, state: dict[str, Any], optimizer: bool) -> None:
        self.model.load_state_dict(state["weights"], strict=False)
        if optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
        self.steps = state["steps"]


class FakeTinker(FakeServer):
    ROUTES = ROUTES
    ALL_ROUTES = ALL_ROUTES

    def __init__(self, base_model_dir: str | Path, api_key: str = "tml-fake-key", lora_alpha: float = 32.0) -> None:
        super().__init__()
        self.base_model_dir, self.api_key, self.lora_alpha = str(base_model_dir), api_key, lora_alpha
        self.runs: dict[str, Trained] = {}
        self.results: dict[str, tuple[str, Any]] = {}
        #: tinker path -> saved state (weights, optimizer, steps).
        self.checkpoints: dict[str, dict[str, Any]] = {}
        #: key -> {file name: bytes} of exported adapters.
        self.files: dict[str, dict[str, bytes]] = {}
        #: (run id, step) of every optimizer step taken, in order: a step trained twice shows up twice.
        self.trained_steps: list[tuple[str, int]] = []
        #: The loss of every forward_backward (the mean of the weighted token losses the client asked for).
        self.losses: list[float] = []
        #: sampling session id -> the LoRA weights (and rank) it samples with.
        self.samplers: dict[str, dict[str, Any]] = {}
        #: Every sample request: its prompt tokens, seed and the (tokens, logprobs) of each answer returned.
        self.samples: list[dict[str, Any]] = []
        #: Every importance_sampling forward_backward: per datum, its input tokens, target tokens, sampling logprobs
        #: and advantages as received.
        self.rl_inputs: list[list[dict[str, np.ndarray]]] = []
        #: The gradient of every optimizer step (all LoRA parameters, flattened, before clipping).
        self.gradients: list[Any] = []
        self._sampling_models: dict[int, Trained] = {}
        self.sessions = 0
        #: session id -> the finish reason the client sent ("success", "errored", "interrupted").
        self.finished: dict[str, str] = {}
        self._compute = threading.Lock()

    # ------------------------------------------------------------ dispatch

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any, dict[str, str]]:
        path = urlsplit(raw_path).path
        if not path.startswith("/files/") and headers.get("X-API-Key") != self.api_key:
            auth = headers.get("Authorization") or ""
            if auth != f"Bearer {self.api_key}":
                raise HttpError(401, "Invalid API key.", "invalid_api_key")
        return 200, self.dispatch(method, path, body=body, headers=headers), {}

    def error_body(self, exc: HttpError) -> tuple[dict, dict[str, str]]:
        return {"detail": str(exc), "error": str(exc)}, dict(exc.headers)

    def _future(self, kind: str, result: Any, model_id: str | None = None) -> dict:
        request_id = uuid.uuid4().hex
        with self._lock:
            self.results[request_id] = (kind, result)
        return {"request_id": request_id, **({"model_id": model_id} if model_id else {})}

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        return json.loads(body or b"{}")

    # ------------------------------------------------------------ session

    def _client_config(self, **_: Any) -> dict:
        return {
            "pjwt_auth_enabled": False,
            "use_pyqwest_transport": False,
            "proto_compress_fwdbwd": False,
            "parallel_fwdbwd_chunks": False,
        }

    def _client_dynamic_config(self, **_: Any) -> dict:
        return {}

    def _create_session(self, **_: Any) -> dict:
        self.sessions += 1
        return {"type": "create_session", "session_id": f"session-{uuid.uuid4().hex[:8]}"}

    def _finish_session(self, session: str, body: bytes, **_: Any) -> dict:
        self.finished[session] = self._json(body)["reason"]["type"]
        return {}

    def _session_heartbeat(self, **_: Any) -> dict:
        return {"type": "session_heartbeat"}

    def _telemetry(self, **_: Any) -> dict:
        return {"status": "accepted"}

    # ------------------------------------------------------------ training

    def _create_model(self, body: bytes, **_: Any) -> dict:
        req = self._json(body)
        lora = req.get("lora_config") or {}
        run_id = f"{req['session_id']}:train:{req['model_seq_id']}"  # the id the SDK derives, as the real server does
        with self._compute:
            self.runs[run_id] = Trained(
                self.base_model_dir, int(lora.get("rank", 32)), self.lora_alpha, lora.get("seed")
            )
        return self._future("create_model", {"type": "create_model", "model_id": run_id}, run_id)

    def _get_info(self, body: bytes, **_: Any) -> dict:
        req = self._json(body)
        return {"type": "get_info", "model_data": {"arch": "llama", "model_name": "tiny"}, "model_id": req["model_id"]}

    def _forward_backward(self, body: bytes, **_: Any) -> dict:
        return self._fwd(body, backward=True)

    def _forward(self, body: bytes, **_: Any) -> dict:
        return self._fwd(body, backward=False)

    def _fwd(self, body: bytes, backward: bool) -> dict:
        import torch
        from tinker.proto import tinker_public_pb2 as pb

        msg = pb.ForwardBackwardRequest()
        msg.ParseFromString(body)
        backward = backward and not msg.forward_only
        run = self._run(msg.model_id)
        if msg.loss_fn not in ("cross_entropy", "importance_sampling"):
            raise HttpError(
                400, f"loss_fn={msg.loss_fn} is not offered by this fake (cross_entropy, importance_sampling)"
            )
        logprobs_out, total, received = [], 0.0, []
        with self._compute:
            if not backward:
                run.model.eval()
            for datum in msg.data:
                tokens = np.concatenate(
                    [np.frombuffer(c.encoded_text.tokens, dtype=np.int32) for c in datum.model_input]
                )
                inputs = {k: _tensor(v) for k, v in datum.loss_fn_inputs.items()}
                target = inputs["target_tokens"].astype(np.int64)
                ids = torch.tensor(tokens, dtype=torch.long)[None]
                with torch.set_grad_enabled(backward):
                    logits = run.model(input_ids=ids).logits[0].float()
                    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(target)[:, None])[:, 0]
                    if msg.loss_fn == "importance_sampling":
                        sampled = torch.tensor(inputs["logprobs"].astype(np.float32))
                        advantages = torch.tensor(inputs["advantages"].astype(np.float32))
                        loss = -(torch.exp(lp - sampled) * advantages).sum()
                        received.append({"tokens": tokens, **inputs})
                    else:
                        loss = -(lp * torch.tensor(inputs["weights"].astype(np.float32))).sum()
                    if backward:
                        loss.backward()
                total += float(loss.detach())
                logprobs_out.append(lp.detach().numpy().astype(np.float32))
            run.model.train()
        if backward:
            self.losses.append(total)
        if received:
            self.rl_inputs.append(received)
        out = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
        out.metrics["loss:sum"] = total
        record = out.loss_fn_outputs.add()
        record.num_datums = len(logprobs_out)
        bt = record.fields["logprobs"]
        bt.dtype = pb.DTYPE_FLOAT32
        offsets = np.cumsum([0] + [a.nbytes for a in logprobs_out]).astype(np.int64)
        bt.offsets = offsets.tobytes()
        bt.data = b"".join(a.tobytes() for a in logprobs_out)
        return self._future("proto", out.SerializeToString(), msg.model_id)

    def _optim_step(self, body: bytes, **_: Any) -> dict:
        import torch

        req = self._json(body)
        run = self._run(req["model_id"])
        p = req.get("adam_params") or req.get("optim_params") or {}
        with self._compute:
            for group in run.optimizer.param_groups:
                group["lr"] = float(p.get("learning_rate", 1e-4))
                group["betas"] = (float(p.get("beta1", 0.9)), float(p.get("beta2", 0.95)))
                group["eps"] = float(p.get("eps", 1e-12))
                group["weight_decay"] = float(p.get("weight_decay", 0.0))
            clip = float(p.get("grad_clip_norm", 0.0))
            self.gradients.append(
                torch.cat([(q.grad if q.grad is not None else torch.zeros_like(q)).flatten() for q in run.params])
            )
            norm = torch.nn.utils.clip_grad_norm_(run.params, clip if clip > 0 else float("inf"))
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.steps += 1
            self.trained_steps.append((req["model_id"], run.steps))
        return self._future("json", {"metrics": {"grad_norm": float(norm)}}, req["model_id"])

    def _save_weights(self, body: bytes, **_: Any) -> dict:
        req = self._json(body)
        run = self._run(req["model_id"])
        path = f"tinker://{req['model_id']}/weights/{req.get('path') or uuid.uuid4().hex[:6]}"
        with self._compute:
            self.checkpoints[path] = run.state()
        return self._future("json", {"type": "save_weights", "path": path}, req["model_id"])

    def _load_weights(self, body: bytes, **_: Any) -> dict:
        req = self._json(body)
        state = self.checkpoints.get(req["path"])
        if state is None:
            raise HttpError(404, f"No checkpoint {req['path']}")
        if req.get("model_id"):
            run_id = req["model_id"]
            run = self._run(run_id)
        else:  # create-via-load: a new training run from the checkpoint
            run_id = f"{req['session_id']}:train:{req['model_seq_id']}"
            with self._compute:
                run = self.runs[run_id] = Trained(self.base_model_dir, state["rank"], self.lora_alpha, None)
        with self._compute:
            run.load(state, optimizer=bool(req.get("optimizer")))
        return self._future("json", {"type": "load_weights", "path": req["path"], "model_id": run_id})

    # ------------------------------------------------------------ sampling

    def _save_weights_for_sampler(self, body: bytes, **_: Any) -> dict:
        req = self._json(body)
        run = self._run(req["model_id"])
        if req.get("path"):
            raise HttpError(400, "this fake serves unnamed sampler weights only (save_weights_and_get_sampling_client)")
        session = f"{req['model_id']}:sample:{req['sampling_session_seq_id']}"
        with self._compute:
            state = run.state()
            self.samplers[session] = {"rank": state["rank"], "weights": state["weights"]}
        result = {"type": "save_weights_for_sampler", "sampling_session_id": session}
        return self._future("json", result, req["model_id"])

    def _asample(self, body: bytes, **_: Any) -> dict:
        from tinker.proto import tinker_public_pb2 as pb

        req = self._json(body)
        sampler = self.samplers.get(req.get("sampling_session_id") or "")
        if sampler is None:
            raise HttpError(404, f"Unknown sampling session {req.get('sampling_session_id')}")
        prompt = [t for chunk in req["prompt"]["chunks"] for t in chunk["tokens"]]
        params = req.get("sampling_params") or {}
        n = int(req.get("num_samples", 1))
        with self._compute:
            answers = self._generate(sampler, prompt, n, params)
        self.samples.append({"prompt": prompt, "seed": params.get("seed"), "answers": answers})
        out = pb.SampleResponse()
        for tokens, logprobs, stopped in answers:
            seq = out.sequences.add()
            seq.stop_reason = pb.STOP_REASON_STOP if stopped else pb.STOP_REASON_LENGTH
            seq.tokens = np.asarray(tokens, dtype=np.int32).tobytes()
            seq.logprobs = np.asarray(logprobs, dtype=np.float32).tobytes()
        future = self._future("proto", out.SerializeToString())
        return {**future, "sample_sequence_ids": [uuid.uuid4().hex for _ in range(n)]}

    def _generate(self, sampler: dict[str, Any], prompt: list[int], n: int, params: dict) -> list:
        """n answers from the sampler's weights: (tokens, logprobs, stopped at a stop token) each."""
        import torch

        rank = int(sampler["rank"])
        if rank not in self._sampling_models:
            self._sampling_models[rank] = Trained(self.base_model_dir, rank, self.lora_alpha, None)
        model = self._sampling_models[rank].model
        model.load_state_dict(sampler["weights"], strict=False)
        model.eval()
        stop = params.get("stop")
        if stop is None:
            stop = [model.config.eos_token_id]
        if not all(isinstance(t, int) for t in stop):
            raise HttpError(400, "this fake stops on token ids only (sampling_params.stop=[ids])")
        generator = torch.Generator()
        if params.get("seed") is not None:
            generator.manual_seed(int(params["seed"]))
        temperature, top_k = float(params.get("temperature", 1.0)), int(params.get("top_k", -1))
        top_p = float(params.get("top_p", 1.0))
        ids = torch.tensor(prompt, dtype=torch.long)[None].repeat(n, 1)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        stopped = [False] * n
        past = None
        with torch.no_grad():
            for _ in range(int(params.get("max_tokens") or 16)):
                out = model(input_ids=ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[:, -1].float() / max(temperature, 1e-6)
                if top_k > 0:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                if top_p < 1.0:
                    ordered, index = torch.sort(logits, descending=True)
                    cut = torch.softmax(ordered, -1).cumsum(-1) - torch.softmax(ordered, -1) > top_p
                    logits = logits.scatter(1, index, ordered.masked_fill(cut, float("-inf")))
                logp = torch.log_softmax(logits, -1)
                chosen = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
                for i in range(n):
                    if not stopped[i]:
                        tokens[i].append(int(chosen[i]))
                        logprobs[i].append(float(logp[i, chosen[i]]))
                        stopped[i] = int(chosen[i]) in stop
                if all(stopped):
                    break
                ids = chosen[:, None]  # the cache holds what came before
        return [(t, lp, s) for t, lp, s in zip(tokens, logprobs, stopped, strict=True)]

    def _save_weights_external(self, body: bytes, **_: Any) -> dict:
        import tempfile

        req = self._json(body)
        run = self._run(req["model_id"])
        name = req.get("path") or uuid.uuid4().hex[:6]
        with self._compute, tempfile.TemporaryDirectory() as tmp:
            run.model.save_pretrained(tmp)
            self.files[f"{req['model_id']}--{name}"] = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
        path = f"tinker://{req['model_id']}/external_weights/{name}"
        return self._future("json", {"type": "save_weights_external", "path": path}, req["model_id"])

    def _training_run(self, run: str, **_: Any) -> dict:
        trained = self._run(run)
        return {"training_run_id": run, "base_model": self.base_model_dir, "model_owner": "fake", "is_lora": True,
                "lora_rank": trained.model.peft_config["default"].r, "corrupted": False,
                "last_request_time": "2026-01-01T00:00:00Z"}  # fmt: skip

    def _weights_urls(self, run: str, name: str, headers: Any, **_: Any) -> dict:
        key = f"{run}--{name.split('/')[-1]}"
        if key not in self.files:
            raise HttpError(404, f"No external weights {run}/{name}")
        host = headers.get("Host")
        urls = {f: f"http://{host}/files/{key}/{f}" for f in self.files[key]}
        return {"urls": urls, "expires": "2099-01-01T00:00:00Z"}

    def _file(self, key: str, file: str, **_: Any) -> Raw:
        data = self.files.get(key, {}).get(file)
        if data is None:
            raise HttpError(404, f"No file {key}/{file}")
        return Raw(200, data, {"Content-Type": "application/octet-stream"})

    def _retrieve_future(self, body: bytes, **_: Any) -> Any:
        req = self._json(body)
        with self._lock:
            found = self.results.get(req["request_id"])
        if found is None:
            raise HttpError(404, f"Unknown request {req['request_id']}")
        kind, result = found
        if kind == "proto":
            return Raw(200, result, {"Content-Type": "application/x-protobuf"})
        return result

    def _run(self, run_id: str) -> Trained:
        run = self.runs.get(run_id)
        if run is None:
            raise HttpError(404, f"Unknown model {run_id}")
        return run


def _tensor(msg: Any) -> np.ndarray:
    from tinker.proto import tinker_public_pb2 as pb

    dtype = {pb.DTYPE_FLOAT32: np.float32, pb.DTYPE_INT64: np.int64, pb.DTYPE_INT32: np.int32}[msg.dtype]
    return np.frombuffer(msg.dense, dtype=dtype)
