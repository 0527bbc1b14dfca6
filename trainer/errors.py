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


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
