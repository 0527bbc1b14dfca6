"""Commands other than train, for local strategies."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from trainer import data, models


def prepare(cfg: DictConfig, run_dir: Path) -> dict:
    """Validate the dataset, print its statistics and fill the preprocessing cache; no model weights load."""
    path = models.resolve_path(cfg.model, cfg.cache_dir)
    tokenizer, _ = models.load_tokenizer(cfg.model, path)
    return data.run_prepare(cfg, tokenizer, run_dir)
