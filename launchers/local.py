"""Run a config in this process on the CPU or one GPU."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainer.config.errors import UserError
from trainer.run import rundir
from trainer.run.threads import threads_per_process

log = logging.getLogger(__name__)


def pick_device(hardware: DictConfig, needs_cuda: bool) -> str:
    import torch

    cuda = torch.cuda.is_available()
    if hardware.device == "cuda" and not cuda:
        raise UserError(
            f"hardware={hardware.name} needs a CUDA GPU and torch sees none (torch {torch.__version__}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Use hardware=cpu, or install a "
            "CUDA build of torch on a machine with an NVIDIA GPU."
        )
    if needs_cuda and not cuda:
        raise UserError(
            "This method quantizes the base model with bitsandbytes, which needs a CUDA GPU, and this machine has "
            "none. Use method=lora (or dora/full) here, or run on a machine with an NVIDIA GPU."
        )
    return "cuda" if hardware.device == "cuda" or (hardware.device == "auto" and cuda) else "cpu"


def set_threads(hardware: DictConfig, processes: int = 1) -> int:
    """Every core this process may use, shared among ``processes`` (trainer.run.threads), unless hardware.threads says
    otherwise (accelerate and others default to one thread: ~1.8x slower)."""
    import torch

    threads, source = threads_per_process(hardware.threads, processes)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    log.info("%d torch threads (from %s)", threads, source)
    return threads


def skip_deepspeed_probe(cfg: DictConfig) -> None:
    """For a run without DeepSpeed (no ``train.deepspeed``). At SFTTrainer's start and before each save, accelerate
    unwraps the model and, when the deepspeed package is installed, imports it to check for a DeepSpeedEngine
    wrapper: 3.5 s, more where mlflow is installed (deepspeed's autotuner imports it). Such a run has no such wrapper,
    so accelerate is told, for this process, that deepspeed is not there."""
    if OmegaConf.select(cfg, "train.deepspeed"):
        return
    import accelerate.utils.other

    accelerate.utils.other.is_deepspeed_available = lambda: False


def run(cfg: DictConfig, command: str) -> None:
    skip_deepspeed_probe(cfg)
    run_dir = rundir.start(cfg, Path(cfg.output_dir), command)  # eval of a finished run: a new sub-dir of it
    if command == "prepare":  # nothing trains: a GPU config is estimated on a machine without one too
        from trainer.engine import commands

        device = "cuda" if cfg.hardware.device == "cuda" else pick_device(cfg.hardware, needs_cuda=False)
        set_threads(cfg.hardware)
        commands.prepare(cfg, run_dir, device)
        return
    device = pick_device(cfg.hardware, needs_cuda=cfg.method.quantization is not None)
    threads = set_threads(cfg.hardware)
    log.info("hardware=%s: device %s, %d threads", cfg.hardware.name, device, threads)
    from trainer.engine import pipeline as engine

    (engine.evaluate_only if command == "eval" else engine.train)(cfg, run_dir, device)
