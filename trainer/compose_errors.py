"""Hydra/OmegaConf composition errors as the one-paragraph message users see (trainer.errors.UserError's style)."""

from __future__ import annotations

import re

from trainer.errors import choice_error, closest, first_line
from trainer.library_args import unknown_key_message

#: OmegaConf's refusal of a value outside an Enum: "Invalid value 'bfloat', expected one of [auto, float32, ...]".
_ENUM_MESSAGE = re.compile(r"Invalid value '(.*)', expected one of \[(.*)\]")


def explain_composition_error(exc: BaseException) -> str:
    """Turn a Hydra/OmegaConf composition error into the one-paragraph message users see."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    cause = exc
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__

    if isinstance(exc, MissingConfigException) and exc.options is not None:
        group = (exc.missing_cfg_file or "").rsplit("/", 1)
        group_name, option = (group[0], group[1]) if len(group) == 2 else ("", group[0])
        options = [o for o in exc.options if not o.startswith("schema_")]
        return (
            f"There is no option '{option}' in config group '{group_name}'.{closest(option, options)} "
            f"Options: {', '.join(sorted(options))}. Pick one with `{group_name}=NAME`."
        )
    if isinstance(cause, ConfigKeyError | ConfigAttributeError):
        where = str(cause.full_key or cause.key)
        if where.startswith("train."):
            return unknown_key_message("train", where.split(".", 1)[1])
        parent = cause.parent_node
        allowed = list(parent.keys()) if parent is not None and hasattr(parent, "keys") else []
        allowed = [str(k) for k in allowed if not str(k).startswith("_")]
        listing = f" Known keys there: {', '.join(sorted(allowed))}." if allowed else ""
        return f"Unknown config key '{where}'.{closest(str(cause.key), allowed)}{listing} Check the spelling."
    if isinstance(cause, ValidationError):
        choice = _ENUM_MESSAGE.match(first_line(cause.msg or ""))
        if choice:  # a closed choice (an Enum in trainer/schema.py)
            return str(choice_error(str(cause.full_key), choice[1], choice[2].split(", ")))
        return (
            f"Wrong type for config key '{cause.full_key}': got {cause.value!r}. "
            f"{first_line(cause.msg or '')} Fix the value in your YAML file or override."
        )
    if isinstance(cause, MissingMandatoryValue):
        return f"Config key '{cause.full_key}' is required and has no value. Set it, e.g. `{cause.full_key}=...`."
    return first_line(str(exc)) + (f" ({first_line(str(cause))})" if cause is not exc else "")
