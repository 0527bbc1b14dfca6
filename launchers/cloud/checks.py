"""The provider rules that need the provider's own code: its name, the model's lifecycle dates, and the provider's
limits (hyperparameters, resources). trainer.config_checks.check_config runs them, after the rules every config
must pass (the cloud ones included), through ``launchers.cloud.check``."""

from __future__ import annotations

from typing import Any

from launchers.cloud import lifecycle
from launchers.cloud import provider as provider_api
from trainer import objectives


def check(cfg: Any) -> None:
    """Raise a UserError for a config the configured provider cannot run."""
    provider = provider_api.get(cfg.hardware)  # an unknown provider name is a choice error naming the known ones
    objectives.check_provider(cfg)  # the provider offers objective=... (objective.providers)
    lifecycle.check(cfg)
    provider.check(cfg)
