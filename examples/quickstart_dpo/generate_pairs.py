"""Generate the quickstart preference pairs: chosen = the reference ingredient list, rejected = the base model's answer.

Every recipe of trainer/assets/quickstart/recipes.jsonl becomes a pair with the same prompt (system + user message).
The rejected answer is what the base SmolLM2-135M-Instruct says to that prompt, greedy, at most 40 tokens, as
recorded once on a CPU by this script (the data is committed: a run never generates it), with the weights in the
dtype the report's base evaluation uses (model.dtype=auto: bf16 on the AVX512_BF16 CPU that recorded it). Where the
base model happens to give the reference itself, the rejected answer is the reference without its last ingredient.

Chosen and rejected have matched lengths (:func:`match_length`: within 10% in characters): the base answer is cut at
the word boundary nearest the reference's length, so that a score summed over the answer's tokens cannot prefer the
chosen answer for being shorter. A base answer too short for that is replaced by the reference with its last
ingredient swapped for another recipe's ingredient of the nearest length (still a wrong answer).

    OMP_NUM_THREADS=1 python examples/quickstart_dpo/generate_pairs.py   # rewrites pairs.jsonl: ~10 min, 1 core
    python examples/quickstart_dpo/generate_pairs.py --recorded          # only re-matches the recorded answers
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trainer import models
from trainer.config import schema
from trainer.evaluation import local as evaluation

ASSETS = Path(__file__).resolve().parents[2] / "trainer" / "assets" / "quickstart"
MAX_NEW_TOKENS = 40  # the references are ~10-30 tokens; a longer base answer is cut here


def wrong(reference: str) -> str:
    items = json.loads(reference)
    return json.dumps(items[:-1] if len(items) > 1 else ["water"])


def match_length(answer: str, reference: str, pool: list[str], tolerance: float = 0.1) -> str:
    """``answer`` cut at the word boundary that brings it nearest the reference's length (in characters), or, when
    no cut lands within ``tolerance``, the reference with its last item swapped for the ``pool`` item (another
    recipe's ingredient) that keeps the length nearest."""
    target = len(reference)
    cuts = [answer[:i].rstrip() for i in range(1, len(answer) + 1) if i == len(answer) or answer[i] == " "]
    best = min(cuts, key=lambda cut: abs(len(cut) - target), default="")
    if best and abs(len(best) - target) < tolerance * max(len(best), target) and best != reference:
        return best
    items = json.loads(reference)
    swaps = [json.dumps([*items[:-1], other]) for other in pool if other not in items]
    return min(swaps, key=lambda text: (abs(len(text) - target), text))


def write_pairs(prompts: list, references: list[str], answers: list[str]) -> None:
    pool = sorted({item for reference in references for item in json.loads(reference)})
    with (ASSETS / "pairs.jsonl").open("w", encoding="utf-8") as out:
        for prompt, reference, answer in zip(prompts, references, answers, strict=True):
            rejected = answer.strip() if answer.strip() != reference else wrong(reference)
            pair = {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": reference}],
                "rejected": [{"role": "assistant", "content": match_length(rejected, reference, pool)}],
            }
            out.write(json.dumps(pair, ensure_ascii=False) + "\n")
    print(f"{len(prompts)} pairs -> {ASSETS / 'pairs.jsonl'}")


def main() -> None:
    if "--recorded" in sys.argv[1:]:  # the answers recorded in pairs.jsonl, matched again
        pairs = [json.loads(line) for line in (ASSETS / "pairs.jsonl").read_text().splitlines()]
        references = [p["chosen"][0]["content"] for p in pairs]
        write_pairs([p["prompt"] for p in pairs], references, [p["rejected"][0]["content"] for p in pairs])
        return
    cfg = schema.compose(["model=smollm2_135m", f"eval.generation.max_new_tokens={MAX_NEW_TOKENS}"])
    path = models.resolve_path(cfg.model, cfg.cache_dir)  # $HYDRATUNE_CACHE
    tokenizer, _ = models.load_tokenizer(cfg.model, path)
    dtype, why = models.resolve_dtype(cfg.model.dtype, "cpu")  # as the report's base evaluation loads it
    print(f"SmolLM2 in {dtype}: {why}")
    model = models.load_model(cfg.model, cfg.method, path, tokenizer, "cpu", dtype)
    rows = [json.loads(line) for line in (ASSETS / "recipes.jsonl").read_text().splitlines()]
    prompts = [row["messages"][:-1] for row in rows]
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    answers = evaluation.generate(model, tokenizer, texts, cfg.eval, "base answers")
    write_pairs(prompts, [row["messages"][-1]["content"] for row in rows], answers)


if __name__ == "__main__":
    main()
