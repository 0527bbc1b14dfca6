"""Write the migration example's two files from the quickstart recipes (trainer/assets/quickstart/recipes.jsonl):

- data/prompts.jsonl: 360 prompts without answers ({"prompt": [system, user]}, dataset.format=prompt), standing for
  the requests your application sent to its OpenAI fine-tune; `hydratune record` asks the fine-tune them again.
- data/heldout.jsonl: 60 other recipes with their reference answers (chat rows), the evaluation of all three models.

Deterministic: python examples/migrate_openai_finetune/generate_data.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "trainer" / "assets" / "quickstart" / "recipes.jsonl"
HELD_OUT = 60


def main() -> None:
    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines()]
    train, held_out = rows[:-HELD_OUT], rows[-HELD_OUT:]
    (HERE / "data").mkdir(exist_ok=True)
    prompts = [{"prompt": [m for m in row["messages"] if m["role"] != "assistant"]} for row in train]
    (HERE / "data" / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts), encoding="utf-8")
    (HERE / "data" / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out), encoding="utf-8")
    print(f"{len(prompts)} prompts, {len(held_out)} held-out recipes")


if __name__ == "__main__":
    main()
