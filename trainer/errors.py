"""User-facing errors: one paragraph that names the file or key, the value given and what to do.

Anything raised as :class:`UserError` (or a Hydra/OmegaConf composition error) reaches the user as that
paragraph and exit code 2, never as a traceback. Everything else is a bug in hydratune and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's config, data, credentials or environment."""


def closest(name: str, allowed: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest allowed name, or '' when nothing is close."""
    match = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


def choice_error(key: str, value: object, allowed: Iterable[str], what: str = "") -> UserError:
    allowed = sorted(str(a) for a in allowed)
    return UserError(
        f"{key}={value!s} is not a valid {what or 'value'}.{closest(str(value), allowed)} "
        f"Allowed: {', '.join(allowed)}."
    )


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
            from trainer.library_args import unknown_key_message

            return unknown_key_message("train", where.split(".", 1)[1])
        parent = cause.parent_node
        allowed = list(parent.keys()) if parent is not None and hasattr(parent, "keys") else []
        allowed = [str(k) for k in allowed if not str(k).startswith("_")]
        listing = f" Known keys there: {', '.join(sorted(allowed))}." if allowed else ""
        return f"Unknown config key '{where}'.{closest(str(cause.key), allowed)}{listing} Check the spelling."
    if isinstance(cause, ValidationError):
        return (
            f"Wrong type for config key '{cause.full_key}': got {cause.value!r}. "
            f"{_first_line(cause.msg or '')} Fix the value in your YAML file or override."
        )
    if isinstance(cause, MissingMandatoryValue):
        return f"Config key '{cause.full_key}' is required and has no value. Set it, e.g. `{cause.full_key}=...`."
    return _first_line(str(exc)) + (f" ({_first_line(str(cause))})" if cause is not exc else "")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
