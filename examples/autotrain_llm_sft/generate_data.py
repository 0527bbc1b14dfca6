"""Write the stand-in for timdettmers/openassistant-guanaco, the dataset AutoTrain's llm-sft docs train on: one
``text`` column holding a whole conversation as ``### Human: ...### Assistant: ...``, in AutoTrain's local layout
(a folder with train.csv). Written here from a few facts. Deterministic:

    python examples/autotrain_llm_sft/generate_data.py    # rewrites examples/autotrain_llm_sft/data/train.csv
"""

from __future__ import annotations

import csv
from pathlib import Path

OUT = Path(__file__).parent / "data" / "train.csv"
FACTS = [
    ("France", "Paris", "euro"), ("Japan", "Tokyo", "yen"), ("Kenya", "Nairobi", "shilling"),
    ("Brazil", "Brasilia", "real"), ("Canada", "Ottawa", "Canadian dollar"), ("India", "New Delhi", "rupee"),
    ("Norway", "Oslo", "krone"), ("Mexico", "Mexico City", "peso"), ("Egypt", "Cairo", "Egyptian pound"),
    ("Poland", "Warsaw", "zloty"), ("Chile", "Santiago", "Chilean peso"), ("Vietnam", "Hanoi", "dong"),
    ("Peru", "Lima", "sol"), ("Ghana", "Accra", "cedi"), ("Sweden", "Stockholm", "krona"),
    ("Thailand", "Bangkok", "baht"), ("Turkey", "Ankara", "lira"), ("Morocco", "Rabat", "dirham"),
    ("Hungary", "Budapest", "forint"), ("Australia", "Canberra", "Australian dollar"),
]  # fmt: skip


def main() -> None:
    rows = []
    for country, capital, currency in FACTS:
        rows.append(
            f"### Human: What is the capital of {country}?### Assistant: The capital of {country} is {capital}."
        )
        rows.append(f"### Human: Which currency is used in {country}?### Assistant: {country} uses the {currency}.")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([r] for r in rows)
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
