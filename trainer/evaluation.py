"""Evaluation on the held-out split: loss and perplexity, then generation metrics, for one model state.

The engine calls :func:`evaluate` three ways: the base model (before training; a fresh LoRA adapter is an
identity, so the model in the trainer *is* the base model then), the base model with K training examples as
demonstrations in the prompt (``eval.few_shot``), and the fine-tuned model. Every section has the same metric
names, so the report can put them side by side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class Query:
    """One generation query: chat messages (templated) or a raw prompt string, and the reference answer."""

    prompt: list[dict] | str
    reference: str


def queries(rows: list[dict], limit: int | None) -> list[Query]:
    """Held-out rows -> queries: a chat row is asked everything before its last assistant message."""
    out = []
    for row in rows:
        if "messages" in row:
            messages = row["messages"]
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last is not None:
                out.append(Query([_plain(m) for m in messages[:last]], messages[last]["content"]))
        elif "completion" in row and isinstance(row.get("prompt"), str):
            out.append(Query(row["prompt"], row["completion"]))
    return out[:limit] if limit is not None else out


def with_demonstrations(query: Query, demos: list[Query]) -> Query:
    """The query with K solved examples inserted as earlier turns (few-shot prompting, no training)."""
    if isinstance(query.prompt, str):
        shots = "".join(f"{d.prompt}{d.reference}\n\n" for d in demos if isinstance(d.prompt, str))
        return Query(shots + query.prompt, query.reference)
    system = [m for m in query.prompt[:1] if m["role"] == "system"]
    turns = []
    for demo in demos:
        turns += [m for m in demo.prompt if m["role"] != "system"] + [{"role": "assistant", "content": demo.reference}]
    return Query(system + turns + query.prompt[len(system) :], query.reference)


def _plain(message: dict) -> dict:
    return {"role": message["role"], "content": message["content"]}


def render(tokenizer, query: Query) -> str:
    if isinstance(query.prompt, str):
        return query.prompt
    return tokenizer.apply_chat_template(query.prompt, tokenize=False, add_generation_prompt=True)


def generate(model, tokenizer, prompts: list[str], eval_cfg: DictConfig, desc: str) -> list[str]:
    """Batched generation (greedy by default) with a progress bar; returns the decoded new text."""
    import torch
    from tqdm.auto import tqdm

    gen = OmegaConf.to_container(eval_cfg.generation, resolve=True)
    if not gen["do_sample"]:
        gen.pop("temperature")
        gen.pop("top_p")
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), eval_cfg.batch_size), desc=desc, unit="batch"):
            batch = prompts[start : start + eval_cfg.batch_size]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                out = model.generate(**enc, **gen, pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1] :]
            outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def evaluate(
    trainer, tokenizer, cfg: DictConfig, qs: list[Query], label: str, run_loss: bool = True, scorers: dict | None = None
) -> dict:
    """Loss/perplexity on the validation dataset (when there is one) and generation metrics on ``qs``;
    ``scorers`` (name -> function of all the predictions) add numbers of their own (GRPO's mean reward)."""
    result: dict = {}
    if run_loss and trainer.eval_dataset is not None and len(trainer.eval_dataset) > 0:
        loss = trainer.evaluate(metric_key_prefix=f"{label}_eval")[f"{label}_eval_loss"]
        result["eval_loss"] = loss
        result["perplexity"] = math.exp(min(loss, 50.0))
    if not qs:
        return result
    prompts = [render(tokenizer, q) for q in qs]
    predictions = generate(trainer.model, tokenizer, prompts, cfg.eval, desc=f"generate ({label})")
    metrics = [instantiate(m) for m in cfg.eval.metrics]
    for metric in metrics:
        scores = [metric(p, q.reference) for p, q in zip(predictions, qs, strict=True)]
        result[metric.name] = sum(scores) / len(scores)
    for name, scorer in (scorers or {}).items():
        result[name] = scorer(predictions)
    result["prompt_tokens_per_query"] = sum(
        len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts
    ) / len(prompts)
    result["examples"] = len(qs)
    result["samples"] = [
        {"prompt": prompts[i][-300:], "prediction": predictions[i], "reference": qs[i].reference}
        for i in range(min(5, len(qs)))
    ]
    return result


def base_cache_file(cfg: DictConfig, model_path: str, qs: list[Query], dataset_key: str, label: str) -> Path:
    """Where the base model's results for this (model, data, eval settings) are cached across runs and sweeps."""
    key = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "model_path": model_path,
        "eval": OmegaConf.to_container(cfg.eval, resolve=True),
        "objective": OmegaConf.to_container(cfg.objective, resolve=True),  # its loss and its own metrics
        "dataset": dataset_key,
        "queries": [[q.prompt, q.reference] for q in qs],
        "label": label,
        "seed": cfg.seed,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir) / "evals" / f"{label}-{digest}.json"


def cached(path: Path, compute, enabled: bool) -> dict:
    """Load ``path`` when it exists (and caching is enabled), else compute and store it atomically."""
    if enabled and path.exists():
        log.info("base evaluation cache hit: %s", path.name)
        return json.loads(path.read_text())
    result = compute()
    if enabled:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps(result))
        tmp.replace(path)
    return result
