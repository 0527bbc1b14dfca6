"""Commands other than train, for local strategies."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from trainer import data, models
from trainer.engine import estimate


def prepare(cfg: DictConfig, run_dir: Path, device: str) -> dict:
    """Validate the dataset, print its statistics and fill the preprocessing cache; then print the run's pre-flight
    estimate on ``device`` (the model's shape from its config, no weights load)."""
    from trainer.config.errors import UserError
    from trainer.engine.before_weights import check_before_weights
    from trainer.engine.objectives import held_out, training_args

    if cfg.dataset.streaming:
        raise UserError(
            "hydratune prepare fills the preprocessing cache, which a run with dataset.streaming=true never reads (it "
            "tokenizes its rows while it trains). Run `hydratune` with the same overrides to train, or set "
            "dataset.streaming=false to prepare the dataset into the cache."
        )

    path = models.resolve_path(cfg.model, cfg.cache_dir)
    tokenizer, added_tokens = models.load_tokenizer(cfg.model, path)
    stats = data.run_prepare(cfg, tokenizer, run_dir)
    prepared = data.prepare(cfg, tokenizer, None)  # a cache hit now
    queries = held_out(cfg, prepared.examples, cfg.eval.max_examples).queries
    check_before_weights(cfg, path, tokenizer, prepared.examples, queries, added_tokens)
    dtype = models.resolve_dtype(cfg.model.dtype, device, full_weights=cfg.method.peft is None)[0]
    model = estimate.meta_model(cfg, path, added_tokens)
    args = training_args(
        cfg, run_dir, "cpu", report_to=[]
    )  # for the batch and step counts only (a GPU need not be here)
    forecast = estimate.for_run(cfg, device, dtype, model, args, tokenizer, prepared, path, run_dir)
    print(forecast.line(), flush=True)
    return stats
