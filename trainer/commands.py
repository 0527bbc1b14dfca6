"""Commands other than train, for local strategies."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from trainer import data, estimate, models


def prepare(cfg: DictConfig, run_dir: Path, device: str) -> dict:
    """Validate the dataset, print its statistics and fill the preprocessing cache; then print the run's pre-flight
    estimate on ``device`` (the model's shape from its config, no weights load)."""
    from trainer.objectives import training_args

    path = models.resolve_path(cfg.model, cfg.cache_dir)
    tokenizer, added_tokens = models.load_tokenizer(cfg.model, path)
    stats = data.run_prepare(cfg, tokenizer, run_dir)
    prepared = data.prepare(cfg, tokenizer, None)  # a cache hit now
    dtype = models.resolve_dtype(cfg.model.dtype, device, full_weights=cfg.method.peft is None)[0]
    model = estimate.meta_model(cfg, path, added_tokens)
    args = training_args(
        cfg, run_dir, "cpu", report_to=[]
    )  # for the batch and step counts only (a GPU need not be here)
    forecast = estimate.for_run(cfg, device, dtype, model, args, tokenizer, prepared, path, run_dir)
    print(forecast.line(), flush=True)
    return stats
