"""The provider rules that need the provider's own code: its name, the model's lifecycle dates, and the provider's
limits (hyperparameters, resources). trainer.config.checks.check_config runs them, after the rules every config
must pass (the cloud ones included), through ``launchers.cloud.check``."""

from __future__ import annotations

from typing import Any

from launchers.cloud import lifecycle
from launchers.cloud import provider as provider_api
from trainer.config import objective_rules
from trainer.config.errors import UserError


def check(cfg: Any) -> None:
    """Raise a UserError for a config the configured provider cannot run."""
    provider = provider_api.get(cfg.hardware)  # an unknown provider name is a choice error naming the known ones
    _local_only(cfg, provider)
    objective_rules.check_provider(cfg)  # the provider offers objective=... (hardware.objectives)
    lifecycle.check(cfg)
    provider.check(cfg)


def _local_only(cfg: Any, provider: provider_api.Provider) -> None:
    """Quantization, DoRA, freeze tuning, merging and starting from an adapter happen on your own GPU: the provider's
    message names its own settings."""
    method = cfg.method
    local = method.name in ("qlora", "lora_int8", "dora", "freeze") or method.merge_adapter
    if method.quantization is not None or local:
        raise UserError(
            f"method={method.name} is a local-only choice (quantization, DoRA, freeze tuning and merging happen on your own "
            f"GPU) and hardware={cfg.hardware.name} trains at the provider, its own way: {provider.settings} "
            "Leave method at its default (lora) or pick a local hardware option."
        )
    if method.init_adapter is not None:
        raise UserError(
            f"method.init_adapter={method.init_adapter} continues a local adapter, and hardware={cfg.hardware.name} "
            f"trains at the provider, its own way: {provider.settings} Drop method.init_adapter, or pick a local "
            "hardware option."
        )
