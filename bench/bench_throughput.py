"""hydratune vs a plain hand-written TRL script: same model, data, batch, steps, seed, LoRA and threads.

    python bench/bench_throughput.py [--model smollm2_135m] [--steps 30] [--batch 8] [--rounds 2]

Both run as fresh processes, alternately, `--rounds` times each; the best round of each is compared.
Prints tokens/s of each (trained tokens between the first and last logged step, divided by the wall time
between them), their ratio (goal: hydratune >= 0.98x), and the wall time from process start to the end of
the first optimizer step (goal: hydratune's overhead < 1 s). Both use the preprocessed model folder and a warm
dataset cache, so the comparison is the steady state a user sees from the second run on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def steps_file_stats(path: Path, start: float) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and "num_tokens" in r]
    first, last = steps[0], steps[-1]
    return {
        "first_step_s": first["time"] - start,
        "tokens_per_s": (last["num_tokens"] - first["num_tokens"]) / (last["time"] - first["time"]),
    }


def run_hydratune(args, out: Path, cache: str, env: dict) -> dict:
    run_dir = out / "hydratune"
    cmd = [
        sys.executable,
        "-m",
        "trainer.cli",
        f"model={args.model}",
        "eval=none",
        "logger=jsonl",
        f"train.max_steps={args.steps}",
        f"train.per_device_train_batch_size={args.batch}",
        "train.save_strategy=no",
        "train.lr_scheduler_type=linear",
        "train.warmup_steps=0",
        f"hydra.run.dir={run_dir}",
    ]
    start = time.time()
    subprocess.run(cmd, check=True, cwd=REPO, env={**env, "HYDRATUNE_CACHE": cache}, capture_output=True)
    return steps_file_stats(run_dir / "metrics.jsonl", start)


def run_plain(args, out: Path, model_dir: str, data: str, dtype: str, env: dict) -> dict:
    plain = out / "plain"
    plain.mkdir()
    cmd = [
        sys.executable,
        str(REPO / "bench" / "plain_trl_sft.py"),
        model_dir,
        data,
        str(plain),
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--dtype",
        dtype,
    ]
    start = time.time()
    subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True)
    return steps_file_stats(plain / "steps.jsonl", start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2_135m")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    from trainer.config import schema
    from trainer.models import resolve_path

    cache = os.environ.get("HYDRATUNE_CACHE", str(Path.home() / ".cache" / "hydratune"))
    cfg = schema.compose([f"model={args.model}", f"cache_dir={cache}"])
    model_dir = resolve_path(cfg.model, cache)
    data = cfg.dataset.path
    threads = str(os.cpu_count())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm"
        warm.mkdir()
        run_hydratune(argparse.Namespace(**{**vars(args), "steps": 2}), warm, cache, env)  # fill the dataset cache
        results: dict[str, list[dict]] = {"hydratune": [], "plain": []}
        for i in range(args.rounds):
            out = Path(tmp) / f"round{i}"
            out.mkdir()
            results["plain"].append(run_plain(args, out, model_dir, data, cfg.model.dtype, env))
            results["hydratune"].append(run_hydratune(args, out, cache, env))
            print(f"round {i + 1}: plain {results['plain'][-1]}  hydratune {results['hydratune'][-1]}", flush=True)

    best = {
        k: {"tokens_per_s": max(r["tokens_per_s"] for r in v), "first_step_s": min(r["first_step_s"] for r in v)}
        for k, v in results.items()
    }
    ratio = best["hydratune"]["tokens_per_s"] / best["plain"]["tokens_per_s"]
    overhead = best["hydratune"]["first_step_s"] - best["plain"]["first_step_s"]
    print(f"model={args.model} ({cfg.model.dtype}) batch={args.batch} steps={args.steps} threads={threads}")
    print(
        f"plain TRL script : {best['plain']['tokens_per_s']:8.1f} tok/s, first step after {best['plain']['first_step_s']:.2f} s"
    )
    print(
        f"hydratune        : {best['hydratune']['tokens_per_s']:8.1f} tok/s, first step after {best['hydratune']['first_step_s']:.2f} s"
    )
    print(f"throughput ratio : {ratio:.3f}x (goal >= 0.98)   start-up overhead: {overhead:+.2f} s (goal < 1 s)")


if __name__ == "__main__":
    main()
