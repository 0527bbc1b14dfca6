"""The default dtype against float32: `hydratune train.max_steps=3 eval=none`, as issue 10 words it.

    python bench/bench_dtype.py [--rounds 2] [--steps 3] [-- OVERRIDES...]

Runs the command with `model.dtype` left at its default (auto) and with `model.dtype=float32`, each a fresh process,
alternating, and keeps each variant's best round. Tokens/s = the real tokens TRL counted (num_tokens) over the
training loop's runtime. One model cache for all runs (HYDRATUNE_CACHE, else ~/.cache/hydratune), so the data is
tokenized once. Prints the torch CPU capability, what auto resolved to, both rates and their ratio (goal: >= 0.8).
Hold torch to AVX2 kernels to see a CPU without native bf16: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"default (auto)": [], "float32": ["model.dtype=float32"]}


def run(overrides: list[str], run_dir: Path) -> tuple[float, str]:
    """(real tokens per second of the training loop, the dtype the run used)."""
    cmd = [sys.executable, "-m", "trainer.cli", f"hydra.run.dir={run_dir}", *overrides]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"hydratune failed ({' '.join(overrides)}):\n{result.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tokens = max(r["num_tokens"] for r in rows if "num_tokens" in r)
    runtime = next(r["train_runtime"] for r in rows if "train_runtime" in r)
    dtype = json.loads((run_dir / "metrics.json").read_text())["hardware"]["model_dtype"]
    return tokens / runtime, dtype


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="extra hydratune overrides (after --)")
    args = p.parse_args()

    import torch

    common = [f"train.max_steps={args.steps}", "eval=none", *args.overrides]
    best: dict[str, float] = {}
    dtypes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, extra in VARIANTS.items():
                rate, dtypes[name] = run([*common, *extra], Path(tmp) / f"{round_}-{name.split()[0]}")
                best[name] = max(best.get(name, 0.0), rate)
                print(f"round {round_ + 1}: {name} ({dtypes[name]}) {rate:.1f} tok/s", flush=True)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    print(
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}{f' (ONEDNN_MAX_CPU_ISA={isa})' if isa else ''}"
    )
    auto, fp32 = best["default (auto)"], best["float32"]
    print(
        f"default dtype ({dtypes['default (auto)']}) {auto:.1f} tok/s, float32 {fp32:.1f} tok/s: "
        f"{auto / fp32:.2f}x (best of {args.rounds})"
    )


if __name__ == "__main__":
    main()
