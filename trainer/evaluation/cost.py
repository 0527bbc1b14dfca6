"""Cost and break-even: what training cost, what 1,000 queries cost with the fine-tuned model against the base model
prompted with K solved examples (longer prompts), and after how many queries fine-tuning has paid for itself.

Training costs the training time x ``eval.cost.usd_per_hour`` for a local run, and the job's billed training tokens
x the provider's training price (``hardware.price_per_million_training_tokens``) for a provider run. Inference
prices come from ``eval.cost`` (USD per million prompt and answer tokens); token counts are measured on the held-out
queries: the fine-tuned model's prompts and answers, and the K-shot prompts (the few-shot section's, or the same
queries with K training examples in front when ``eval.few_shot=0``: tokenized, not generated; for a provider's
model, estimated from the zero-shot prompts' tokens per character).
"""

from __future__ import annotations

import math


def kshot_prompt_tokens(tokenizer, queries: list, demos: list) -> float:
    """Mean prompt tokens of the queries with the demonstrations in front (rendered with the chat template)."""
    from trainer.evaluation import local as evaluation

    prompts = [evaluation.render(tokenizer, evaluation.with_demonstrations(q, demos)) for q in queries]
    return sum(len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts) / max(1, len(prompts))


def kshot_prompt_tokens_by_characters(zero_shot_tokens: float, queries: list, demos: list) -> float:
    """Mean prompt tokens of the K-shot queries where no tokenizer is at hand (a provider's model): the zero-shot
    prompts' tokens (as the endpoint counted them) scaled by how many more characters the K-shot messages hold."""
    from trainer.evaluation import local as evaluation

    def characters(q) -> int:
        return len(q.prompt) if isinstance(q.prompt, str) else sum(len(m["content"]) for m in q.prompt)

    zero = sum(characters(q) for q in queries)
    shots = sum(characters(evaluation.with_demonstrations(q, demos)) for q in queries)
    return zero_shot_tokens * shots / max(1, zero)


def local(cfg, train_seconds: float | None, results: dict, tokenizer, queries: list, train_rows: list) -> dict | None:
    """The break-even section of a local run (None without a fine-tuned evaluation); ``train_seconds`` None: the
    training time is unknown (trainer.engine.training), and so are the training cost and the break-even point."""
    c = cfg.eval.cost
    training = {
        "usd": None if train_seconds is None else train_seconds / 3600 * c.usd_per_hour,
        "how": "training time unknown (not recorded before the run was stopped)"
        if train_seconds is None
        else f"{train_seconds:.1f} s of training x ${c.usd_per_hour:g}/hour (eval.cost.usd_per_hour)",
    }

    def tokenized(demos: list) -> tuple[float, str]:
        return kshot_prompt_tokens(tokenizer, queries, demos), "K-shot prompts tokenized"

    return _break_even(cfg, results, queries, train_rows, training, tokenized)


def provider(cfg, results: dict, estimate_: dict, trained_tokens: int | None, queries: list, train_rows: list):
    """The break-even section of a provider run: training = the job's billed tokens (as the provider reports them,
    else the pre-flight estimate) x the training price (hardware.price_per_million_training_tokens). None without
    a fine-tuned evaluation or without a training price for the model."""
    price = estimate_.get("usd_per_million")
    if price is None:
        return None
    billed, source = (
        (trained_tokens, "billed by the provider") if trained_tokens else (estimate_["billed_tokens"], "estimated")
    )
    training = {
        "usd": billed / 1e6 * float(price),
        "how": f"{billed:,} training tokens ({source}) x ${float(price):g}/1M (hardware.price_per_million_training_tokens)",
    }

    def by_characters(demos: list) -> tuple[float, str]:
        zero = (results.get("finetuned") or {})["prompt_tokens_per_query"]
        return (
            kshot_prompt_tokens_by_characters(zero, queries, demos),
            "K-shot prompt tokens estimated from the zero-shot prompts' tokens per character",
        )

    return _break_even(cfg, results, queries, train_rows, training, by_characters)


def _break_even(cfg, results: dict, queries: list, train_rows: list, training: dict, kshot) -> dict | None:
    """The K-shot prompts' tokens (the few-shot section's when it has K demonstrations, else ``kshot(demos)``),
    then :func:`estimate`."""
    from trainer.evaluation import local as evaluation

    tuned = results.get("finetuned") or {}
    if "answer_tokens_per_query" not in tuned or not queries:
        return None
    c = cfg.eval.cost
    shots = c.shots if c.shots is not None else (cfg.eval.few_shot or 3)
    few = results.get("few_shot") or {}
    if "prompt_tokens_per_query" in few and shots == cfg.eval.few_shot:
        few_tokens = (few["prompt_tokens_per_query"], few["answer_tokens_per_query"], "measured (few-shot section)")
    else:
        tokens, how = kshot(evaluation.queries(train_rows, shots))
        few_tokens = (tokens, tuned["answer_tokens_per_query"], f"{how}; answers as long as the fine-tuned model's")
    return estimate(c, training, tuned, (results.get("base") or {}), few_tokens, shots)


def estimate(c, training: dict, tuned: dict, base: dict, few_tokens: tuple, shots: int) -> dict:
    """Per-1,000-query costs and the break-even query count from token counts and the prices in ``c``."""
    tuned_in = (
        c.tuned_prompt_usd_per_million if c.tuned_prompt_usd_per_million is not None else c.prompt_usd_per_million
    )
    tuned_out = (
        c.tuned_answer_usd_per_million if c.tuned_answer_usd_per_million is not None else c.answer_usd_per_million
    )
    rows = {
        "finetuned": (tuned["prompt_tokens_per_query"], tuned["answer_tokens_per_query"], tuned_in, tuned_out),
        "few_shot": (few_tokens[0], few_tokens[1], c.prompt_usd_per_million, c.answer_usd_per_million),
    }
    if "answer_tokens_per_query" in base:
        rows["base"] = (
            base["prompt_tokens_per_query"],
            base["answer_tokens_per_query"],
            c.prompt_usd_per_million,
            c.answer_usd_per_million,
        )
    per_1000 = {
        name: {
            "prompt_tokens": p,
            "answer_tokens": a,
            "usd": 1000 * (p * pin + a * pout) / 1e6,
        }
        for name, (p, a, pin, pout) in rows.items()
    }
    saving = (per_1000["few_shot"]["usd"] - per_1000["finetuned"]["usd"]) / 1000
    queries = math.ceil(training["usd"] / saving) if saving > 0 and training["usd"] is not None else None
    return {
        "training": training,
        "shots": shots,
        "few_shot_tokens": few_tokens[2],
        "prices_usd_per_million": {
            "prompt": c.prompt_usd_per_million,
            "answer": c.answer_usd_per_million,
            "tuned_prompt": tuned_in,
            "tuned_answer": tuned_out,
        },
        "per_1000_queries": per_1000,
        "saving_per_1000_queries_usd": saving * 1000,
        "break_even_queries": queries,
    }


def sentence(b: dict) -> str:
    few, tuned = b["per_1000_queries"]["few_shot"], b["per_1000_queries"]["finetuned"]
    if b["training"]["usd"] is None:
        return f"The training cost, and so the break-even point against {b['shots']}-shot prompting, is unknown."
    if b["break_even_queries"] is None:
        return (
            f"Fine-tuning never pays for itself against {b['shots']}-shot prompting at these prices: the fine-tuned "
            f"model costs ${tuned['usd']:.4f} per 1,000 queries, the {b['shots']}-shot base model ${few['usd']:.4f}."
        )
    return (
        f"Fine-tuning is cheaper than {b['shots']}-shot prompting after **{b['break_even_queries']:,} queries** "
        f"(training ${b['training']['usd']:.4f}; saves ${b['saving_per_1000_queries_usd']:.4f} per 1,000 queries)."
    )


def markdown(b: dict) -> list[str]:
    names = {"finetuned": "fine-tuned", "few_shot": f"base + {b['shots']}-shot prompt", "base": "base (zero-shot)"}
    p = b["prices_usd_per_million"]
    lines = [
        sentence(b),
        "",
        f"- training: {_usd(b['training']['usd'])} ({b['training']['how']})",
        f"- prices per 1M tokens: base ${p['prompt']:g} prompt / ${p['answer']:g} answer, fine-tuned "
        f"${p['tuned_prompt']:g} / ${p['tuned_answer']:g} (eval.cost.*); {b['shots']}-shot tokens: "
        f"{b['few_shot_tokens']}",
        "",
        "| model | prompt tokens / query | answer tokens / query | USD per 1,000 queries |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {names[k]} | {v['prompt_tokens']:.1f} | {v['answer_tokens']:.1f} | {v['usd']:.4f} |"
        for k, v in b["per_1000_queries"].items()
    ]
    return lines


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"
