"""Tinker's training API (``hardware=tinker``) through the official ``tinker`` SDK: hydratune's own training loop,
with the compute at Tinker.

There is no job: hydratune tokenizes the data itself (trainer.data, the same tokens and loss masks a local run
trains on), draws the batches (a seeded permutation per epoch), computes the learning rate of each step from the
config's schedule (train.lr_scheduler_type, warmup_steps ...) and sends, per step, one ``forward_backward`` (loss
``cross_entropy``, weights = the loss mask over the batch's answer tokens, so the loss is the batch's mean token loss)
and one ``optim_step`` (AdamW). Each step's loss goes to metrics.jsonl; every ``train.save_steps`` steps, and at the
end, ``save_state`` keeps the weights and optimizer state at Tinker and the run dir records where
(cloud_state.json: ``tinker``), so a rerun into the same run dir resumes from the last saved state and pays for no
step before it again. The trained LoRA is exported (``save_weights_external``) and downloaded into ``<run dir>/model``
in peft's save_pretrained layout, then evaluated here through the engine's own phase, like Together's weights.

objective=dpo computes DPO's loss here from the logprobs Tinker returns (``forward_backward_custom``), the reference
being the base model's forward; objective=grpo samples its answers at Tinker, scores them here with the objective's
reward functions and sends Tinker's ``importance_sampling`` loss (launchers/cloud/providers/_tinker_grpo.py).

Any Tinker-compatible endpoint works through ``hardware.base_url`` (or TINKER_BASE_URL); the key comes from
TINKER_API_KEY only.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from launchers.cloud.client import stainless_errors
from launchers.cloud.provider import Job, require_key
from trainer.config.errors import UserError

log = logging.getLogger(__name__)
WEIGHTS_DIR = "model"
STATE_KEY = "tinker"
CLOSE_TIMEOUT_S = 30.0  # finishing a session: one request, retried by the SDK


class Tinker:
    name = "tinker"
    settings = (
        "hydratune runs its own training loop there: LoRA of rank hardware.lora_rank (null: method.peft.r), the "
        "train.* schedule (learning_rate, lr_scheduler_type, warmup_steps, num_train_epochs or max_steps, "
        "per_device_train_batch_size x gradient_accumulation_steps, weight_decay, max_grad_norm, save_steps) and "
        "AdamW's hardware.adam_beta1, adam_beta2, adam_epsilon."
    )

    def __init__(self, hw: Any) -> None:
        self.hw = hw

    # ------------------------------------------------------------ config

    @contextmanager
    def session(self) -> Iterator[Any]:
        """A Tinker session (a ServiceClient) for one phase of the run, finished and closed when the phase ends: its
        heartbeat thread stops, and the server learns whether the phase succeeded."""
        import tinker

        require_key(self.hw, "TINKER_API_KEY", "Tinker")
        service = tinker.ServiceClient(api_key=self.hw.api_key or None, base_url=self.base_url())
        succeeded = False
        try:
            yield service
            succeeded = True
        finally:
            try:
                service.close("success" if succeeded else "errored").result(timeout=CLOSE_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - the phase's own outcome stands; a failed goodbye only logs
                log.warning("could not finish the Tinker session cleanly (%s); its results are saved", exc)

    def base_url(self) -> str | None:
        """hardware.base_url, else TINKER_BASE_URL, read now: the SDK keeps one REST connection set per base URL for
        the life of the process, so leaving it to the SDK's own reading of the environment would reuse the first
        endpoint's connections for a later run in the same process that names another."""
        return self.hw.base_url or os.environ.get("TINKER_BASE_URL") or None

    def model_name(self, cfg: Any) -> str:
        return str(cfg.model.name_or_path)

    def check(self, cfg: Any) -> None:
        if cfg.model.weights is None:
            raise UserError(
                f"model.weights is not set for {cfg.model.name_or_path}: hardware=tinker tokenizes the data here with "
                "the base model's own tokenizer and evaluates the downloaded LoRA on the base model's weights "
                "(model.weights.source=hf model.weights.name_or_path=ORG/NAME)."
            )
        if cfg.dataset.format == "text":
            raise UserError(
                "hardware=tinker trains on chat or prompt/completion data here (dataset.format=text is not)."
            )
        if cfg.objective.name == "grpo":
            from launchers.cloud.providers import _tinker_grpo

            _tinker_grpo.check(cfg)

    def price_table(self, cfg: Any) -> dict[str, float]:
        return {str(k): float(v) for k, v in cfg.hardware.price_per_million_training_tokens.items()}

    def epochs(self, cfg: Any) -> Any:
        return max(1, math.ceil(float(cfg.train.num_train_epochs)))

    def wants_validation(self, cfg: Any) -> bool:
        return False

    # ------------------------------------------------------------ the loop

    def train_loop(self, cfg: Any, state: Any, events: Any) -> Job:
        """Train step by step at Tinker, resuming from the last saved state; the finished run as a Job."""
        with self.session() as service:
            return self._train(cfg, state, events, service)

    def _train(self, cfg: Any, state: Any, events: Any, service: Any) -> Job:
        import tinker

        from launchers.cloud.providers import _tinker_grpo

        dpo = cfg.objective.name == "dpo"
        steps = plan(cfg)
        grpo = _tinker_grpo.GRPO(cfg, steps.tokenizer) if cfg.objective.name == "grpo" else None
        total = len(steps.batches)
        beta = float(OmegaConf.select(cfg, "objective.args.beta", default=0.1) or 0.1)
        saved = state.data.get(STATE_KEY) or {}
        if saved.get("path"):
            log.info("resuming from %s (step %d of %d)", saved["path"], saved["step"], total)
            training = service.create_training_client_from_state_with_optimizer(saved["path"]).result()
        else:
            rank = self.hw.lora_rank or int(cfg.method.peft.r)
            training = service.create_lora_training_client(
                base_model=self.model_name(cfg), rank=int(rank), seed=int(cfg.seed), train_unembed=False
            ).result()
        reference = None
        if dpo:  # the frozen reference: a fresh LoRA (B = 0) is the base model; only its forward is used
            reference = service.create_lora_training_client(
                base_model=self.model_name(cfg), rank=1, seed=int(cfg.seed), train_unembed=False
            ).result()
        done = int(saved.get("step", 0))
        trained = int(saved.get("tokens", 0))  # GRPO's: counted as its answers are sampled
        save_every = int(OmegaConf.select(cfg, "train.save_steps", default=0) or 0)
        hw = self.hw
        for step in range(done + 1, total + 1):
            batch = steps.batches[step - 1]
            extra: dict[str, float] = {}  # the objective's own metrics (GRPO's rewards)
            if grpo is not None:
                loss, extra, tokens = grpo.step(tinker, training, batch, step)
                trained += tokens
            elif reference is not None:
                data = [datum(tinker, ids, labels, weight) for ids, labels, weight in batch]
                ref = reference.forward(data, "cross_entropy").result()
                loss_fn = dpo_loss(batch, answer_logprobs(ref, batch), beta)
                out = training.forward_backward_custom(data, loss_fn).result()
                loss = float(out.metrics["dpo_loss"])
            else:
                data = [datum(tinker, ids, labels, weight) for ids, labels, weight in batch]
                out = training.forward_backward(data, "cross_entropy").result()
                loss = batch_loss(out, batch)
            params = tinker.AdamParams(
                learning_rate=steps.schedule[step - 1],
                beta1=float(hw.adam_beta1),
                beta2=float(hw.adam_beta2),
                eps=float(hw.adam_epsilon),
                weight_decay=float(OmegaConf.select(cfg, "train.weight_decay", default=0.0) or 0.0),
                grad_clip_norm=float(OmegaConf.select(cfg, "train.max_grad_norm", default=1.0) or 0.0),
            )
            training.optim_step(params).result()
            events.add([metrics_event(step, loss, steps.schedule[step - 1], extra)], training.model_id)
            if step == total or (save_every and step % save_every == 0):
                path = training.save_state(f"step-{step}").result().path
                record = {"run": training.model_id, "step": step, "path": path, "total": total, "tokens": trained}
                state.record(STATE_KEY, record)
                log.info("step %d/%d: loss %.4f, state saved (%s)", step, total, loss, path)
        tokens = trained if grpo is not None else steps.tokens
        job = Job(str(training.model_id), "succeeded", self.model_name(cfg), None, tokens)
        state.update_job(id=job.id, status="succeeded", trained_tokens=tokens, model=job.model)
        return job

    # ------------------------------------------------------------ result: the LoRA, downloaded

    def fetch_result(self, cfg: Any, state: Any, retry: Any, job: Job, run_dir: Path) -> dict[str, Any]:
        recorded = state.data.get("weights") or {}
        known = Path(recorded.get("path", "/nonexistent"))
        if recorded.get("job") == job.id and (known / "adapter_config.json").is_file():
            dest = known
        else:
            dest = run_dir / WEIGHTS_DIR
            saved = state.data.get(STATE_KEY) or {}
            if not saved.get("path"):
                raise UserError(f"{run_dir} records no saved Tinker state to export; run `hydratune train` first.")
            self._download(saved["path"], job.id, dest)
            state.record("weights", {"job": job.id, "kind": "adapter", "path": str(dest.resolve())})
            log.info("downloaded the LoRA of %s into %s", job.id, dest)
        return {"weights": os.path.relpath(dest, run_dir), "weights_kind": "adapter"}

    def _download(self, final_state: str, model_id: str, dest: Path) -> None:
        """Export the final state's LoRA and download its files into ``dest`` (atomically: a .partial folder)."""
        import httpx
        import tinker

        with self.session() as service:
            training = service.create_training_client_from_state(final_state).result()
            exported = training.save_weights_external("final").result().path
        rest = tinker.RestClient(api_key=self.hw.api_key or None, base_url=self.base_url())
        urls = rest.get_external_weights_urls(exported).result().urls
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name, url in urls.items():
            target = partial / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with httpx.stream("GET", url, timeout=300) as response:
                response.raise_for_status()
                with open(target, "wb") as f:
                    for chunk in response.iter_bytes(1 << 20):
                        f.write(chunk)
        if not (partial / "adapter_config.json").is_file():
            raise UserError(f"The weights Tinker exported for {model_id} hold no adapter_config.json ({partial}).")
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)

    def base_model(self, cfg: Any) -> str | None:
        return None  # evaluated here, on model.weights

    def serving(self, cfg: Any, state: Any, tuned: str | None) -> AbstractContextManager[str | None]:
        return nullcontext(tuned)

    # ------------------------------------------------------------ the job interface (no jobs at Tinker)

    def job(self, retry: Any, job_id: str) -> Job:
        return Job(job_id, "succeeded", None, None, None)

    def checkpoints(self, retry: Any, job_id: str) -> list[dict[str, Any]]:
        return []


@dataclass
class Plan:
    """What the loop trains, step by step."""

    #: Per step: (input ids, labels, 1 / the batch's answer tokens) per sequence (sft; dpo: the chosen sequences,
    #: then the rejected), or the step's prompts (grpo: _tinker_grpo.Prompt).
    batches: list[list[Any]]
    #: The learning rate of each step.
    schedule: list[float]
    #: The tokens trained in all (grpo: 0 here, counted as the answers are sampled).
    tokens: int
    tokenizer: Any


def plan(cfg: Any) -> Plan:
    """The steps, from hydratune's own tokenized data (grpo: its prompts) and the train.* schedule."""
    from launchers.cloud.providers import _tinker_grpo
    from trainer.data import prepare
    from trainer.models import load_tokenizer, resolve_path

    local: Any = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    local.model.source, local.model.name_or_path = cfg.model.weights.source, cfg.model.weights.name_or_path
    tokenizer, _ = load_tokenizer(local.model, resolve_path(local.model, cfg.cache_dir))
    per_step = int(cfg.train.per_device_train_batch_size) * int(
        OmegaConf.select(cfg, "train.gradient_accumulation_steps", default=1)
    )
    if cfg.objective.name == "grpo":  # per step: num_generations answers to each of per_step / num_generations
        prompts = _tinker_grpo.prompts(local, tokenizer)
        groups = per_step // _tinker_grpo.Settings.from_cfg(cfg).generations
        batches: list[list[Any]] = [[prompts[i] for i in idx] for idx in step_order(cfg, len(prompts), groups)]
        return Plan(batches, lr_schedule(cfg, len(batches)), 0, tokenizer)
    rows: list[Any]
    if cfg.objective.name == "dpo":
        rows = pair_rows(local, tokenizer)
    else:
        rows = [(list(r["input_ids"]), list(r["labels"])) for r in prepare(local, tokenizer, None).train]
    batches, tokens = [], 0
    for idx in step_order(cfg, len(rows), per_step):
        if cfg.objective.name == "dpo":  # pairs: the chosen ones, then the rejected
            batch = [(*rows[i][0], 1.0) for i in idx] + [(*rows[i][1], 1.0) for i in idx]
        else:
            answer = sum(sum(1 for label in rows[i][1][1:] if label != -100) for i in idx)
            batch = [(rows[i][0], rows[i][1], 1.0 / max(answer, 1)) for i in idx]
        batches.append(batch)
        tokens += sum(len(ids) for ids, _, _ in batch)
    return Plan(batches, lr_schedule(cfg, len(batches)), tokens, tokenizer)


def step_order(cfg: Any, n: int, per_step: int) -> list[list[int]]:
    """Each step's row indices: a seeded permutation per epoch, cut into batches (cycled or cut to train.max_steps)."""
    import torch

    epochs = max(1, math.ceil(float(cfg.train.num_train_epochs)))
    generator = torch.Generator().manual_seed(int(cfg.seed))
    order: list[int] = []
    for _ in range(epochs):
        order += torch.randperm(n, generator=generator).tolist()
    steps = [order[i : i + per_step] for i in range(0, len(order), per_step)]
    max_steps = int(OmegaConf.select(cfg, "train.max_steps", default=-1) or -1)
    if max_steps > 0:
        while len(steps) < max_steps:
            steps += steps[: max_steps - len(steps)]
        steps = steps[:max_steps]
    return steps


def lr_schedule(cfg: Any, n_steps: int) -> list[float]:
    """The learning rate of each step, from train.learning_rate, lr_scheduler_type and warmup_steps."""
    import torch
    from transformers import get_scheduler

    warmup = float(OmegaConf.select(cfg, "train.warmup_steps", default=0) or 0)
    warmup_steps = math.ceil(warmup * n_steps) if 0 < warmup < 1 else int(warmup)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=float(cfg.train.learning_rate))
    scheduler = get_scheduler(str(cfg.train.lr_scheduler_type), optimizer, warmup_steps, n_steps)
    schedule = []
    for _ in range(n_steps):
        schedule.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    return schedule


def pair_rows(cfg: Any, tokenizer: Any) -> list[Any]:
    """Preference pairs as ((chosen ids, labels), (rejected ids, labels)): the prompt with each answer, tokenized and
    masked by hydratune's own encoder (the answer's tokens count)."""
    from trainer.data import load_examples
    from trainer.data.tokenize import Encoder

    pairs = list(load_examples(cfg.dataset, None).train)
    encoder = Encoder(tokenizer, OmegaConf.select(cfg, "train.max_length", default=1024), False)
    chosen = encoder.encode([{"messages": list(p["prompt"]) + list(p["chosen"])} for p in pairs])
    rejected = encoder.encode([{"messages": list(p["prompt"]) + list(p["rejected"])} for p in pairs])
    both = sorted(set(chosen.kept) & set(rejected.kept))
    at_c, at_r = {k: i for i, k in enumerate(chosen.kept)}, {k: i for i, k in enumerate(rejected.kept)}
    return [
        (
            (chosen.input_ids[at_c[k]].tolist(), chosen.labels[at_c[k]].tolist()),
            (rejected.input_ids[at_r[k]].tolist(), rejected.labels[at_r[k]].tolist()),
        )
        for k in both
    ]


def answer_logprobs(out: Any, batch: list[tuple[list[int], list[int], float]]) -> list[float]:
    """Each sequence's summed logprob over its answer tokens."""
    sums = []
    for output, (_, labels, _) in zip(out.loss_fn_outputs, batch, strict=True):
        logprobs = output["logprobs"].to_numpy()
        sums.append(sum(float(lp) for lp, label in zip(logprobs, labels[1:], strict=True) if label != -100))
    return sums


def dpo_loss(batch: list[tuple[list[int], list[int], float]], reference: list[float], beta: float) -> Any:
    """DPO's sigmoid loss over the batch's pairs (chosen first, then rejected), for forward_backward_custom: the
    policy's logprobs come from Tinker, the reference's from the frozen base model's forward."""
    import torch

    masks = [torch.tensor([label != -100 for label in labels[1:]], dtype=torch.float32) for _, labels, _ in batch]
    n = len(batch) // 2

    def loss_fn(data: Any, logprobs: list[Any]) -> tuple[Any, dict[str, float]]:
        sums = torch.stack([(lp.flatten() * m).sum() for lp, m in zip(logprobs, masks, strict=True)])
        ref = torch.tensor(reference, dtype=sums.dtype)
        margin = (sums[:n] - ref[:n]) - (sums[n:] - ref[n:])
        loss = -torch.nn.functional.logsigmoid(beta * margin).mean()
        accuracy = float((margin > 0).float().mean())
        return loss, {"dpo_loss": float(loss.detach()), "pair_accuracy": accuracy}

    return loss_fn


def datum(tinker: Any, ids: list[int], labels: list[int], weight: float) -> Any:
    """One example as Tinker's Datum: the model reads ids[:-1] and predicts ids[1:], weighted where labels count."""
    import numpy as np

    target = np.asarray(ids[1:], dtype=np.int64)
    weights = np.asarray([weight if label != -100 else 0.0 for label in labels[1:]], dtype=np.float32)
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(ids[:-1]), loss_fn_inputs={"target_tokens": target, "weights": weights}
    )


def batch_loss(out: Any, batch: list[tuple[list[int], list[int], float]]) -> float:
    """The batch's mean answer-token loss, from the logprobs Tinker returned."""
    total = 0.0
    for output, (_, labels, weight) in zip(out.loss_fn_outputs, batch, strict=True):
        logprobs = output["logprobs"].to_numpy()
        total -= sum(float(lp) * weight for lp, label in zip(logprobs, labels[1:], strict=True) if label != -100)
    return total


def metrics_event(step: int, loss: float, lr: float, extra: dict[str, float] | None = None) -> dict[str, Any]:
    """One step's metrics as a provider event (``extra``: the objective's own, e.g. GRPO's rewards, logged as they
    are)."""
    shown = "".join(f", {k}={v:.4g}" for k, v in (extra or {}).items() if k in ("reward", "reward_std"))
    return {"id": f"step-{step}", "created_at": int(time.time()), "level": "info", "type": "metrics",
            "message": f"step {step}: loss={loss:.6f}, learning_rate={lr:.3g}{shown}",
            "data": {"step": step, "train_loss": loss, "learning_rate": lr, "train_metrics": dict(extra or {})}}  # fmt: skip


def sdk_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    return stainless_errors("tinker")


def make(hw: Any) -> Tinker:
    return Tinker(hw)
