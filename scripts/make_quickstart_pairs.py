"""Build the shipped preference version of the quickstart (trainer/assets/quickstart/preferences.jsonl).

Each recipe of recipes.jsonl becomes a pair: chosen is the reference ingredient list; rejected is SmolLM2-135M-
Instruct's own greedy answer before any training (what the model says by itself), or, when that answer happens to
be right, the reference with its last ingredient dropped. Run once; the output is committed as data:

    HYDRATUNE_CACHE=... python scripts/make_quickstart_pairs.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "trainer" / "assets" / "quickstart" / "recipes.jsonl"
TARGET = ROOT / "trainer" / "assets" / "quickstart" / "preferences.jsonl"


def wrong_answer(reference: str, answer: str) -> str:
    from trainer.metrics import ExactMatch

    if answer.strip() and not ExactMatch()(answer, reference):
        return answer.strip()
    items = json.loads(reference)
    return json.dumps(items[:-1] if len(items) > 1 else [*items, "water"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import os

    import torch

    from trainer import evaluation, models

    torch.manual_seed(0)
    model_cfg = OmegaConf.load(ROOT / "conf" / "model" / "smollm2_135m.yaml")
    model_cfg = OmegaConf.merge({"revision": None, "trust_remote_code": False, "chat_template": None}, model_cfg)
    model_cfg.dtype, model_cfg.attn_implementation = "float32", None
    cache = os.environ.get("HYDRATUNE_CACHE", str(Path.home() / ".cache" / "hydratune"))
    path = models.resolve_path(model_cfg, cache)
    tokenizer, _ = models.load_tokenizer(model_cfg, path)
    model = models.load_model(model_cfg, OmegaConf.create({"quantization": None}), path, tokenizer, "cpu", "float32")
    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    queries = evaluation.queries(rows, None)
    eval_cfg = OmegaConf.create(
        {
            "batch_size": args.batch_size,
            "generation": {
                "max_new_tokens": 96,
                "do_sample": False,
                "temperature": 1.0,
                "top_p": 1.0,
                "num_beams": 1,
                "repetition_penalty": 1.0,
            },
        }
    )
    prompts = [evaluation.render(tokenizer, q) for q in queries]
    answers = evaluation.generate(model, tokenizer, prompts, eval_cfg, desc="base answers")
    with TARGET.open("w", encoding="utf-8") as out:
        for q, answer in zip(queries, answers, strict=True):
            pair = {
                "prompt": q.prompt,
                "chosen": [{"role": "assistant", "content": q.reference}],
                "rejected": [{"role": "assistant", "content": wrong_answer(q.reference, answer)}],
            }
            out.write(json.dumps(pair, ensure_ascii=False) + "\n")
    print(f"wrote {len(queries)} pairs to {TARGET}")


if __name__ == "__main__":
    main()
