"""The arrangement hydratune's launchers avoid, run by tests/test_prepare_once.py to show that its dataset really
outlasts the process-group timeout: each worker starts the process group first (the objective's TrainingArguments,
as every hydratune worker builds them), then rank 0 prepares the data while the other ranks wait for it at a barrier (``main_process_first``, the way
LLaMA-Factory, Axolotl and TRL's own dataset preparation do it). Rank 1 times out at that barrier.

    RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=P python -m tests.prepare_in_workers CONFIG.yaml
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf


def main(config: str) -> None:
    from pathlib import Path

    from trainer import data, models
    from trainer.engine import objectives

    cfg = OmegaConf.load(config)
    args = objectives.training_args(cfg, Path(cfg.output_dir), "cpu", [])
    assert args.world_size == 2, f"not a 2-process group: world size {args.world_size}"
    tokenizer, _ = models.load_tokenizer(cfg.model, models.resolve_path(cfg.model, cfg.cache_dir))
    with args.main_process_first(desc="dataset preparation"):
        data.prepare(cfg, tokenizer, None)
    print("prepared", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
