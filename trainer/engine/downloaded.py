"""Weights trained elsewhere (a provider's downloaded adapter or model), evaluated through the engine's own phase.

The base model loads from ``model.weights`` (the same base model the provider trained); the downloaded folder is a
peft adapter (adapter_config.json) on top of it, or a whole model (config.json). The data, the held-out split, the
base sections (few-shot, regression probe, the base-evaluation cache) and the objective's evaluation are the ones a
local run uses (trainer.engine.pipeline, trainer.engine.objectives), so a DPO adapter trained at a provider gets the
same pair metrics, and the same report sections, as one trained here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from trainer.engine import objectives, pipeline

log = logging.getLogger(__name__)


def local_config(cfg: Any) -> Any:
    """The run's config with the base model loading from model.weights, as a plain local model (no adapter)."""
    local = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    local.model.source = cfg.model.weights.source
    local.model.name_or_path = cfg.model.weights.name_or_path
    local.method = {"name": "full", "peft": None, "quantization": None, "merge_adapter": False, "init_adapter": None}
    return local


def evaluate(cfg: Any, run_dir: Path, weights: Path) -> dict[str, Any]:
    """The report's sections for the base model and the downloaded weights: hardware, base (and few-shot /
    regression as configured), finetuned, objective."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from trainer import models

    set_seed(cfg.seed)
    local = local_config(cfg)
    device = "cuda" if torch.cuda.is_available() and cfg.hardware.device != "cpu" else "cpu"
    out: dict[str, Any] = {"hardware": pipeline.weight_dtype(local, device)}
    dtype = out["hardware"]["model_dtype"]
    model_path, tokenizer, _ = pipeline.load_tokenizer(local)
    prepared = objectives.prepare(local, tokenizer, run_dir)
    held_out = objectives.held_out(local, prepared.examples, cfg.eval.max_examples)
    pipeline.check_before_weights(local, model_path, tokenizer, prepared.examples, held_out.queries)
    base = pipeline.load_model(local, model_path, tokenizer, device, dtype)
    if cfg.eval.compare_base:
        trainer = pipeline.build_trainer(local, run_dir, device, base, tokenizer, prepared)
        with pipeline.before_training(trainer):
            out.update(pipeline.base_sections(local, trainer, tokenizer, held_out, model_path, prepared))
    tuned: Any
    if (weights / "adapter_config.json").is_file():
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(model=base, model_id=str(weights))
        log.info("loaded the downloaded adapter %s on %s", weights, local.model.name_or_path)
    else:
        tuned = AutoModelForCausalLM.from_pretrained(str(weights), dtype=models.torch_dtype(dtype)).to(device)  # type: ignore[arg-type]
        log.info("loaded the downloaded model %s", weights)
    trainer = pipeline.build_trainer(local, run_dir, device, tuned, tokenizer, prepared)
    out["finetuned"] = objectives.evaluate(trainer, tokenizer, local, held_out, "finetuned", out.get("base"))
    if "regression" in out:
        from trainer.evaluation import regression

        tuned_probe = regression.evaluate(trainer, tokenizer, local, "finetuned")
        out["regression"] = regression.section(local.eval.regression, out["regression"]["base"], tuned_probe)
    out["objective"] = {"name": cfg.objective.name, "headline": list(cfg.objective.headline)}
    return out
