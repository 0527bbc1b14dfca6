"""Evaluation on the held-out split: loss and perplexity, then generation metrics, for one model state.

The engine calls :func:`evaluate` three ways: the base model (before training; a fresh LoRA adapter is an
identity, so the model in the trainer *is* the base model then), the base model with K training examples as
demonstrations in the prompt (``eval.few_shot``), and the fine-tuned model. Every section has the same metric
names, so the report can put them side by side. Each evaluation draws from random streams of its own, seeded with
the run's seed (:func:`own_random_state`): it never changes what training draws, whether it runs or its result comes
from the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.config.plain import build, plain_dict
from trainer.data import tool_calls

log = logging.getLogger(__name__)

#: How much of each rendered prompt (its end: the question) the per-example record keeps.
PROMPT_CHARS = 1200


@dataclass
class Query:
    """One generation query: chat messages (templated) or a raw prompt string, the reference answer, and the tools
    the row offers (function-calling rows; a reference that calls them is written as the fallback template's
    ``<tool_call>`` blocks, which the tool-call metrics parse)."""

    prompt: list[dict] | str
    reference: str
    tools: list[dict] | None = None


def queries(rows: list[dict], limit: int | None) -> list[Query]:
    """Held-out rows -> queries: a chat row is asked everything before its last assistant message (a row with
    nothing before it is no query), a preference row its prompt with the chosen answer as the reference."""
    out = []
    for row in rows:
        if "messages" in row:
            messages = row["messages"]
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last:
                reference = tool_calls.answer_text(messages[last])
                out.append(Query([_plain(m) for m in messages[:last]], reference, row.get("tools")))
        elif "chosen" in row and isinstance(row.get("prompt"), list):
            answers = [m for m in row["chosen"] if m["role"] == "assistant"]
            if row["prompt"] and answers:
                out.append(Query([_plain(m) for m in row["prompt"]], answers[-1]["content"]))
        elif "completion" in row and isinstance(row.get("prompt"), str):
            out.append(Query(row["prompt"], row["completion"]))
    return out[:limit] if limit is not None else out


def with_demonstrations(query: Query, demos: list[Query]) -> Query:
    """The query with K solved examples inserted as earlier turns (few-shot prompting, no training)."""
    if isinstance(query.prompt, str):
        shots = "".join(f"{d.prompt}{d.reference}\n\n" for d in demos if isinstance(d.prompt, str))
        return Query(shots + query.prompt, query.reference)
    system = [m for m in query.prompt[:1] if m["role"] == "system"]
    turns: list[dict] = []
    for demo in demos:
        assert not isinstance(demo.prompt, str), "chat and plain-text demonstrations are not mixed"
        turns += [m for m in demo.prompt if m["role"] != "system"] + [{"role": "assistant", "content": demo.reference}]
    return Query(system + turns + query.prompt[len(system) :], query.reference, query.tools)


def check_few_shot(
    eval_cfg: DictConfig, tokenizer, train_rows: list[dict], held_out: list[Query], context: int
) -> None:
    """eval.few_shot against the training split (the demonstrations are its first K questions) and the model's
    context: every few-shot prompt of the held-out split plus eval.generation.max_new_tokens must fit. Checked with
    the real rows and tokenizer before any weights load; a UserError names the most demonstrations that fit."""
    from trainer.config.errors import UserError

    k, new = eval_cfg.few_shot, eval_cfg.generation.max_new_tokens
    pool = queries(train_rows, k)
    if len(pool) < k:
        raise UserError(
            f"eval.few_shot={k}, but the training split has only {len(pool)} rows that can serve as demonstrations "
            f"(a question with its answer), so at most {len(pool)} are allowed. Set eval.few_shot to a small number "
            "(3 to 8 is usual), or eval.few_shot=0 for no few-shot column."
        )

    def longest(n: int, asked: list[Query]) -> int:
        prompts = [render(tokenizer, with_demonstrations(q, pool[:n])) for q in asked]
        return max((len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts), default=0)

    if not held_out:
        return
    shortest = [min(held_out, key=lambda q: len(render(tokenizer, q)))]

    def fits(n: int) -> bool:  # the shortest question first: when the demonstrations alone overflow, that is cheap
        return longest(n, shortest) + new <= context and longest(n, held_out) + new <= context

    need = longest(k, shortest)
    if need + new <= context:
        need = longest(k, held_out)
        if need + new <= context:
            return
    low, high = 0, k - 1  # the most demonstrations that fit beside every question
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    raise UserError(
        f"eval.few_shot={k}: a few-shot prompt of the held-out split takes {need} tokens, and with "
        f"eval.generation.max_new_tokens={new} it needs {need + new}, more than the model's context of {context} "
        f"tokens. At most {low} demonstrations fit beside every question: set eval.few_shot={low} or less (or lower "
        "eval.generation.max_new_tokens, or eval.max_examples to ask fewer questions)."
    )


def _plain(message: dict) -> dict:
    """A prompt message: role and content, and the tool calls and results of a function-calling conversation
    (earlier reasoning is left out, as reasoning templates do)."""
    return {k: message[k] for k in ("role", "content", "tool_calls", "tool_call_id") if k in message}


def render(tokenizer, query: Query) -> str:
    if isinstance(query.prompt, str):
        return query.prompt
    messages, tools = query.prompt, None
    if query.tools is not None or tool_calls.structured(messages):  # rendered as the rows were for training
        messages, tools = tool_calls.template_messages(messages, query.tools, "drop", tokenizer.get_chat_template())
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)


def generate(model, tokenizer, prompts: list[str], eval_cfg: DictConfig, desc: str) -> list[str]:
    """Batched generation (greedy by default) with a progress bar; returns the decoded new text."""
    import torch
    from tqdm.auto import tqdm

    gen = plain_dict(eval_cfg.generation)
    if not gen["do_sample"]:
        gen.pop("temperature")
        gen.pop("top_p")
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    eos = end_of_answer_tokens(model, tokenizer)
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), eval_cfg.batch_size), desc=desc, unit="batch"):
            batch = prompts[start : start + eval_cfg.batch_size]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                out = model.generate(**enc, **gen, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
            new = out[:, enc["input_ids"].shape[1] :]
            outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def end_of_answer_tokens(model, tokenizer) -> list[int]:
    """The tokenizer's end-of-sequence token (the one the chat template ends each trained answer with) and the
    model's own: generation stops at either, as it does for the exported and served model (trainer.hosting.export)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    known = configured if isinstance(configured, list) else [configured]
    return [tokenizer.eos_token_id] + [t for t in known if t is not None and t != tokenizer.eos_token_id]


@contextmanager
def own_random_state(seed: int) -> Iterator[None]:
    """Run the block with the random streams (python's, numpy's, torch's on the CPU and on every CUDA device) seeded
    with ``seed``, and give every stream back the state it had before. An evaluation inside draws what it draws (a
    sampled generation, a dataloader's seed) without moving training's streams, so a run whose base evaluation came
    from the cache trains exactly as one that computed it, and a sampled answer is the same in every run."""
    import numpy as np
    import torch
    from transformers import set_seed

    python, numpy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            set_seed(seed)
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def evaluate(
    trainer, tokenizer, cfg: DictConfig, qs: list[Query], label: str, run_loss: bool = True, scorers: dict | None = None
) -> dict:
    """Loss/perplexity on the validation dataset (when there is one) and generation metrics on ``qs``
    (:func:`answer_metrics`, with the trainer's model), on random streams of its own (:func:`own_random_state`)."""
    with own_random_state(cfg.seed):
        return _evaluate(trainer, tokenizer, cfg, qs, label, run_loss, scorers)


def _evaluate(trainer, tokenizer, cfg: DictConfig, qs: list[Query], label: str, run_loss: bool, scorers) -> dict:
    result: dict = {}
    if run_loss and trainer.eval_dataset is not None and len(trainer.eval_dataset) > 0:
        # eval_<label>_loss: trackers file it under eval/ (TensorBoard's eval_ prefix)
        loss = trainer.evaluate(metric_key_prefix=f"eval_{label}")[f"eval_{label}_loss"]
        result["eval_loss"] = loss
        result["perplexity"] = math.exp(min(loss, 50.0))
    return result | answer_metrics(trainer.model, tokenizer, cfg, qs, label, scorers)


def answer_metrics(model, tokenizer, cfg: DictConfig, qs: list[Query], label: str, scorers: dict | None = None) -> dict:
    """Generation metrics of ``model`` on ``qs``; ``scorers`` (name -> function of all the predictions, returning
    one score per query) add metrics of their own (GRPO's reward), kept per example like the configured ones."""
    if not qs:
        return {}
    prompts = [render(tokenizer, q) for q in qs]
    predictions = generate(model, tokenizer, prompts, cfg.eval, desc=f"generate ({label})")
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    answer_tokens = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in predictions]
    result = scores(cfg.eval.metrics, qs, predictions, prompt_tokens, prompts, answer_tokens)
    for name, scorer in (scorers or {}).items():
        values = [float(v) for v in scorer(predictions)]
        result["per_example"]["scores"][name] = values
        result[name] = sum(values) / len(values)
    return result


def scores(
    metric_cfgs,
    qs: list[Query],
    predictions: list[str],
    prompt_tokens: list[int],
    shown: list[str],
    answer_tokens: list[int] | None = None,
) -> dict:
    """One section of metrics.json from the answers to ``qs``, wherever they were generated (in this process or
    behind an endpoint): the mean of each configured metric, prompt (and answer) tokens per query, the count, 5
    samples, and every example's answer and scores (``per_example``: the report's paired statistics, flips and
    example table; the report moves them from metrics.json into examples.jsonl)."""
    result: dict = {}
    per_scores: dict[str, list[float]] = {}
    per_example: dict[str, Any] = {
        "prompt": [p[-PROMPT_CHARS:] for p in shown],
        "reference": [q.reference for q in qs],
        "prediction": predictions,
        "prompt_tokens": prompt_tokens,
        "answer_tokens": answer_tokens,
        "scores": per_scores,
    }
    for metric in (build(m) for m in metric_cfgs):
        values = [float(metric(p, q.reference)) for p, q in zip(predictions, qs, strict=True)]
        per_scores[metric.name] = values
        result[metric.name] = sum(values) / len(values)
    result["prompt_tokens_per_query"] = sum(prompt_tokens) / len(prompt_tokens)
    if answer_tokens is not None:
        result["answer_tokens_per_query"] = sum(answer_tokens) / len(answer_tokens)
    result["examples"] = len(qs)
    result["per_example"] = per_example
    result["samples"] = [
        {"prompt": shown[i][-300:], "prediction": predictions[i], "reference": qs[i].reference}
        for i in range(min(5, len(qs)))
    ]
    return result


def base_cache_file(cfg: DictConfig, model_path: str, qs: list[Query], dataset_key: str, label: str) -> Path:
    """Where the base model's results for this (model, data, eval settings) are cached across runs and sweeps."""
    settings = plain_dict(cfg.eval)
    # other columns, prices and report-only settings: the base model's answers do not change
    for other in ("endpoint", "compare_models", "cost", "judge"):
        settings.pop(other, None)
    key = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "model_path": model_path,
        "eval": settings,
        "objective": OmegaConf.to_container(cfg.objective, resolve=True),  # its loss and its own metrics
        "dataset": dataset_key,
        "queries": [[q.prompt, q.reference] for q in qs],
        "label": label,
        "seed": cfg.seed,
        "format": 3,  # 2: per-example answers and scores; 3: per-pair scores, per-prompt rewards
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir) / "evals" / f"{label}-{digest}.json"


def cached(path: Path, compute, enabled: bool) -> dict:
    """Load ``path`` when it exists (and caching is enabled) and passes its hash check, else compute and store it
    atomically with its hash (trainer.data.cache.save_json)."""
    from trainer.data import cache

    if enabled and path.exists():
        result = cache.load_json(path, "base evaluation")
        if result is not None:
            log.info("base evaluation cache hit: %s", path.name)
            return result
    result = compute()
    if enabled:
        cache.save_json(path, result)
    return result
