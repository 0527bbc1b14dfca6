"""One worker process of a distributed run, started by torchrun, deepspeed or accelerate launch.

    python -m launchers.worker --run-dir RUN_DIR [--local_rank N]

It loads the resolved config the parent wrote (``RUN_DIR/config.yaml``) and never re-runs Hydra, so every rank
trains the same config in the same run dir. Each rank logs to ``RUN_DIR/logs/rank<N>.log``; ranks other than 0
also send their stdout/stderr there, so the console shows rank 0 only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("launchers.worker")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m launchers.worker")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    if args.local_rank is not None:  # the deepspeed launcher passes it as an argument; the Trainer reads the variable
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    # A single worker (a local strategy in a SLURM job) has no LOCAL_RANK: setting one would make the Trainer start
    # a process group with no rendezvous.
    setup_logging(args.run_dir, rank)
    try:
        run(args.run_dir, rank)
    except BaseException:
        log.exception("rank %d failed", rank)
        raise


def setup_logging(run_dir: Path, rank: int) -> None:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    file = logs / f"rank{rank}.log"
    if rank != 0:  # warnings, progress bars and tracebacks of the other ranks go to their file, not the console
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if rank == 0:
        handlers.append(logging.FileHandler(file))
    logging.basicConfig(
        level=logging.INFO,
        format=f"[%(asctime)s][rank{rank}][%(name)s][%(levelname)s] - %(message)s",
        handlers=handlers,
        force=True,
    )


def run(run_dir: Path, rank: int) -> None:
    from launchers.local import pick_device, set_threads, skip_deepspeed_probe

    cfg = OmegaConf.load(run_dir / "config.yaml")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(
        os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or world
    )  # torchrun, deepspeed
    device = pick_device(cfg.hardware, needs_cuda=cfg.method.quantization is not None)
    threads = set_threads(cfg.hardware, processes=local_world)
    if device == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    log.info(
        "rank %d of %d (local %s of %d) on %s, %d threads, config %s",
        rank,
        world,
        os.environ.get("LOCAL_RANK", "0"),
        local_world,
        device,
        threads,
        run_dir / "config.yaml",
    )
    from trainer.engine import pipeline as engine

    assert isinstance(cfg, DictConfig), f"{run_dir / 'config.yaml'} does not hold a mapping"
    skip_deepspeed_probe(cfg)  # unless train.deepspeed: the parent sets it for every DeepSpeed run
    engine.train(cfg, run_dir, device)


if __name__ == "__main__":
    main()
