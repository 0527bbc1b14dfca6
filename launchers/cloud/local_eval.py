"""Evaluate fine-tuned weights downloaded from a provider here, exactly as a local run evaluates its own.

The base model loads from ``model.weights`` (the same base model the provider trained); the downloaded folder is a
peft adapter (adapter_config.json) on top of it, or a whole model (config.json). Both go through the local engine's
own pieces (trainer.engine, trainer.data, trainer.evaluation): same held-out queries, same metric names, same
loss, so the report reads like a local run's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def local_config(cfg: Any) -> Any:
    """The run's config with the base model loading from model.weights, as a plain local model (no adapter)."""
    local = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    local.model.source = cfg.model.weights.source
    local.model.name_or_path = cfg.model.weights.name_or_path
    local.method = {"name": "full", "peft": None, "quantization": None, "merge_adapter": False}
    return local


def evaluate(cfg: Any, run_dir: Path, weights: Path) -> dict[str, Any]:
    """{"base": ..., "finetuned": ...} sections for the base model and the downloaded weights."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from trainer import data, engine, evaluation, models

    set_seed(cfg.seed)
    local = local_config(cfg)
    device = "cuda" if torch.cuda.is_available() and cfg.hardware.device != "cpu" else "cpu"
    dtype, why = models.resolve_dtype(local.model.dtype, device)
    log.info("evaluating in %s (%s)", dtype, why)
    _, tokenizer, _, base = engine.load_model_and_tokenizer(local, device, dtype)
    prepared = data.prepare(local, tokenizer, run_dir)
    queries = evaluation.queries(prepared.examples.validation, cfg.eval.max_examples)
    out: dict[str, Any] = {}
    if cfg.eval.compare_base:
        trainer = engine.build_trainer(local, run_dir, device, base, tokenizer, prepared)
        out["base"] = evaluation.evaluate(trainer, tokenizer, local, queries, "base")
    tuned: Any
    if (weights / "adapter_config.json").is_file():
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(model=base, model_id=str(weights))
        log.info("loaded the downloaded adapter %s on %s", weights, local.model.name_or_path)
    else:
        tuned = AutoModelForCausalLM.from_pretrained(str(weights), dtype=models.torch_dtype(dtype)).to(device)  # type: ignore[arg-type]
        log.info("loaded the downloaded model %s", weights)
    trainer = engine.build_trainer(local, run_dir, device, tuned, tokenizer, prepared)
    out["finetuned"] = evaluation.evaluate(trainer, tokenizer, local, queries, "finetuned")
    return out
