"""Compose-time checks for cloud hardware: what a provider can and cannot do with the composed config."""

from __future__ import annotations

from typing import Any

from launchers.cloud import lifecycle
from launchers.cloud import provider as provider_api
from trainer.errors import UserError, choice_error
from trainer.schema import is_cloud

OBJECTIVES = ("supervised", "dpo")
ON_INTERRUPT = ("detach", "cancel")
PROVIDER_MODELS = {
    "openai": "model=gpt_4o_mini, gpt_4_1_mini, gpt_4o or gpt_4_1",
    "azure_openai": "model=gpt_4o_mini, gpt_4_1_mini, gpt_4o or gpt_4_1",
    "together": "model=together_llama3_1_8b_instruct, together_llama3_2_3b_instruct or together_qwen2_5_7b_instruct",
}
SUPPORTS = (
    "The provider trains its own way: it supports hardware.objective=supervised or dpo and the "
    "hyperparameters hardware.n_epochs, batch_size, learning_rate_multiplier (a number or auto), seed and "
    "suffix"
)


def check_cloud(cfg: Any) -> None:
    """Raise a UserError for a config that cannot run on a provider's fine-tuning API."""
    hw, model, method = cfg.hardware, cfg.model, cfg.method
    if not is_cloud(cfg):
        if model.source == "provider":
            raise UserError(
                f"model.name_or_path={model.name_or_path} is a provider model: it only trains through "
                f"its provider's API, but hardware={hw.name} trains locally. Use hardware=openai, "
                "hardware=azure_openai or hardware=together, or pick a local model."
            )
        return
    if hw.provider not in provider_api.PROVIDERS:
        raise choice_error("hardware.provider", hw.provider, provider_api.PROVIDERS)
    if hw.objective not in OBJECTIVES:
        raise choice_error("hardware.objective", hw.objective, OBJECTIVES)
    if hw.on_interrupt not in ON_INTERRUPT:
        raise choice_error("hardware.on_interrupt", hw.on_interrupt, ON_INTERRUPT)
    if model.source != "provider":
        raise UserError(
            f"hardware={hw.name} fine-tunes a model at the provider, but model.source={model.source} "
            f"({model.name_or_path}) is a local model. Pick a provider model: {PROVIDER_MODELS[hw.provider]}."
        )
    lifecycle.check(cfg)
    if not model.encoding:
        raise UserError(
            f"model.encoding is not set for {model.name_or_path}: hydratune needs the tiktoken encoding "
            "to count and price tokens (o200k_base for gpt-4o / gpt-4.1, cl100k_base for gpt-3.5-turbo)."
        )
    if method.quantization is not None or method.name in ("qlora", "dora") or method.merge_adapter:
        raise UserError(
            f"method={method.name} is a local-only choice (adapters, quantization and merging happen on "
            f"your own GPU) and hardware={hw.name} trains at the provider. {SUPPORTS}. Leave method at "
            "its default (lora, ignored here) or pick a local hardware option."
        )
    provider_api.get(hw).check(cfg)
    fmt = cfg.dataset.format
    if fmt == "text":
        raise UserError(
            f"dataset.format=text (raw text for continued pretraining) cannot be sent to a chat "
            f"fine-tuning API (hardware={hw.name}). Use a chat, alpaca, sharegpt, prompt_completion or "
            "template dataset."
        )
    if hw.objective == "dpo" and fmt != "preference":
        raise UserError(
            f"hardware.objective=dpo needs preference pairs (dataset.format=preference with prompt, "
            f"chosen, rejected), but dataset.format={fmt}. Use hardware.objective=supervised for it."
        )
