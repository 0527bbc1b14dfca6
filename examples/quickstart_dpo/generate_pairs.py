"""Generate the quickstart preference pairs: chosen = the reference ingredient list, rejected = the base model's answer.

Every recipe of trainer/assets/quickstart/recipes.jsonl becomes a pair with the same prompt (system + user message).
The rejected answer is what the base SmolLM2-135M-Instruct says to that prompt, greedy, at most 40 tokens, as
recorded once on a CPU by this script (the data is committed: a run never generates it), with the weights in the
dtype the report's base evaluation uses (model.dtype=auto: bf16 on the AVX512_BF16 CPU that recorded it). Where the
base model happens to give the reference itself, the rejected answer is the reference without its last ingredient.

    OMP_NUM_THREADS=1 python examples/quickstart_dpo/generate_pairs.py   # rewrites pairs.jsonl: ~10 min, 1 core
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer import evaluation, models, schema

ASSETS = Path(__file__).resolve().parents[2] / "trainer" / "assets" / "quickstart"
MAX_NEW_TOKENS = 40  # the references are ~10-30 tokens; a longer base answer is cut here


def wrong(reference: str) -> str:
    items = json.loads(reference)
    return json.dumps(items[:-1] if len(items) > 1 else ["water"])


def main() -> None:
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
    with (ASSETS / "pairs.jsonl").open("w", encoding="utf-8") as out:
        for prompt, row, answer in zip(prompts, rows, answers, strict=True):
            reference = row["messages"][-1]["content"]
            rejected = answer.strip() if answer.strip() != reference else wrong(reference)
            pair = {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": reference}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
            out.write(json.dumps(pair, ensure_ascii=False) + "\n")
    print(f"{len(rows)} pairs -> {ASSETS / 'pairs.jsonl'}")


if __name__ == "__main__":
    main()
