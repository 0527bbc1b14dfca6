"""The compose-time rules of every OpenAI-compatible endpoint a config names (eval.endpoint, eval.compare_models):
each has a name, a base_url and a model, names are unique, and its key variable is set."""

from __future__ import annotations

import os
from typing import Any

from trainer.config.errors import UserError


def configured(eval_cfg: Any) -> list[tuple[str, Any]]:
    """(config path, endpoint) of ``eval.endpoint`` (when it has a base_url) and of every ``eval.compare_models``
    entry; a UserError for a missing field, a repeated name or an API key variable that is not set. Called by
    trainer.config.checks before anything runs, and again by whoever evaluates them (trainer.evaluation.endpoint)."""
    found = [(f"eval.compare_models[{i}]", e) for i, e in enumerate(eval_cfg.compare_models)]
    if eval_cfg.endpoint.base_url:
        found.insert(0, ("eval.endpoint", eval_cfg.endpoint))
    names: dict[str, str] = {}
    for where, endpoint in found:
        for key in ("name", "base_url", "model"):
            if not endpoint[key]:
                raise UserError(
                    f"{where}.{key} is not set. Each compared model needs a name (its column in the report), the "
                    "base_url of an OpenAI-compatible API (e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1) "
                    "and the model name that API knows; api_key_env names the variable holding its key."
                )
        check_key(endpoint, where)
        if endpoint.name in names:
            raise UserError(
                f"{where}.name={endpoint.name} is also the name of {names[endpoint.name]}: names are columns."
            )
        names[endpoint.name] = where
    return found


def check_key(endpoint: Any, where: str) -> None:
    """A UserError when the environment variable ``endpoint.api_key_env`` names is not set (the key itself is never
    in a config)."""
    if endpoint.api_key_env and not os.environ.get(endpoint.api_key_env):
        raise UserError(
            f"{where}.api_key_env={endpoint.api_key_env}: that environment variable is not set (or empty). "
            f"Export the API key for {endpoint.base_url} in it; hydratune reads keys from the environment only."
        )
