"""Evaluation through chat completions: the held-out prompts go to a model (base, few-shot base or fine-tuned),
its answers are scored with the configured metrics, with a bounded number of requests in flight."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from launchers.cloud.retrying import Retry

log = logging.getLogger(__name__)


def prompt_and_reference(row: dict[str, Any]) -> tuple[list[dict[str, Any]], str] | None:
    """The messages before the last assistant message, and that message's content (provider-format rows)."""
    if "input" in row:
        return _clean(row["input"]["messages"]), row["preferred_output"][0]["content"]
    messages = row["messages"]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if not last:  # no assistant message, or nothing before it
        return None
    return _clean(messages[:last]), messages[last]["content"]


def _clean(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def demonstrations(train_rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """K training examples as user/assistant turns, placed before each query (the few-shot column)."""
    demos: list[dict[str, Any]] = []
    for row in train_rows[:k]:
        pair = prompt_and_reference(row)
        if pair:
            demos += [m for m in pair[0] if m.get("role") != "system"] + [{"role": "assistant", "content": pair[1]}]
    return demos


def with_demos(prompt: list[dict[str, Any]], demos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system = [m for m in prompt if m.get("role") == "system"]
    return system + demos + [m for m in prompt if m.get("role") != "system"]


def generation_args(gen: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"max_tokens": int(gen.max_new_tokens)}
    if gen.do_sample:
        args.update(temperature=float(gen.temperature), top_p=float(gen.top_p))
    else:
        args["temperature"] = 0.0
    return args


def evaluate(
    client: Any,
    retry: Retry,
    model: str,
    pairs: list[tuple[list[dict], str]],
    metrics: list[Any],
    gen_args: dict[str, Any],
    concurrency: int,
    demos: list[dict[str, Any]] | None = None,
    predictions_path: Path | None = None,
) -> dict[str, float]:
    """Mean of each metric and the prompt tokens per query for ``model`` on ``pairs``."""

    def ask(pair: tuple[list[dict], str]) -> tuple[str, int]:
        messages = with_demos(pair[0], demos) if demos else pair[0]
        response = retry(
            client.chat.completions.create, model=model, messages=messages, what="chat completion", **gen_args
        )
        usage = response.usage
        return response.choices[0].message.content or "", usage.prompt_tokens if usage else 0

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        answers = list(pool.map(ask, pairs))
    n = max(1, len(pairs))
    result = {m.name: sum(m(a, ref) for (a, _), (_, ref) in zip(answers, pairs, strict=True)) / n for m in metrics}
    result["prompt_tokens_per_query"] = sum(t for _, t in answers) / n
    if predictions_path is not None:
        with open(predictions_path, "w") as f:
            for (answer, _), (prompt, ref) in zip(answers, pairs, strict=True):
                f.write(json.dumps({"prompt": prompt, "reference": ref, "prediction": answer}) + "\n")
    log.info("%s: %s", model, ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
    return result
