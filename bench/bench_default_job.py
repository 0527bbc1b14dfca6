"""Time the README's main command, `hydratune` (the default job), from a warm model cache.

    python bench/bench_default_job.py --run-dir DIR [--cache-from ~/.cache/hydratune] [-- OVERRIDES...]

A fresh cache holds only the converted model folder (copied from --cache-from's models/): the tokenized data, the
cached base-model evaluation and the matmul benchmark start cold, as on a user's first run after the model is in
place. Prints the wall time from process start to exit, the process's peak RSS and CPU time (wait4), the held-out
exact match of the base and the fine-tuned model, and the pre-flight estimate beside the measured figures (from
metrics.json). Goal (issue 10): under 10 minutes, exact match far above base, estimate within 30%.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_cache = os.environ.get("HYDRATUNE_CACHE", str(Path.home() / ".cache" / "hydratune"))
    p.add_argument("--cache-from", type=Path, default=Path(default_cache), help="where the converted model is")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("overrides", nargs="*", help="extra hydratune overrides (after --)")
    args = p.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as cache:
        shutil.copytree(args.cache_from / "models", Path(cache) / "models")
        env = {**os.environ, "HYDRATUNE_CACHE": cache}
        cmd = [sys.executable, "-m", "trainer.cli", f"hydra.run.dir={args.run_dir}", *args.overrides]
        start = time.time()
        with (args.run_dir.parent / f"{args.run_dir.name}.log").open("w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"hydratune failed (exit {os.waitstatus_to_exitcode(status)}); see {log.name}")
    metrics = json.loads((args.run_dir / "metrics.json").read_text())
    est = metrics["estimate"]
    em = {k: metrics[k]["exact_match"] for k in ("base", "finetuned") if k in metrics}
    rss = usage.ru_maxrss * 1024 / 1e9
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    print(
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}{f' (ONEDNN_MAX_CPU_ISA={isa})' if isa else ''}"
        f", dtype {metrics['hardware']['model_dtype']}"
    )
    print(
        f"wall {wall:.1f} s ({wall / 60:.2f} min), CPU {usage.ru_utime + usage.ru_stime:.1f} s, peak RSS {rss:.2f} GB"
    )
    print(f"exact match: {em}")
    e, m = est["estimated"], est["measured"]
    print(
        f"estimate: whole run {e['total_s']:.0f} s vs {wall:.0f} s measured ({e['total_s'] / wall - 1:+.0%}), "
        f"training {e['train_s']:.0f} s vs {m['train_s']} s, peak memory {e['peak_memory_gb']} GB vs {rss:.2f} GB "
        f"({e['peak_memory_gb'] / rss - 1:+.0%})"
    )


if __name__ == "__main__":
    main()
