"""The sbatch script of a multi-node run: one torchrun per node (srun), c10d rendezvous on the job's first node.

The config is composed, the dataset prepared and the resolved config written once, on the node that submits;
every worker on every node loads ``<run dir>/config.yaml`` (the run dir and the cache must be on a shared
filesystem). DeepSpeed strategies run the same way: the Trainer's DeepSpeed integration only needs the processes
that torchrun starts, not the deepspeed launcher (which would need SSH between the nodes).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig

WORKER = "-m launchers.worker"


def render(cfg: DictConfig, run_dir: Path, nproc: int, threads: int, device: str) -> str:
    hw = cfg.hardware
    options = {
        "job-name": f"hydratune-{cfg.run_name}",
        "nodes": hw.num_nodes,
        "ntasks-per-node": 1,
        "cpus-per-task": threads * nproc,
        "output": str(run_dir / "logs" / "slurm-%j.out"),
    }
    if device == "cuda":
        options["gpus-per-node"] = nproc
    options.update(dict(hw.sbatch))
    lines = ["#!/bin/bash"] + [f"#SBATCH --{key}={value}" for key, value in options.items()]
    torchrun = " ".join(
        [
            shlex.quote(torchrun_path()),
            '--nnodes "$SLURM_JOB_NUM_NODES"',
            f"--nproc_per_node {nproc}",
            '--rdzv_id "$SLURM_JOB_ID"',
            "--rdzv_backend c10d",
            f'--rdzv_endpoint "$MASTER_ADDR:{hw.master_port}"',
            WORKER,
            f"--run-dir {shlex.quote(str(run_dir))}",
        ]
    )
    lines += [
        "# Rendered by hydratune from the resolved config in this folder; workers load config.yaml, not Hydra.",
        "set -euo pipefail",
        f"export OMP_NUM_THREADS={threads}",
        f"export TORCH_EXTENSIONS_DIR={shlex.quote(str(hw.torch_extensions_dir))}",
        "export TOKENIZERS_PARALLELISM=false",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"srun --kill-on-bad-exit=1 {torchrun}",
        "",
    ]
    return "\n".join(lines)


def torchrun_path() -> str:
    """The torchrun of this environment (the compute nodes share it with the submitting node), else PATH's."""
    beside = Path(sys.executable).parent / "torchrun"
    return str(beside) if beside.exists() else "torchrun"
