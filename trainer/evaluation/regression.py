"""General-ability regression check (``eval.regression=general``): did fine-tuning damage what the model could
already do?

A probe set of short general questions (arithmetic, capitals, science, everyday facts, small instructions; 104
items shipped in trainer/assets/regression/general.jsonl, or a JSONL file of your own with ``prompt`` and
``answers``) is asked of the base model before training and of the fine-tuned model after it, with the same
greedy generation. An answer counts when one of the accepted answers appears in it as whole words (lowercased,
punctuation ignored). The two are compared with the same paired statistics as the task metrics.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from trainer.config.errors import UserError
from trainer.evaluation import stats
from trainer.evaluation.metrics import normalize

log = logging.getLogger(__name__)
SYSTEM = "Answer the question briefly: one word, number or short phrase."
#: Probe answers are short: generation stops after this many new tokens (or eval.generation's, if fewer).
MAX_NEW_TOKENS = 24


def probe_file(spec: str) -> Path:
    shipped = Path(__file__).parents[1] / "assets" / "regression" / f"{spec}.jsonl"
    if shipped.is_file():
        return shipped
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    raise UserError(
        f"eval.regression={spec}: no such probe set. Use eval.regression=general (the shipped 104 general questions) "
        'or the path of a JSONL file whose lines are {"prompt": ..., "answers": [...]}; eval.regression=null '
        "turns the check off."
    )


def load(spec: str) -> list[dict]:
    path = probe_file(spec)
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            assert (
                isinstance(item["prompt"], str) and item["answers"] and all(isinstance(a, str) for a in item["answers"])
            )
        except (ValueError, KeyError, TypeError, AssertionError):
            raise UserError(
                f"{path}, line {number}: a probe item is a JSON object with a string 'prompt' and a non-empty list "
                f"of string 'answers'; got: {line[:120]}"
            ) from None
        items.append(item)
    return items


def queries(spec: str) -> list:
    """The probe as evaluation queries (the accepted answers as the reference): what is asked, and, in the base
    model's cache key, what makes an edited probe file a new cache entry."""
    from trainer.evaluation import local as evaluation

    return [
        evaluation.Query([{"role": "system", "content": SYSTEM}, {"role": "user", "content": i["prompt"]}],
                         " | ".join(i["answers"]))
        for i in load(spec)
    ]  # fmt: skip


def correct(prediction: str, answers: list[str]) -> float:
    """1.0 when one accepted answer appears in the prediction as a whole-word sequence."""
    said = f" {normalize(prediction, strip_punctuation=True)} "
    return float(any(f" {normalize(a, strip_punctuation=True)} " in said for a in answers))


def evaluate(trainer, tokenizer, cfg, label: str) -> dict:
    """The probe's answers of the model in ``trainer`` (one per item) and their scores."""
    from omegaconf import OmegaConf

    from trainer.evaluation import local as evaluation

    items = load(cfg.eval.regression)
    prompts = [evaluation.render(tokenizer, q) for q in queries(cfg.eval.regression)]
    eval_cfg: Any = OmegaConf.create(OmegaConf.to_container(cfg.eval, resolve=True))
    eval_cfg.generation.max_new_tokens = min(MAX_NEW_TOKENS, cfg.eval.generation.max_new_tokens)
    started = time.perf_counter()
    with evaluation.own_random_state(cfg.seed):  # never training's random streams
        answers = evaluation.generate(trainer.model, tokenizer, prompts, eval_cfg, desc=f"regression probe ({label})")
    seconds = time.perf_counter() - started
    scores = [correct(a, i["answers"]) for a, i in zip(answers, items, strict=True)]
    log.info("regression probe (%s): %d of %d right in %.1f s", label, sum(scores), len(scores), seconds)
    return {"accuracy": sum(scores) / len(scores), "answers": answers, "scores": scores, "seconds": seconds}


def section(spec: str, base: dict, tuned: dict) -> dict:
    """metrics.json's ``regression`` block: both accuracies, the paired comparison, the items that were lost."""
    items = load(spec)
    c = stats.compare(base["scores"], tuned["scores"], "probe accuracy", "base", "finetuned")
    lost = [
        {"prompt": i["prompt"], "answers": i["answers"], "base": b, "finetuned": t}
        for i, b, t, sb, st in zip(
            items, base["answers"], tuned["answers"], base["scores"], tuned["scores"], strict=True
        )
        if sb > st
    ]
    word = {"better": "improved", "worse": "DAMAGED"}.get(c.verdict, "did not measurably change")
    lines = [
        f"**Fine-tuning {word} general ability** on the {spec} probe ({len(items)} items): "
        + c.sentence().split(": ", 1)[1],
        f"Wrong -> right: {c.gained}; right -> wrong: {c.lost}.",
    ]
    lines += [
        f"Lost: {x['prompt']} (expected {x['answers'][0]}): base '{_short(x['base'])}', "
        f"fine-tuned '{_short(x['finetuned'])}'"
        for x in lost[:5]
    ]
    return {
        "title": "General-ability regression check",
        "probe": spec,
        "items": len(items),
        "base_accuracy": c.reference_mean,
        "finetuned_accuracy": c.candidate_mean,
        "comparison": c.to_dict(),
        "lost": lost,
        "lines": lines,
    }


def _short(text: str) -> str:
    return " ".join(text.split())[:80]
