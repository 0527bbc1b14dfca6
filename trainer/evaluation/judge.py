"""LLM-as-judge (``eval.judge``): a model behind any OpenAI-compatible endpoint (a provider's model, or a model
that `hydratune serve` serves) grades each answer against the reference with the rubric from the config.

- Grading: every answer of every graded section gets a score from 1 to 5, kept per example as the metric ``judge``
  (scaled to 0-1), so the paired comparisons, the flips and the example table include it.
- Pairwise: the fine-tuned and the base answer to the same question are shown together, in both orders (A/B and
  B/A) to cancel the judge's position bias; an answer wins an example only when it wins in both orders, else a
  tie. Wins against losses get an exact sign test (``scipy.stats.binomtest``).
- Every reply is cached on disk by (endpoint, model, messages), so a rerun or a rebuilt report asks nothing again.
- Before any request, the cost of the uncached ones is estimated (prompt characters / 4 + max_tokens per reply, at
  the configured prices) and logged; above ``max_usd`` nothing is sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trainer.config.errors import UserError

log = logging.getLogger(__name__)
METRIC = "judge"
CHARS_PER_TOKEN = 4


def grade_messages(rubric: str, prompt: str, reference: str, answer: str) -> list[dict]:
    return [
        {
            "role": "system",
            "content": f"You grade an answer against a reference answer. {rubric} "
            "Reply with the score only: one whole number from 1 to 5.",
        },
        {
            "role": "user",
            "content": f"Question:\n{prompt}\n\nReference answer:\n{reference}\n\nAnswer to grade:\n{answer}",
        },
    ]


def pair_messages(rubric: str, prompt: str, reference: str, first: str, second: str) -> list[dict]:
    return [
        {
            "role": "system",
            "content": f"You compare two answers to the same question, using the reference answer. {rubric} "
            "Reply with one letter only: A if answer A is better, B if answer B is better.",
        },
        {
            "role": "user",
            "content": f"Question:\n{prompt}\n\nReference answer:\n{reference}\n\n"
            f"Answer A:\n{first}\n\nAnswer B:\n{second}",
        },
    ]


def parse_score(reply: str) -> int | None:
    found = re.search(r"\b([1-5])\b", reply)
    return int(found.group(1)) if found else None


def parse_choice(reply: str) -> str | None:
    found = re.search(r"\b([AB])\b", reply.strip().upper())
    return found.group(1) if found else None


class Judge:
    """The configured judge endpoint with its on-disk reply cache."""

    def __init__(self, cfg, cache_dir: str | Path) -> None:
        self.cfg = cfg
        self.cache = Path(cache_dir) / "judge"

    def _file(self, messages: list[dict]) -> Path:
        key = json.dumps([self.cfg.base_url, self.cfg.model, self.cfg.max_tokens, messages], sort_keys=True)
        return self.cache / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def estimate(self, requests: list[list[dict]]) -> dict:
        todo = [m for m in requests if not self._file(m).is_file()]
        prompt_tokens = sum(len(x["content"]) for m in todo for x in m) / CHARS_PER_TOKEN
        answer_tokens = len(todo) * self.cfg.max_tokens
        usd = (prompt_tokens * self.cfg.prompt_usd_per_million + answer_tokens * self.cfg.answer_usd_per_million) / 1e6
        return {
            "requests": len(requests),
            "cached": len(requests) - len(todo),
            "prompt_tokens": round(prompt_tokens),
            "answer_tokens_at_most": answer_tokens,
            "usd": usd,
        }

    def ask_all(self, requests: list[list[dict]]) -> list[str]:
        """The judge's reply to each request, from the cache or the endpoint (``concurrency`` in flight); identical
        requests (two equal answers shown in both orders) are asked once."""
        unique = list({json.dumps(m, sort_keys=True): m for m in requests}.values())
        estimate = self.estimate(unique)
        log.info(
            "judge %s: %d requests (%d cached), about %d prompt tokens: estimated $%.4f",
            self.cfg.model,
            estimate["requests"],
            estimate["cached"],
            estimate["prompt_tokens"],
            estimate["usd"],
        )
        if self.cfg.max_usd is not None and estimate["usd"] > self.cfg.max_usd:
            raise UserError(
                f"eval.judge: grading would cost about ${estimate['usd']:.2f} ({estimate['requests'] - estimate['cached']} "
                f"uncached requests to {self.cfg.model}), above eval.judge.max_usd={self.cfg.max_usd}. Nothing was sent. "
                "Raise eval.judge.max_usd, lower eval.judge.max_examples, or turn pairwise off (eval.judge.pairwise=false)."
            )
        client: Any = None
        if estimate["cached"] < estimate["requests"]:
            from trainer.evaluation import endpoint as endpoint_eval

            client = endpoint_eval.client_for(self.cfg, "eval.judge")

        def ask(messages: list[dict]) -> str:
            file = self._file(messages)
            if file.is_file():
                return json.loads(file.read_text())["reply"]
            assert client is not None
            response = client.chat.completions.create(
                model=self.cfg.model, messages=messages, max_tokens=self.cfg.max_tokens, temperature=0.0
            )
            reply = response.choices[0].message.content or ""
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(".partial")
            tmp.write_text(json.dumps({"messages": messages, "reply": reply}))
            tmp.replace(file)
            return reply

        with ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
            replies = dict(zip((json.dumps(m, sort_keys=True) for m in unique), pool.map(ask, unique), strict=True))
        self.last_estimate = estimate
        return [replies[json.dumps(m, sort_keys=True)] for m in requests]


def configured(judge_cfg) -> bool:
    return judge_cfg.model is not None


def run(judge_cfg, results: dict, cache_dir: str | Path) -> dict:
    """Grade the sections' answers (adds a ``judge`` score per example to each graded section) and compare the
    fine-tuned with the base answers pairwise; returns metrics.json's ``judge`` block."""
    if judge_cfg.base_url is None:
        raise UserError(
            "eval.judge.model is set but eval.judge.base_url is not: give the judge's OpenAI-compatible URL."
        )
    if judge_cfg.api_key_env and judge_cfg.api_key_env not in os.environ:
        raise UserError(
            f"eval.judge.api_key_env={judge_cfg.api_key_env}, but that environment variable is not set: export it "
            "(the key is read from the environment only), or set eval.judge.api_key_env=null for a local server."
        )
    judge = Judge(judge_cfg, cache_dir)
    sections = [s for s in judge_cfg.sections if isinstance(results.get(s), dict) and results[s].get("per_example")]
    limit = judge_cfg.max_examples
    requests: list[list[dict]] = []
    for s in sections:
        per = results[s]["per_example"]
        n = len(per["prediction"]) if limit is None else min(limit, len(per["prediction"]))
        requests += [
            grade_messages(judge_cfg.rubric, per["prompt"][i], per["reference"][i], per["prediction"][i])
            for i in range(n)
        ]
    pairs = judge_cfg.pairwise and {"base", "finetuned"} <= set(sections)
    if pairs:
        base, tuned = results["base"]["per_example"], results["finetuned"]["per_example"]
        n = len(tuned["prediction"]) if limit is None else min(limit, len(tuned["prediction"]))
        for i in range(n):
            question, ref, b, t = (
                tuned["prompt"][i],
                tuned["reference"][i],
                base["prediction"][i],
                tuned["prediction"][i],
            )
            requests += [
                pair_messages(judge_cfg.rubric, question, ref, t, b),
                pair_messages(judge_cfg.rubric, question, ref, b, t),
            ]
    replies = iter(judge.ask_all(requests))
    block: dict = {"title": "LLM-as-judge", "model": judge_cfg.model, "estimate": judge.last_estimate, "unparsed": 0}
    lines = []
    for s in sections:
        per = results[s]["per_example"]
        n = len(per["prediction"]) if limit is None else min(limit, len(per["prediction"]))
        scores = [parse_score(next(replies)) for _ in range(n)]
        block["unparsed"] += scores.count(None)
        scaled = [0.0 if x is None else (x - 1) / 4 for x in scores]
        if n == len(per["prediction"]):  # every example graded: the judge joins the paired comparisons
            per["scores"][METRIC] = scaled
        results[s][METRIC] = sum(scaled) / max(1, n)
        lines.append(f"{s}: mean judge score {1 + 4 * results[s][METRIC]:.2f} of 5 over {n} answers")
    if pairs:
        wins = losses = ties = 0
        for _ in range(n):
            first, second = parse_choice(next(replies)), parse_choice(next(replies))  # tuned shown first, then second
            tuned_first, tuned_second = first == "A", second == "B"
            base_first, base_second = first == "B", second == "A"
            if tuned_first and tuned_second:
                wins += 1
            elif base_first and base_second:
                losses += 1
            else:
                ties += 1
        from scipy.stats import binomtest

        p = binomtest(wins, wins + losses).pvalue if wins + losses else 1.0
        block["pairwise"] = {"examples": n, "finetuned_wins": wins, "base_wins": losses, "ties": ties, "p_value": p}
        lines.append(
            f"pairwise, both orders: fine-tuned preferred on **{wins}**, base on **{losses}**, tie or order-dependent on "
            f"{ties} of {n} (sign test p = {p:.4f})"
        )
    e = judge.last_estimate
    lines.append(
        f"judge {judge_cfg.model}: {e['requests']} requests, {e['cached']} from the cache; estimated cost of the rest "
        f"${e['usd']:.4f}"
    )
    block["lines"] = lines
    return block
