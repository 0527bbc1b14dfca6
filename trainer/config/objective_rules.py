"""Compose-time rules of the objective group (no torch): the dataset shape each objective trains on, its head, its
TRL config class, reward functions, teacher, and whether the provider offers it (hardware.objectives). trainer.engine.objectives builds the
trainer from the same tables."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from trainer.config.choices import DataShape
from trainer.config.errors import UserError, choice_error
from trainer.config.library_args import OBJECTIVE_CONFIGS, check_args
from trainer.config.plain import plain_dict

#: objective.data -> what its rows are, for messages; which dataset formats provide each shape is declared by the
#: formats themselves (trainer.data.formats: ``shapes=``), and checked there (trainer.data.formats.check_sources).
SHAPES = {
    DataShape.supervised: "supervised examples",
    DataShape.preference: "preference pairs",
    DataShape.unpaired: "answers labelled good or bad",
    DataShape.prompts: "prompts (the answers rows have, if any, become the `reference` column)",
}


def check(cfg: DictConfig) -> None:
    """Raise UserError for an objective that cannot train on this config; every message names the objective."""
    obj = cfg.objective
    if obj.config not in OBJECTIVE_CONFIGS:
        raise choice_error("objective.config", obj.config, OBJECTIVE_CONFIGS)
    check_args("train", plain_dict(cfg.train), obj.config)
    check_args("objective.args", plain_dict(obj.args), obj.config)
    if "reward_funcs" in obj:
        _check_rewards(obj)
    if "teacher" in obj and OmegaConf.is_missing(obj.teacher, "name_or_path"):
        raise UserError(
            f"objective={obj.name} needs a teacher model: set objective.teacher.name_or_path (and "
            "objective.teacher.source: hf for a hub id or folder, gguf_wheel, tiny_random). The teacher must share "
            "the model's tokenizer."
        )


def check_provider(cfg: DictConfig) -> None:
    """Cloud hardware: the provider must offer the objective (its hardware option's ``objectives`` map)."""
    obj, hw = cfg.objective, cfg.hardware
    if obj.name not in hw.objectives:
        offered = list(hw.objectives) or ["none"]
        raise UserError(
            f"objective={obj.name} is not offered by the provider {hw.provider} (hardware="
            f"{hw.name}): it trains objective={', '.join(offered)}. Train objective={obj.name} locally "
            "(hardware=auto, cpu, ddp ...) or pick an objective the provider offers."
        )


def _check_rewards(obj: DictConfig) -> None:
    if not obj.reward_funcs:
        raise UserError(
            f"objective={obj.name} needs reward functions and objective.reward_funcs is empty. Give one or more "
            "`_target_` callables, e.g. 'objective.reward_funcs=[{_target_: trainer.engine.rewards.TokenF1}, "
            "{_target_: trainer.engine.rewards.JsonValid}]'. Shipped: trainer.engine.rewards.ExactMatch, TokenF1 (against the "
            "data's reference answer), JsonValid, RegexFormat (pattern=...) and LengthPenalty (max_chars=...)."
        )
    for i, func in enumerate(obj.reward_funcs):
        if not isinstance(func, DictConfig) or "_target_" not in func:
            raise UserError(
                f"objective.reward_funcs[{i}]={func!r} is not a `_target_` callable: write "
                "{_target_: trainer.engine.rewards.TokenF1} (or your own module.Class / module.function)."
            )
