"""Hydra/OmegaConf composition errors as the one-paragraph message users see (trainer.config.errors.UserError's style)."""

from __future__ import annotations

import re

from trainer.config.errors import choice_error, closest, first_line
from trainer.config.library_args import unknown_key_message

#: OmegaConf's refusal of a value outside an Enum: "Invalid value 'bfloat', expected one of [auto, float32, ...]".
_ENUM_MESSAGE = re.compile(r"Invalid value '(.*)', expected one of \[(.*)\]")


_UNSET_ENV = re.compile(r"Environment variable '(\w+)' not found")


def explain_composition_error(exc: BaseException) -> str:
    """Turn a Hydra/OmegaConf composition error into the one-paragraph message users see."""
    import yaml
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    if isinstance(exc, yaml.MarkedYAMLError):
        return _yaml_message(exc)
    if isinstance(exc, OverrideParseException):
        return _override_message(exc.override, exc.message)
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
        if choice:  # a closed choice (an Enum in trainer/config/schema.py)
            return str(choice_error(str(cause.full_key), choice[1], choice[2].split(", ")))
        return (
            f"Wrong type for config key '{cause.full_key}': got {cause.value!r}. "
            f"{first_line(cause.msg or '')} Fix the value in your YAML file or override."
        )
    unset = _UNSET_ENV.search(str(cause))
    if unset and isinstance(cause, OmegaConfBaseException):  # ${oc.env:NAME} with NAME not set
        key = cause.full_key or "a config value"
        return (
            f"{key} reads the environment variable {unset[1]} (${{oc.env:{unset[1]}}}), which is not set. "
            f"Set it (export {unset[1]}=...) or override {key}=VALUE, and run again."
        )
    if isinstance(cause, MissingMandatoryValue):
        return f"Config key '{cause.full_key}' is required and has no value. Set it, e.g. `{cause.full_key}=...`."
    return first_line(str(exc)) + (f" ({first_line(str(cause))})" if cause is not exc else "")


def _yaml_message(exc) -> str:
    """A config file that is not YAML (a tab in the indentation, an unclosed quote): the file, line and column."""
    mark = exc.problem_mark or exc.context_mark
    where = f"{mark.name}:{mark.line + 1}" if mark is not None else "a config file"
    column = f" (column {mark.column + 1})" if mark is not None else ""
    problem = first_line(exc.problem or exc.context or str(exc))
    hint = "YAML indents with spaces only: replace the tab with spaces" if "'\\t'" in problem else "Fix the file"
    return f"{where}: not valid YAML: {problem}{column}. {hint}, then run the same command again."


def _override_message(override: str, message: str) -> str:
    """An override Hydra's grammar cannot read: which one, and how to quote its value."""
    key, _, value = override.partition("=")
    if "=" in value:
        hint = (
            f"Its value contains '=', which an unquoted override value cannot hold: quote the value, with single "
            f"quotes around the whole override so that the shell keeps the double ones: '{key}=\"{value}\"'."
        )
    else:
        hint = f"Quote a value that holds special characters: '{key}=\"{value}\"'."
    return (
        f"Cannot read the override '{override}': {first_line(message)}. {hint} "
        "(Hydra's override grammar: https://hydra.cc/docs/advanced/override_grammar/basic/)"
    )
