"""The rules that need the model's config, the tokenizer and the data: checked after the data is read and before any
weights load (``train``, ``eval`` and ``prepare`` alike), so that a mistake costs seconds, not a model load.

- the answer length and every few-shot prompt against the model's context (its config's position count);
- ``eval.few_shot`` against the training split;
- ``method.peft.target_modules`` against the model's modules (the model built on the meta device from its config);
- ``method.freeze`` against the model's layer count and module names;
- ``method.init_adapter``'s base model, expanded target modules and whole-saved layers against this run's.

The compose-time bounds (trainer/config/checks.py) refuse what the config alone shows, before torch is imported."""

from __future__ import annotations

from omegaconf import DictConfig

from trainer import models
from trainer.config.checks import check_answer_fits
from trainer.evaluation import local as evaluation


def check_before_weights(cfg: DictConfig, path: str, tokenizer, examples, queries: list, added_tokens: int = 0) -> None:
    """Raise the UserError of the first rule above that this model, tokenizer and data break."""
    config = models.model_config(cfg.model, path)
    context = models.context_length(config)
    if cfg.eval.enabled and context is not None:
        check_answer_fits(cfg.eval, context, f"max_position_embeddings in {path}'s config")
        if cfg.eval.compare_base and cfg.eval.few_shot > 0:
            evaluation.check_few_shot(cfg.eval, tokenizer, examples.train, queries, context)
    models.check_target_modules(cfg.model, cfg.method, config, cfg.objective.head)
    if cfg.method.name == "freeze":
        models.trainable_modules(models.empty_model(cfg.model, config, cfg.objective.head), cfg.method, path)
    models.check_init_adapter(cfg.model, cfg.method, path, config, added_tokens)
